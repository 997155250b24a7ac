"""Each encoder per backend and precision on prepared inputs (the `model` mode of `clip-rt bench`): uint8 crops
[B, S, S, 3] and int32 ids of exactly L tokens, the same arrays for every backend. extra_info carries the
cosine against eager fp32 PyTorch on the same input (min over the batch)."""

from __future__ import annotations

import numpy as np
import pytest

CELLS = [("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16"), ("onnxruntime", "int8")]
BATCHES = (1, 32)
LENGTHS = (16, 77)

_reference: dict[tuple, np.ndarray] = {}


def _record_parity(benchmark, open_backend, out: np.ndarray, key: tuple, encode) -> None:
    """Min cosine of out against eager fp32 on the same input, in extra_info (and a sanity floor)."""
    from clip_rt.bench.workloads import cosines

    if key not in _reference:
        _reference[key] = encode(open_backend("torch", "fp32"))
    cos = cosines(_reference[key], out)
    benchmark.extra_info["min_cosine_vs_eager"] = float(cos.min())
    assert cos.min() > 0.9, f"{key}: embeddings disagree with eager fp32 (min cosine {cos.min():.4f})"


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("cell", CELLS, ids=lambda c: f"{c[0]}-{c[1]}")
def test_image_encoder(benchmark, open_backend, inputs, cell, batch):
    from clip_rt.bench.workloads import image_batch

    backend = open_backend(*cell)
    pixels = image_batch(inputs, batch)  # [B, S, S, 3] uint8
    benchmark.group = f"image encoder b{batch}"
    out = benchmark(backend.encode_images, pixels)  # [B, D]
    _record_parity(benchmark, open_backend, out, ("image", batch), lambda b: b.encode_images(pixels))


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("cell", CELLS, ids=lambda c: f"{c[0]}-{c[1]}")
def test_text_encoder(benchmark, open_backend, inputs, cell, batch, length):
    from clip_rt.bench.workloads import text_batch

    backend = open_backend(*cell)
    ids = text_batch(inputs, batch, length)  # [B, L] int32, exactly L tokens each
    benchmark.group = f"text encoder b{batch} L{length}"
    out = benchmark(backend.encode_texts, ids)  # [B, D]
    _record_parity(benchmark, open_backend, out, ("text", batch, length), lambda b: b.encode_texts(ids))

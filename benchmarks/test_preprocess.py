"""Image preprocessing from files: clip-rt (Pillow decode + resize + center crop to uint8, on a thread pool;
normalization is folded into the model) against transformers' CLIPImageProcessor (PIL open + the processor to a
normalized float tensor), on Caltech-101 photos."""

from __future__ import annotations

import numpy as np
import pytest

BATCHES = (1, 32)


@pytest.mark.parametrize("batch", BATCHES)
def test_preprocess_clip_rt(benchmark, package, dataset, batch):
    from clip_rt.prepare import prepare_batch
    from clip_rt.preprocess import PreprocessConfig

    cfg = PreprocessConfig.from_manifest(package.preprocess)
    files = dataset.files[:batch]
    benchmark.group = f"preprocess {batch} files"
    out = benchmark(prepare_batch, files, cfg)
    assert all(isinstance(x, np.ndarray) and x.shape == (cfg.image_size, cfg.image_size, 3) for x in out)


@pytest.mark.parametrize("batch", BATCHES)
def test_preprocess_transformers(benchmark, package, dataset, batch):
    from pathlib import Path

    from PIL import Image

    folder = Path(package.source["model"])
    if not (folder / "preprocessor_config.json").is_file():
        pytest.skip(f"the package's source folder {folder} (with preprocessor_config.json) is not here")
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor.from_pretrained(folder)
    files = dataset.files[:batch]

    def run():
        images = [Image.open(f) for f in files]
        return processor(images=images, return_tensors="np")["pixel_values"]  # [B, 3, S, S] float32

    benchmark.group = f"preprocess {batch} files"
    out = benchmark(run)
    assert out.shape[0] == batch

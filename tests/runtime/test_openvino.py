"""The OpenVINO backend: the package's plain fp32 files on OpenVINO's CPU plugin against eager transformers, the
precision it reports being the precision that runs, thread safety, and refusals. (INT8 on OpenVINO is tested
with the INT8 package in test_quantize.py.)"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import clip_rt
from clip_rt.backends.openvino import check_runtime_precision
from clip_rt.errors import BackendUnavailable, InputError, PackageError
from clip_rt.tolerances import tolerance
from runtime_reference import TRICKY_TEXTS, concurrent_mismatches, cosines, flickr, hf_reference

FP32 = tolerance("openvino", "fp32")
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                    reason="the openvino backend needs the openvino extra: pip install 'clip-rt[openvino]'")


def test_runtime_precision_check_refuses_what_was_not_asked_for():
    fp32 = {"FullyConnected": {"f32": 12}, "MVN": {"f32": 5}}
    int8 = {"FullyConnected": {"i8": 11, "f32": 1}, "MVN": {"f32": 5}}
    check_runtime_precision(fp32, "fp32", Path("image.onnx"))
    check_runtime_precision(int8, "int8", Path("image.int8.onnx"))
    with pytest.raises(BackendUnavailable, match=r"MVN \(bf16\)"):
        check_runtime_precision({**fp32, "MVN": {"bf16": 5}}, "fp32", Path("image.onnx"))
    with pytest.raises(BackendUnavailable, match="without a single integer GEMM"):
        check_runtime_precision(fp32, "int8", Path("image.int8.onnx"))
    with pytest.raises(BackendUnavailable, match="inconsistent"):
        check_runtime_precision(int8, "fp32", Path("image.onnx"))


@pytest.fixture(scope="module")
def ov_model(tiny_package: Path) -> clip_rt.ClipModel:
    return clip_rt.load(tiny_package, backend="openvino", threads=2, warmup=1)


@pytest.fixture(scope="module")
def ref(tiny_source: Path):
    pytest.importorskip("transformers", reason="the parity reference is transformers (export extra)")
    return hf_reference(str(tiny_source))


@pytest.fixture(scope="module")
def photos(data_dir: Path) -> list[str]:
    imagenet = sorted(str(p) for p in (data_dir / "imagenet_sample" / "images").iterdir())[::8]
    return imagenet + flickr(data_dir)[0][::40]


@needs_openvino
def test_fp32_matches_transformers(ov_model, ref, photos, data_dir):
    texts = TRICKY_TEXTS + flickr(data_dir)[1][::9]
    got_t, got_i = ov_model.encode_texts(texts, batch_size=7), ov_model.encode_images(photos, batch_size=5)
    cos_t, cos_i = cosines(got_t, ref.text_embeds(texts)), cosines(got_i, ref.image_embeds(photos))
    assert len(texts) > 100 and len(photos) > 30
    assert cos_t.min() >= FP32.min_cosine, f"worst text {texts[int(np.argmin(cos_t))]!r}: {cos_t.min():.7f}"
    assert cos_i.min() >= FP32.min_cosine, f"worst photo {photos[int(np.argmin(cos_i))]}: {cos_i.min():.7f}"
    assert got_i.dtype == np.float32 and got_i.shape == (len(photos), ov_model.embed_dim)


@needs_openvino
def test_batching_and_lengths_do_not_change_results(ov_model, photos, data_dir):
    texts = flickr(data_dir)[1][:20] + TRICKY_TEXTS[:6]
    one = np.concatenate([ov_model.encode_texts([t]) for t in texts])
    assert np.abs(one - ov_model.encode_texts(texts, batch_size=26)).max() < 1e-5
    one = np.concatenate([ov_model.encode_images([p]) for p in photos[:9]])
    assert np.abs(one - ov_model.encode_images(photos[:9], batch_size=9)).max() < 1e-5


@needs_openvino
def test_describe_says_what_runs(ov_model):
    info = ov_model.describe()
    assert info["backend"] == "openvino" and info["device"] == "cpu" and info["precision"] == "fp32"
    assert info["inference_precision"] == "f32" and info["threads"] == 2
    assert info["files"] == {"image": "image.onnx", "text": "text.onnx"}  # the portable graphs, not *.opt.onnx
    for encoder, gemms in info["gemm_precisions"].items():
        assert gemms and all(set(by) == {"f32"} for by in gemms.values()), (encoder, gemms)


@needs_openvino
def test_safe_from_several_threads(ov_model, photos, data_dir):
    failures = concurrent_mismatches(ov_model, photos[:10], flickr(data_dir)[1][:24], threads=4, rounds=3,
                                     picks=(6, 9), batch_sizes=(4, 5))
    assert not failures, failures


@needs_openvino
def test_refusals(tiny_package):
    with pytest.raises(BackendUnavailable, match="CPU only"):
        clip_rt.load(tiny_package, backend="openvino", device="cuda")
    with pytest.raises(BackendUnavailable, match="fp16 artifacts are for GPUs"):
        clip_rt.load(tiny_package, backend="openvino", precision="fp16")
    with pytest.raises(InputError, match="spinning"):
        clip_rt.load(tiny_package, backend="openvino", spinning=False)
    with pytest.raises(InputError, match="hint"):
        clip_rt.load(tiny_package, backend="openvino", hint="fastest")
    with pytest.raises(PackageError, match="int8"):
        clip_rt.load(tiny_package, backend="openvino", precision="int8")


@needs_openvino
def test_cli_embed_with_openvino(ov_model, tiny_package, tmp_path):
    from clip_rt.cli import main

    texts = ["a photo of a cat", "a red car parked on a street at night"]
    assert main(["embed", str(tiny_package), "--backend", "openvino", "--texts", *texts,
                 "-o", str(tmp_path / "t.npy")]) == 0
    assert np.abs(np.load(tmp_path / "t.npy") - ov_model.encode_texts(texts)).max() < 1e-6

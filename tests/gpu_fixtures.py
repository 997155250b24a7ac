"""What the GPU tests (tests/gpu/*) share, imported by name: fixtures for what the machine has (each skips with the
probe's one-line reason, clip_rt.gpucheck.probe), decoded photos, the tiny package's fp16 TensorRT engines with eager
fp32 references; and helpers: real photos and captions from ../shared, parity with clip_rt.tolerances, engine builds
on a copy of a package, self-check results asserted one by one. A test module imports the fixtures it uses and the
ones they depend on (cuda under tensorrt), as the video tests do with video_fixtures."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clip_rt.tolerances import tolerance

DATA = ("imagenet_sample", "caltech101")
# Small profiles keep the tiny builds quick, and let the tests cross them: batch 40 > 16 runs in chunks, text
# length 40 > 32 is refused.
PROFILE = {"max_batch": 16, "opt_batch": 4, "max_text_len": 32}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def assert_parity(got: np.ndarray, ref: np.ndarray, precision: str, what: str, backend: str = "tensorrt") -> None:
    tol = tolerance(backend, precision)
    cos = cosines(got.astype(np.float64), ref.astype(np.float64))
    print(f"{what}: {cos.size} items, min cosine {cos.min():.6f}, mean {cos.mean():.6f}")
    assert cos.min() >= tol.min_cosine and cos.mean() >= tol.mean_cosine, \
        f"{what}: min {cos.min():.6f} / mean {cos.mean():.6f} below {tol.min_cosine} / {tol.mean_cosine}"


def image_files(data_dir: Path, n: int, sets: tuple[str, ...] = DATA) -> list[Path]:
    files = [f for d in sets for f in sorted((data_dir / d / "images").iterdir())]
    return files[::max(1, len(files) // n)][:n]


def captions(data_dir: Path, n: int) -> list[str]:
    with open(data_dir / "flickr8k" / "captions.csv", newline="", encoding="utf-8") as f:
        return [row["caption"] for row in csv.DictReader(f)][:n]


def copy_package(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def build(pkg: Path, precision: str, **kw: Any) -> list:
    from clip_rt.export.engine import EngineBuildConfig, build_engines

    return build_engines(pkg, EngineBuildConfig(precision=precision, **kw))


def check_all(results: list) -> None:
    for r in results:
        print(f"{r.name}: {r.value} ({r.detail})")
    failed = [f"{r.name}: {r.value}" for r in results if not r.ok]
    assert not failed, "; ".join(failed)


# -- fixtures: what the machine has -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def cuda() -> None:
    """A CUDA device and NVRTC (cuda-python); TensorRT not needed."""
    from clip_rt.gpucheck.probe import probe_cuda, probe_nvrtc

    for cap in (probe_cuda(0), probe_nvrtc()):
        if not cap.ok:
            pytest.skip(f"needs an NVIDIA GPU with cuda-python and NVRTC: no {cap.name}: {cap.detail}")


@pytest.fixture(scope="session")
def tensorrt(cuda: None) -> None:
    from clip_rt.gpucheck.probe import probe_tensorrt

    cap = probe_tensorrt()
    if not cap.ok:
        pytest.skip(f"needs TensorRT: {cap.detail}")


@pytest.fixture(scope="session")
def ort_cuda() -> None:
    from clip_rt.gpucheck.probe import probe_onnxruntime_cuda

    cap = probe_onnxruntime_cuda()
    if not cap.ok:
        pytest.skip(f"needs ONNX Runtime's CUDA provider: {cap.detail}")


@pytest.fixture(scope="session")
def photos(data_dir: Path) -> list[np.ndarray]:
    """Decoded photos of varied sizes: 64 full-size ImageNet ones and 32 Caltech ones."""
    from clip_rt.decode import open_image

    files = image_files(data_dir, 64, DATA[:1]) + image_files(data_dir, 32, DATA[1:])
    return [np.asarray(open_image(f)) for f in files]


@pytest.fixture(scope="session")
def fp16_package(tensorrt: None, tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pkg = copy_package(tiny_package, tmp_path_factory.mktemp("trt") / "pkg")
    build(pkg, "fp16", **PROFILE)
    return pkg


@pytest.fixture(scope="session")
def references(tensorrt: None, fp16_package: Path, data_dir: Path) -> dict[str, Any]:
    """Real crops and token ids, and eager fp32 PyTorch embeddings of them."""
    from clip_rt.backends import open_backend
    from clip_rt.package import Package
    from clip_rt.decode import open_image
    from clip_rt.preprocess import PreprocessConfig, resize_crop
    from clip_rt.tokenizer import Tokenizer

    pkg = Package.open(fp16_package)
    cfg = PreprocessConfig.from_manifest(pkg.preprocess)
    files = image_files(data_dir, 40)
    frames = [np.asarray(open_image(f)) for f in files]
    pixels = np.stack([resize_crop(open_image(f), cfg) for f in files])  # [40, S, S, 3] uint8
    tok = Tokenizer.from_package(pkg)
    fitting = [c for c in captions(data_dir, 80) if tok.encode([c]).shape[1] <= PROFILE["max_text_len"]][:40]
    ids = tok.encode(fitting)  # [40, L] int32, L <= the engines' 32
    torch_backend = open_backend("torch", pkg)
    try:
        return {"pixels": pixels, "frames": frames, "ids": ids, "image": torch_backend.encode_images(pixels),
                "text": torch_backend.encode_texts(ids)}
    finally:
        torch_backend.close()

"""The GPU path: engine building, TensorRT parity against eager fp32 PyTorch, the preprocessing kernel against its
numpy twin, refusal of mismatched engines, concurrent use. Marked `gpu`: they need an NVIDIA GPU, TensorRT and
cuda-python (pip install -e '.[gpu]', or scripts/gpu-check) and skip with the reason otherwise.

The last tests run everywhere: without TensorRT the backend and the build command stop with one line naming
what is missing, and importing the GPU modules imports nothing heavy.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import faults
from clip_rt.tolerances import tolerance

DATA = ("imagenet_sample", "caltech101")


def gpu_unavailable() -> str | None:
    """Why the GPU tests cannot run here, or None."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (pip install -e '.[gpu]', or run scripts/gpu-check)"
    from clip_rt.cuda import require_device
    from clip_rt.errors import BackendUnavailable

    try:
        require_device(0)
    except BackendUnavailable as e:
        return str(e)
    return None


@pytest.fixture(scope="session")
def gpu() -> None:
    reason = gpu_unavailable()
    if reason:
        pytest.skip(f"needs an NVIDIA GPU with TensorRT: {reason}")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def assert_parity(got: np.ndarray, ref: np.ndarray, precision: str, what: str) -> None:
    tol = tolerance("tensorrt", precision)
    cos = cosines(got.astype(np.float64), ref.astype(np.float64))
    print(f"{what}: {cos.size} items, min cosine {cos.min():.6f}, mean {cos.mean():.6f}")
    assert cos.min() >= tol.min_cosine and cos.mean() >= tol.mean_cosine, \
        f"{what}: min {cos.min():.6f} / mean {cos.mean():.6f} below {tol.min_cosine} / {tol.mean_cosine}"


def image_files(data_dir: Path, n: int) -> list[Path]:
    files = [f for d in DATA for f in sorted((data_dir / d / "images").iterdir())]
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


# Small profiles keep the tiny builds quick, and let the tests cross them: batch 40 > 16 runs in chunks, text
# length 40 > 32 is refused.
PROFILE = {"max_batch": 16, "opt_batch": 4, "max_text_len": 32}


@pytest.fixture(scope="session")
def fp16_package(gpu: None, tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pkg = copy_package(tiny_package, tmp_path_factory.mktemp("trt") / "pkg")
    build(pkg, "fp16", **PROFILE)
    return pkg


@pytest.fixture(scope="session")
def references(gpu: None, fp16_package: Path, data_dir: Path) -> dict[str, Any]:
    """Real crops and token ids, and eager fp32 PyTorch embeddings of them."""
    from clip_rt.backends import open_backend
    from clip_rt.package import Package
    from clip_rt.preprocess import PreprocessConfig, open_image, resize_crop
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


# -- building ----------------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_build_records_engines_with_metadata(fp16_package: Path) -> None:
    import tensorrt as trt

    from clip_rt.cuda import require_device
    from clip_rt.package import Package

    pkg, info = Package.open(fp16_package), require_device(0)
    for encoder in ("image", "text"):
        (art,) = pkg.find(encoder, "fp16", "tensorrt")
        meta = art.extra["engine"]
        assert art.file.startswith(f"engines/{encoder}.fp16.trt") and f".{info.sm}.b1-4-16" in art.file
        assert meta["tensorrt"] == trt.__version__ and meta["gpu"] == info.name
        assert meta["compute_capability"] == info.compute_capability and meta["precision"] == "fp16"
        assert meta["source"]["sha256"] == pkg.artifact(encoder, "fp32", portable=True).sha256
        assert meta["build"]["max_batch"] == 16 and meta["build"]["max_text_len"] == 32
        assert art.parity["ok"] and not art.forced
        if meta["typing"] == "weak":
            assert meta["fp32_pinned_layers"] > 0  # LayerNorm, softmax and the final normalization
        pkg.path(art)  # sha256 matches the file


@pytest.mark.gpu
def test_build_engine_cli_fp32(gpu: None, tiny_package: Path, tmp_path: Path) -> None:
    from clip_rt.cli import main
    from clip_rt.package import Package

    pkg = copy_package(tiny_package, tmp_path / "pkg")
    assert main(["build-engine", str(pkg), "--precision", "fp32", "--max-batch", "8", "--opt-batch", "2",
                 "--builder-level", "1", "--timing-cache", str(tmp_path / "timing.cache")]) == 0
    assert (tmp_path / "timing.cache").stat().st_size > 0
    p = Package.open(pkg)
    assert {a.encoder for a in p.artifacts if a.backend == "tensorrt" and a.precision == "fp32"} == {"image", "text"}


# -- parity against eager fp32 -------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_fp16_parity_against_eager(fp16_package: Path, references: dict[str, Any], cuda_graphs: bool) -> None:
    from clip_rt.backends import open_backend
    from clip_rt.package import Package

    with open_backend("tensorrt", Package.open(fp16_package), precision="fp16", device="cuda",
                      cuda_graphs=cuda_graphs) as trt_backend:
        # Batch sizes other than the export sample (2) and than the profile's opt (4); 40 > max 16 runs in chunks.
        for b in (1, 3, 40):
            assert_parity(trt_backend.encode_images(references["pixels"][:b]), references["image"][:b], "fp16",
                          f"tensorrt fp16 images, batch {b}, graphs={cuda_graphs}")
            assert_parity(trt_backend.encode_texts(references["ids"][:b]), references["text"][:b], "fp16",
                          f"tensorrt fp16 texts, batch {b}, graphs={cuda_graphs}")
        short = np.ascontiguousarray(references["ids"][:, :5])  # a length other than the profile's opt (16)
        short[:, -1] = 49407  # EOT
        ref = open_backend("torch", Package.open(fp16_package))
        try:
            assert_parity(trt_backend.encode_texts(short), ref.encode_texts(short), "fp16", "texts of length 5")
        finally:
            ref.close()


@pytest.mark.gpu
def test_int8_parity_against_eager(gpu: None, tiny_source: Path, references: dict[str, Any], data_dir: Path,
                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    from clip_rt.backends import open_backend
    from clip_rt.cli import main
    from clip_rt.package import Package

    out = tmp_path_factory.mktemp("int8") / "pkg"
    calib = ["--calib", str(data_dir / "flickr8k"), "--calib-images", "64", "--int8-mode", "static",
             "--int8-activations", "s8", "--eval-images", str(data_dir / "flickr8k" / "images")]
    if main(["export", str(tiny_source), "-o", str(out), "--precision", "fp32", "int8", *calib]) != 0:
        pytest.skip("the exporter could not write a static s8 int8 (QDQ) artifact for the tiny model (see its log)")
    build(out, "int8", **PROFILE)
    with open_backend("tensorrt", Package.open(out), precision="int8", device="cuda") as b:
        assert_parity(b.encode_images(references["pixels"]), references["image"], "int8", "tensorrt int8 images")
        assert_parity(b.encode_texts(references["ids"]), references["text"], "int8", "tensorrt int8 texts")


@pytest.mark.gpu
def test_gpu_preprocessing_parity(fp16_package: Path, references: dict[str, Any]) -> None:
    """encode_frames (decoded frames of any size -> kernel -> engine) against eager fp32 on CPU-path crops, and
    through the model layer's preprocess='gpu'."""
    import clip_rt
    from clip_rt.backends import open_backend
    from clip_rt.package import Package

    with open_backend("tensorrt", Package.open(fp16_package), precision="fp16", device="cuda") as b:
        assert_parity(b.encode_frames(references["frames"]), references["image"], "fp16", "encode_frames")
    model = clip_rt.load(fp16_package, backend="tensorrt", precision="fp16", device="cuda")
    try:
        got = model.encode_images(references["frames"][:7], preprocess="gpu")
    finally:
        model.backend.close()
    assert_parity(got, references["image"][:7], "fp16", "ClipModel.encode_images(preprocess='gpu')")


@pytest.mark.gpu
def test_kernel_equals_twin(gpu: None, data_dir: Path) -> None:
    """The CUDA kernel writes exactly what the numpy twin computes, on real photos and odd synthetic sizes."""
    from clip_rt.cuda import gpu_resize_crop
    from clip_rt.preprocess import open_image
    from clip_rt.resample import pack_frames, twin_packed

    rng = np.random.default_rng(0)
    frames = [np.asarray(open_image(f)) for f in sorted((data_dir / "imagenet_sample" / "images").iterdir())[:64]]
    frames += [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((1, 1), (1500, 300), (31, 900), (224, 225))]
    for resize, size, filter in ((224, 224, "bicubic"), (256, 224, "bicubic"), (72, 64, "bilinear")):
        got = gpu_resize_crop(frames, resize, size, filter)
        want = twin_packed(pack_frames(frames, resize, size, filter))
        assert np.array_equal(got, want), f"{filter} {resize}/{size}: {(got != want).sum()} values differ from the twin"


# -- refusal -----------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("field, value, says", [
    ("tensorrt", "9.9.9.9", "TensorRT 9.9.9.9"),
    ("gpu", "NVIDIA Imaginary GPU", "GPU NVIDIA Imaginary GPU"),
    ("compute_capability", "1.0", "compute capability 1.0"),
    ("source", {"file": "image.onnx", "sha256": "0" * 64, "precision": "fp32"}, "re-exported"),
])
def test_mismatched_engine_is_refused(fp16_package: Path, tmp_path: Path, field: str, value: Any, says: str) -> None:
    from clip_rt.backends import open_backend
    from clip_rt.errors import EngineMismatch
    from clip_rt.package import Package

    pkg = copy_package(fp16_package, tmp_path / "pkg")
    manifest = json.loads((pkg / "manifest.json").read_text())
    for a in manifest["artifacts"]:
        if a["backend"] == "tensorrt" and a["encoder"] == "image":
            a["engine"][field] = value
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineMismatch) as e:
        open_backend("tensorrt", Package.open(pkg), precision="fp16", device="cuda")
    msg = str(e.value)
    assert says in msg and f"clip-rt build-engine {pkg} --precision fp16 --max-batch 16" in msg, msg


@pytest.mark.gpu
def test_inputs_outside_the_profile(fp16_package: Path) -> None:
    from clip_rt.backends import open_backend
    from clip_rt.errors import InputError
    from clip_rt.package import Package

    with open_backend("tensorrt", Package.open(fp16_package), precision="fp16", device="cuda") as b:
        ids = np.full((2, 40), 49407, np.int32)
        ids[:, 0] = 49406
        with pytest.raises(InputError, match="--max-text-len 32"):
            b.encode_texts(ids)  # 40 tokens > the engine's 32
        with pytest.raises(InputError, match="frame 0"):
            b.encode_frames([np.zeros((10, 10), np.uint8)])


# -- threads -------------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_eight_threads_share_one_backend(fp16_package: Path, references: dict[str, Any], cuda_graphs: bool) -> None:
    """8 threads call images, texts and frames at once through 2 contexts per engine: same results as alone."""
    from clip_rt.backends import open_backend
    from clip_rt.package import Package

    with open_backend("tensorrt", Package.open(fp16_package), precision="fp16", device="cuda", contexts=2,
                      cuda_graphs=cuda_graphs) as b:
        want = {"image": b.encode_images(references["pixels"][:5]), "text": b.encode_texts(references["ids"][:6]),
                "frames": b.encode_frames(references["frames"][:3])}

        def work(i: int) -> None:
            for _ in range(10):
                got = {"image": b.encode_images(references["pixels"][:5]),
                       "text": b.encode_texts(references["ids"][:6]),
                       "frames": b.encode_frames(references["frames"][:3])}
                for k in want:
                    assert cosines(got[k], want[k]).min() > 0.99999, f"thread {i}: {k} changed under concurrency"

        faults.run_in_threads(8, work)  # re-raises the first thread's failure


# -- without a GPU (run everywhere) -------------------------------------------------------------------------------------
def _has_tensorrt() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed: this checks the message shown without it")
def test_without_tensorrt_the_cli_says_what_is_missing(tiny_package: Path, data_dir: Path) -> None:
    image = sorted((data_dir / "caltech101" / "images").iterdir())[0]
    cli = [sys.executable, "-m", "clip_rt.cli"]
    for args in (["classify", str(tiny_package), str(image), "--labels", "a,b", "--backend", "tensorrt"],
                 ["build-engine", str(tiny_package), "--precision", "fp16"]):
        r = subprocess.run(cli + args, capture_output=True, text=True)
        lines = r.stderr.strip().splitlines()
        assert r.returncode != 0 and len(lines) == 1, r.stderr
        assert "'tensorrt'" in lines[0] and "pip install 'clip-rt[gpu]'" in lines[0] and "Traceback" not in r.stderr


def test_gpu_modules_import_nothing_heavy() -> None:
    code = ("import sys, clip_rt.cuda, clip_rt.resample, clip_rt.backends.tensorrt, clip_rt.export.engine, "
            "clip_rt.cli.engine; heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorrt', 'cuda', 'torch', 'transformers', 'onnx')); print(heavy); assert not heavy")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

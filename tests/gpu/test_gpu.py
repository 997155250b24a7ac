"""The GPU path. Three tiers, by what they need:

    @gpu                     an NVIDIA GPU with cuda-python and NVRTC: the preprocessing kernel against its numpy
                             twin, and the CUDA plumbing (buffers, streams, async copies, graph replay, threads,
                             growth, close)
    @gpu @tensorrt           TensorRT as well: engine builds, parity against eager fp32 PyTorch, refusals, lanes
    @gpu @onnxruntime_cuda   ONNX Runtime's CUDA provider, with CPU fallback off

Each skips with the probe's one-line reason (clip_rt.gpucheck.probe) when what it needs is missing. `pytest -m gpu`
runs the first tier on any CUDA machine, TensorRT or not (scripts/gpu-check runs the same checks in-process).

The last section runs everywhere: the builder-free helpers (DLA's static profile, typing per TensorRT version, engine
sources, static-shape padding), the staging-buffer growth policy, NVRTC's log and CUBIN buffers (real NVRTC where
its library is installed: it needs no GPU), the no-CPU-fallback session option, mixed ONNX Runtime installs, the
one-line refusals without TensorRT, lean imports, and the marker layout.
"""

from __future__ import annotations

import csv
import ctypes
import glob
import json
import os
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
ROOT = Path(__file__).resolve().parents[2]


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


# -- the kernel and the CUDA plumbing (CUDA + NVRTC, no TensorRT) --------------------------------------------------
@pytest.mark.gpu
def test_kernel_equals_twin(cuda: None, photos: list[np.ndarray]) -> None:
    """The CUDA kernel writes exactly what the numpy twin computes, on real photos and odd synthetic sizes, for each
    filter and resize/crop pair."""
    from clip_rt.gpucheck.selfcheck import kernel_matches_twin, odd_frames

    check_all(kernel_matches_twin(photos + odd_frames(), batch=40))


@pytest.mark.gpu
def test_buffers_streams_and_async_copies(cuda: None) -> None:
    from clip_rt.gpucheck.selfcheck import buffers_and_streams

    check_all([buffers_and_streams(streams=3)])


@pytest.mark.gpu
def test_graph_replay_on_new_pixels(cuda: None) -> None:
    from clip_rt.gpucheck.selfcheck import graph_replay

    check_all([graph_replay(replays=6)])


@pytest.mark.gpu
def test_eight_threads_share_one_kernel(cuda: None, photos: list[np.ndarray]) -> None:
    from clip_rt.gpucheck.selfcheck import threads_share_kernel

    check_all([threads_share_kernel(photos[:48], threads=8)])


@pytest.mark.gpu
def test_staging_buffers_grow_geometrically_on_the_gpu(cuda: None, photos: list[np.ndarray]) -> None:
    from clip_rt.gpucheck.selfcheck import staging_growth

    check_all([staging_growth(photos[:8], largest=32)])


@pytest.mark.gpu
def test_close_from_another_thread(cuda: None, photos: list[np.ndarray]) -> None:
    from clip_rt.gpucheck.selfcheck import close_from_another_thread

    check_all([close_from_another_thread(photos)])


# -- TensorRT engines -----------------------------------------------------------------------------------------------
# Small profiles keep the tiny builds quick, and let the tests cross them: batch 40 > 16 runs in chunks, text
# length 40 > 32 is refused.
PROFILE = {"max_batch": 16, "opt_batch": 4, "max_text_len": 32}


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


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_build_records_engines_with_metadata(fp16_package: Path) -> None:
    import tensorrt as trt

    from clip_rt.gpu.cuda import require_device
    from clip_rt.package import Package

    pkg, info = Package.open(fp16_package), require_device(0)
    for encoder in ("image", "text"):
        (art,) = pkg.find(encoder, "fp16", "tensorrt")
        meta = art.extra["engine"]
        assert art.file.startswith(f"engines/{encoder}.fp16.trt") and f".{info.sm}.b1-4-16" in art.file
        assert meta["tensorrt"] == trt.__version__ and meta["gpu"] == info.name
        assert meta["compute_capability"] == info.compute_capability and meta["precision"] == "fp16"
        # TensorRT 10.12+ and 11 build from the fp16 ONNX as typed, older 10.x from the fp32 ONNX with pins.
        source = "fp16" if meta["typing"] == "strong" else "fp32"
        assert meta["source"]["precision"] == source
        assert meta["source"]["sha256"] == pkg.artifact(encoder, source, portable=True).sha256
        assert meta["build"]["max_batch"] == 16 and meta["build"]["max_text_len"] == 32 and meta["dla"] is None
        assert art.parity["ok"] and not art.forced
        if meta["typing"] == "weak":
            assert meta["fp32_pinned_layers"] > 0  # LayerNorm, softmax and the final normalization
        pkg.path(art)  # sha256 matches the file


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_build_engine_cli_fp32(tensorrt: None, tiny_package: Path, tmp_path: Path) -> None:
    from clip_rt.cli import main
    from clip_rt.package import Package

    pkg = copy_package(tiny_package, tmp_path / "pkg")
    assert main(["build-engine", str(pkg), "--precision", "fp32", "--max-batch", "8", "--opt-batch", "2",
                 "--builder-level", "1", "--timing-cache", str(tmp_path / "timing.cache")]) == 0
    assert (tmp_path / "timing.cache").stat().st_size > 0
    p = Package.open(pkg)
    assert {a.encoder for a in p.artifacts if a.backend == "tensorrt" and a.precision == "fp32"} == {"image", "text"}


@pytest.mark.gpu
@pytest.mark.tensorrt
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
@pytest.mark.tensorrt
def test_int8_parity_against_eager(tensorrt: None, tiny_source: Path, references: dict[str, Any], data_dir: Path,
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
@pytest.mark.tensorrt
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
@pytest.mark.tensorrt
def test_graph_shapes_share_the_lanes_activation_memory(fp16_package: Path, references: dict[str, Any]) -> None:
    """Six captured text shapes on one lane cost far less than six activation allocations: every context of a lane
    draws on the lane's one activation buffer (user-managed memory), and the results stay right."""
    from clip_rt.backends import open_backend
    from clip_rt.gpu.cuda import memory_info
    from clip_rt.package import Package

    with open_backend("tensorrt", Package.open(fp16_package), precision="fp16", device="cuda", contexts=1,
                      cuda_graphs=True, max_graphs=8) as b:
        ids = references["ids"]
        b.encode_texts(ids[:2, :ids.shape[1]])  # the lane, its first graph
        activation = b._engine("text").activation_bytes
        free_before, _ = memory_info()
        for length in (3, 5, 8, 11, 14):
            short = np.ascontiguousarray(ids[:4, :length])
            short[:, -1] = 49407
            b.encode_texts(short)
        used = free_before - memory_info()[0]
        print(f"activation per context {activation / 2**20:.2f} MiB; 5 more captured shapes took "
              f"{used / 2**20:.2f} MiB")
        assert used < 2 * activation + (16 << 20), "each captured shape seems to hold its own activation memory"
        assert_parity(b.encode_texts(ids[:6]), references["text"][:6], "fp16", "texts after the captures")


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_backend_closes_from_another_thread(fp16_package: Path, references: dict[str, Any]) -> None:
    from clip_rt.backends import open_backend
    from clip_rt.gpucheck.selfcheck import in_fresh_thread
    from clip_rt.package import Package

    b = open_backend("tensorrt", Package.open(fp16_package), precision="fp16", device="cuda",
                     cuda_graphs=True)
    b.encode_images(references["pixels"][:3])
    b.encode_frames(references["frames"][:3])
    in_fresh_thread(b.close)  # module unload and frees on a thread where no context is current


@pytest.mark.gpu
@pytest.mark.tensorrt
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
@pytest.mark.tensorrt
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


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_eight_threads_share_one_backend(fp16_package: Path, references: dict[str, Any], cuda_graphs: bool) -> None:
    """8 threads call images, texts and frames at once through 2 lanes per engine: same results as alone."""
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


# -- ONNX Runtime's CUDA provider ------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.onnxruntime_cuda
def test_onnxruntime_cuda_without_cpu_fallback(ort_cuda: None, tiny_package: Path, data_dir: Path) -> None:
    """The CUDA provider runs the whole fp32 graph (CPU fallback off, or the session would not open) and agrees with
    the CPU provider within the fp32 gate."""
    import clip_rt

    texts = captions(data_dir, 30)
    with clip_rt.load(tiny_package) as cpu, clip_rt.load(tiny_package, device="cuda") as gpu:
        assert gpu.backend.describe()["cpu_fallback"] is False
        assert_parity(gpu.encode_texts(texts), cpu.encode_texts(texts), "fp32", "CUDA provider texts", "onnxruntime")
        files = image_files(data_dir, 12)
        assert_parity(gpu.encode_images(files), cpu.encode_images(files), "fp32", "CUDA provider images",
                      "onnxruntime")


# -- without a GPU (run everywhere) ---------------------------------------------------------------------------------
def test_dla_profile_is_static(tiny_package: Path) -> None:
    """DLA has no dynamic dimensions: its engines get min = opt = max (batch --opt-batch, text at its maximum), and
    the file name says so; GPU engines keep the dynamic profile. DLA refuses fp32."""
    from clip_rt.export.engine import EngineBuildConfig, contract_for, engine_file_name
    from clip_rt.gpu.cuda import DeviceInfo
    from clip_rt.package import Package

    pkg = Package.open(tiny_package)
    orin = DeviceInfo(0, "Orin", 8, 7, 8 << 30)
    dla = EngineBuildConfig(precision="fp16", max_batch=16, opt_batch=4, max_text_len=32, dla_core=0)
    gpu = EngineBuildConfig(precision="fp16", max_batch=16, opt_batch=4, max_text_len=32)
    for encoder, static_shape in (("image", (4, 64, 64, 3)), ("text", (4, 32))):
        lo, opt, hi = contract_for(pkg, encoder, dla).profile()
        assert lo == opt == hi == static_shape
        glo, gopt, ghi = contract_for(pkg, encoder, gpu).profile()
        assert glo[0] == 1 and gopt[0] == 4 and ghi[0] == 16 and glo != ghi
    name = engine_file_name("text", "fp16", "10.3.0.26", orin, contract_for(pkg, "text", dla), 0)
    assert name == "text.fp16.trt10.3.0.sm87.b4-4-4.l32-32-32.dla0.engine"
    with pytest.raises(ValueError, match="DLA runs fp16 and int8"):
        EngineBuildConfig(precision="fp32", dla_core=0)


@pytest.mark.parametrize("version, flags, mode", [
    ("10.0.1.6", True, "weak"), ("10.3.0.26", True, "weak"), ("10.11.0.33", True, "weak"),
    ("10.12.0.36", True, "strong"), ("10.16.1.11", True, "strong"), ("11.4.0.9", True, "strong"),
    ("10.3.0.26", False, "strong"),
])
def test_typing_mode_per_tensorrt_version(version: str, flags: bool, mode: str) -> None:
    """Weak typing (precision flags, layer pins) only before 10.12, where it is not yet deprecated."""
    from clip_rt.export.engine import typing_mode

    assert typing_mode(version, flags) == mode


def test_engine_sources_follow_the_typing(tiny_package: Path, tmp_path: Path) -> None:
    from clip_rt.export.engine import EngineBuildError, source_for
    from clip_rt.package import Package

    pkg = Package.open(tiny_package)
    for encoder in ("image", "text"):
        assert source_for(pkg, encoder, "fp16", strong=True).sha256 == pkg.artifact(encoder, "fp16").sha256
        fp32 = pkg.artifact(encoder, "fp32", portable=True)
        assert source_for(pkg, encoder, "fp16", strong=False).sha256 == fp32.sha256
        assert source_for(pkg, encoder, "fp32", strong=True).file == f"{encoder}.onnx"  # the plain graph, not .opt
    no_fp16 = copy_package(tiny_package, tmp_path / "pkg")
    manifest = json.loads((no_fp16 / "manifest.json").read_text())
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["precision"] != "fp16"]
    (no_fp16 / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineBuildError, match="fp16 ONNX.*no fp16 image artifact.*--precision .*fp16"):
        source_for(Package.open(no_fp16), "image", "fp16", strong=True)


def test_static_padding_is_exact_on_the_text_graph(tiny_package: Path, data_dir: Path) -> None:
    """What a static (DLA) engine gets: a short batch of short texts padded to its one shape with the pad id after
    EOT. Through the package's own fp32 text graph the real rows keep their embeddings (CLIP's text tower is causal
    and reads the EOT position), and extra rows repeat the first."""
    import onnxruntime as ort

    from clip_rt.backends.tensorrt import pad_to_shape
    from clip_rt.package import Package
    from clip_rt.tokenizer import Tokenizer

    pkg = Package.open(tiny_package)
    tok = Tokenizer.from_package(pkg)
    ids = tok.encode(captions(data_dir, 3))  # [3, L] int32
    padded = pad_to_shape(ids, (8, 40), tok.pad_id)  # [8, 40]
    assert (padded[:3, ids.shape[1]:] == tok.pad_id).all() and (padded[3:] == padded[0]).all()
    session = ort.InferenceSession(str(pkg.path(pkg.artifact("text", "fp32", portable=True))),
                                   providers=["CPUExecutionProvider"])
    plain, static = (session.run(None, {"input_ids": x})[0] for x in (ids, padded))
    assert cosines(static[:3], plain).min() > 0.99999
    pixels = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    grown = pad_to_shape(pixels, (4, 64, 64, 3), 0)
    assert (grown[:2] == pixels).all() and (grown[2:] == pixels[0]).all()
    assert pad_to_shape(pixels, pixels.shape, 0) is pixels


def test_inputs_fit_static_and_dynamic_profiles() -> None:
    """How the backend cuts inputs for an engine: a static (DLA) profile gets full chunks padded to its one shape,
    with the real row counts kept; a dynamic one gets unpadded chunks of at most its max batch; an axis past the
    profile is an InputError naming the rebuild command."""
    from clip_rt.backends.tensorrt import fit_to_profile
    from clip_rt.errors import InputError

    ids = np.arange(9 * 10, dtype=np.int32).reshape(9, 10)
    static = fit_to_profile(ids, (4, 32), (4, 32), 49407, "text", "REBUILD")
    assert [(c.shape, n) for c, n in static] == [((4, 32), 4), ((4, 32), 4), ((4, 32), 1)]
    assert (np.concatenate([c[:n, :10] for c, n in static]) == ids).all()
    assert (static[2][0][1:] == static[2][0][0]).all()  # the padded rows repeat the first
    dynamic = fit_to_profile(ids, (1, 2), (4, 16), 49407, "text", "REBUILD")
    assert [(c.shape, n) for c, n in dynamic] == [((4, 10), 4), ((4, 10), 4), ((1, 10), 1)]
    with pytest.raises(InputError, match="axis 1.*REBUILD"):
        fit_to_profile(ids, (4, 8), (4, 8), 49407, "text", "REBUILD")
    with pytest.raises(InputError, match="axis 1"):
        fit_to_profile(ids[:, :1], (1, 2), (4, 16), 49407, "text", "REBUILD")


class _FakeBuffer:
    """Stands in for cudaMalloc'd memory (no GPU here): records its size and whether it was freed."""

    def __init__(self, nbytes: int, log: list):
        self.nbytes, self.ptr, self.freed = nbytes, 1, False
        log.append(self)

    def free(self) -> None:
        assert not self.freed, "freed twice"
        self.freed = True


def test_staging_buffers_grow_geometrically() -> None:
    """Item 6: the growth policy reads the old capacity before freeing, so 200 growing batches reallocate a handful
    of times, every live buffer is big enough, and every replaced one was freed."""
    from clip_rt.gpu.kernel import StagingBuffers, grown_capacity

    assert grown_capacity(0, 100) == 100 and grown_capacity(1000, 1001) == 2000 and grown_capacity(1000, 5000) == 5000
    hosts: list = []
    devices: list = []
    buffers = StagingBuffers(lambda n: _FakeBuffer(n, hosts), lambda n: _FakeBuffer(n, devices))
    needs = [100_000 + 1_000 * i for i in range(200)]
    for need in needs:
        host, dev = buffers.reserve(need)
        assert host.nbytes >= need and dev.nbytes >= need and not host.freed and not dev.freed
    assert buffers.allocations == len(hosts) == len(devices) <= 3  # 100k -> 200k -> 400k
    assert all(b.freed for b in hosts[:-1] + devices[:-1])
    buffers.free()
    assert hosts[-1].freed and devices[-1].freed and buffers.capacity == 0


def _nvrtc_or_skip() -> Any:
    """cuda.bindings' nvrtc module with its library loaded (NVRTC needs no GPU), or skip. Where cuda.pathfinder does
    not look (a venv that sees another's site-packages through a .pth file, as the development setup does), the pip
    wheel's libnvrtc is loaded by full path first, which pathfinder then finds already loaded."""
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        pytest.skip("cuda-python is not installed (pip install 'clip-rt[gpu]')")
    try:
        nvrtc.nvrtcVersion()
        return nvrtc
    except RuntimeError:
        pass
    libs = [p for d in sys.path for p in glob.glob(os.path.join(d, "nvidia", "*", "lib", "libnvrtc*.so.*"))
            if ".alt." not in p]
    if not libs:
        pytest.skip("the NVRTC library is not installed (pip install 'cuda-python[all]')")
    for path in sorted(libs, key=lambda p: "builtins" not in p):  # the builtins library first
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    nvrtc.nvrtcVersion()
    return nvrtc


def test_nvrtc_buffers_are_writable_and_exact() -> None:
    """Item 11: NVRTC fills a bytearray (never an immutable bytes object); the log loses its C terminator, a CUBIN
    keeps every byte, trailing zeros included."""
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        pytest.skip("cuda-python is not installed")
    from clip_rt.gpu.kernel import nvrtc_bytes

    ok = nvrtc.nvrtcResult.NVRTC_SUCCESS
    seen: list = []

    def fill(data: bytes):
        def get(buf: bytearray):
            seen.append(type(buf))
            buf[:] = data
            return (ok,)
        return (lambda: (ok, len(data))), get

    assert nvrtc_bytes(*fill(b"line 1\nline 2\n\x00"), "log", text=True) == b"line 1\nline 2\n"
    assert nvrtc_bytes(*fill(b"\x7fELF\x00\x01\x00\x00"), "cubin", text=False) == b"\x7fELF\x00\x01\x00\x00"
    assert seen == [bytearray, bytearray]


def test_nvrtc_compiles_the_kernel_for_every_architecture() -> None:
    """The real NVRTC (no GPU needed): the kernel compiles for every architecture from Turing up that this NVRTC
    knows (Jetson Orin's sm_87 and Hopper's sm_90 among them) into an ELF CUBIN; a broken source gives CudaError with
    the compiler's log, without the C terminator."""
    nvrtc = _nvrtc_or_skip()
    from clip_rt.gpu.cuda import CudaError, check
    from clip_rt.gpu.kernel import compile_kernel, kernel_cubin

    archs = [a for a in check(nvrtc.nvrtcGetSupportedArchs(), "nvrtcGetSupportedArchs") if a >= 75]
    assert 87 in archs and 90 in archs, archs
    for arch in archs:
        assert kernel_cubin(f"sm_{arch}")[:4] == b"\x7fELF", arch
    with pytest.raises(CudaError) as e:
        compile_kernel('extern "C" __global__ void k() { this is not C++; }', "broken", "sm_90")
    assert "broken.cu" in str(e.value) and "error" in str(e.value) and "\x00" not in str(e.value)


def test_gpu_sessions_disable_cpu_fallback() -> None:
    """Item 4: every CUDA / TensorRT provider session is built with session.disable_cpu_ep_fallback = 1 (unless the
    caller asks for ONNX Runtime's fallback); CPU sessions are left alone."""
    from clip_rt.backends.onnxruntime import NO_CPU_FALLBACK, SessionConfig, session_options_for

    for provider in ("cuda", "tensorrt"):
        assert session_options_for(SessionConfig(provider=provider)).get_session_config_entry(NO_CPU_FALLBACK) == "1"
    for config in (SessionConfig(provider="cpu"), SessionConfig(provider="cuda", cpu_fallback=True)):
        with pytest.raises(RuntimeError, match="does not have configuration"):
            session_options_for(config).get_session_config_entry(NO_CPU_FALLBACK)


def _dist(site: Path, name: str, version: str) -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "top_level.txt").write_text("onnxruntime\n")
    (info / "RECORD").write_text("onnxruntime/__init__.py,,\n")


def test_mixed_onnxruntime_install_is_named_with_the_fix(tmp_path: Path) -> None:
    """Item 5: two builds in one onnxruntime folder are found from their dist-info and refused with the commands
    that fix it; one build alone is fine."""
    from clip_rt.backends.onnxruntime import GPU_INSTALL, mixed_install_problem, onnxruntime_distributions

    single, mixed = tmp_path / "single", tmp_path / "mixed"
    _dist(single, "onnxruntime-gpu", "1.22.0")
    _dist(mixed, "onnxruntime", "1.32.0")
    _dist(mixed, "onnxruntime-gpu", "1.22.0")
    _dist(mixed, "onnxruntime-tools", "1.7.0")  # another onnxruntime-* name that is not a build: not counted
    (mixed / "onnxruntime_tools-1.7.0.dist-info" / "top_level.txt").write_text("onnxruntime_tools\n")
    (mixed / "onnxruntime_tools-1.7.0.dist-info" / "RECORD").write_text("onnxruntime_tools/__init__.py,,\n")
    assert onnxruntime_distributions([str(single)]) == {"onnxruntime-gpu": "1.22.0"}
    assert mixed_install_problem([str(single)]) is None
    problem = mixed_install_problem([str(mixed)])
    assert problem is not None and "onnxruntime 1.32.0, onnxruntime-gpu 1.22.0" in problem and GPU_INSTALL in problem
    assert "onnxruntime_tools" not in problem and "onnxruntime-tools" not in problem


def _has_tensorrt() -> bool:
    from clip_rt.gpucheck.probe import probe_tensorrt

    return probe_tensorrt().ok


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed: this checks the message shown without it")
def test_without_tensorrt_the_cli_says_what_is_missing(tiny_package: Path, data_dir: Path) -> None:
    """One line naming the package and the extra, also where only tensorrt-stubs (an empty `tensorrt` namespace
    package) is installed, as in the dev extra."""
    image = sorted((data_dir / "caltech101" / "images").iterdir())[0]
    cli = [sys.executable, "-m", "clip_rt.cli"]
    for args in (["classify", str(tiny_package), str(image), "--labels", "a,b", "--backend", "tensorrt"],
                 ["build-engine", str(tiny_package), "--precision", "fp16"]):
        r = subprocess.run(cli + args, capture_output=True, text=True)
        lines = r.stderr.strip().splitlines()
        assert r.returncode != 0 and len(lines) == 1, r.stderr
        assert "'tensorrt'" in lines[0] and "pip install 'clip-rt[gpu]'" in lines[0] and "Traceback" not in r.stderr


def test_gpu_modules_import_nothing_heavy() -> None:
    code = ("import sys, clip_rt.gpu.cuda, clip_rt.gpu.kernel, clip_rt.gpu.resample, clip_rt.gpucheck.probe, "
            "clip_rt.gpucheck.selfcheck, clip_rt.gpucheck.baselines, clip_rt.gpucheck.gpu_check, "
            "clip_rt.backends.tensorrt, clip_rt.export.engine, clip_rt.cli.engine; heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorrt', 'cuda', 'torch', 'transformers', 'onnx')); print(heavy); assert not heavy")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _collect(*markers: str) -> list[set[str]]:
    """Test names `pytest --co -m MARKER tests/gpu/test_gpu.py` collects, per marker expression (one subprocess)."""
    code = ("import sys, pytest\n"
            "for m in sys.argv[1:]:\n"
            "    print('== ' + m, flush=True)\n"
            "    assert pytest.main(['--co', '-q', '-p', 'no:cacheprovider', '-m', m, 'tests/gpu/test_gpu.py']) == 0\n")
    r = subprocess.run([sys.executable, "-c", code, *markers], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    found: list[set[str]] = []
    for line in r.stdout.splitlines():
        if line.startswith("== "):
            found.append(set())
        elif "::" in line:
            found[-1].add(line.split("::")[1].split("[")[0])
    return found


def test_markers_separate_cuda_from_tensorrt() -> None:
    """Item 2: the kernel and plumbing tests need CUDA but not TensorRT: `-m gpu` collects them, `-m 'gpu and not
    tensorrt'` collects nothing that needs TensorRT, and every TensorRT test carries its marker."""
    cuda_only = {"test_kernel_equals_twin", "test_buffers_streams_and_async_copies", "test_graph_replay_on_new_pixels",
                 "test_eight_threads_share_one_kernel", "test_staging_buffers_grow_geometrically_on_the_gpu",
                 "test_close_from_another_thread"}
    gpu, no_trt, trt = _collect("gpu", "gpu and not tensorrt", "tensorrt")
    assert cuda_only <= gpu and cuda_only <= no_trt
    assert no_trt == cuda_only | {"test_onnxruntime_cuda_without_cpu_fallback"}
    assert trt and not trt & no_trt and trt <= gpu and "test_fp16_parity_against_eager" in trt

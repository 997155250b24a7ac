"""TensorRT engines (@gpu @tensorrt: an NVIDIA GPU with TensorRT as well): engine builds and their metadata,
parity against eager fp32 PyTorch, GPU preprocessing, refusals of mismatched engines and inputs outside the profile,
lanes shared by threads. Each skips with the probe's one-line reason when what it needs is missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import faults
from gpu_fixtures import PROFILE, assert_parity, build, copy_package, cosines
from gpu_fixtures import cuda, fp16_package, references, tensorrt  # noqa: F401  (fixtures)


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

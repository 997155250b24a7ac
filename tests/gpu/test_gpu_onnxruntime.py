"""ONNX Runtime on a GPU: the CUDA provider with CPU fallback off (@gpu @onnxruntime_cuda), and without a GPU the
no-CPU-fallback session option and mixed onnxruntime installs named with the fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gpu_fixtures import assert_parity, captions, image_files, ort_cuda  # noqa: F401  (ort_cuda: a fixture)


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

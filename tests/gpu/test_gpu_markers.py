"""The GPU tests' layout (run everywhere): the GPU modules import nothing heavy, and the markers keep the tiers
apart (`-m gpu`: CUDA + NVRTC; `-m tensorrt`: TensorRT as well; `-m onnxruntime_cuda`: ONNX Runtime's CUDA
provider), as `clip-rt gpu-check` runs them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_modules_import_nothing_heavy() -> None:
    code = ("import sys, clip_rt.gpu.cuda, clip_rt.gpu.kernel, clip_rt.gpu.resample, clip_rt.gpucheck.probe, "
            "clip_rt.gpucheck.selfcheck, clip_rt.gpucheck.baselines, clip_rt.gpucheck.gpu_check, "
            "clip_rt.backends.tensorrt, clip_rt.export.engine, clip_rt.cli.engine; heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorrt', 'cuda', 'torch', 'transformers', 'onnx')); print(heavy); assert not heavy")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _collect(*markers: str) -> list[set[str]]:
    """Test names `pytest --co -m MARKER tests/gpu` collects, per marker expression (one subprocess)."""
    code = ("import sys, pytest\n"
            "for m in sys.argv[1:]:\n"
            "    print('== ' + m, flush=True)\n"
            "    assert pytest.main(['--co', '-q', '-p', 'no:cacheprovider', '-m', m, 'tests/gpu']) == 0\n")
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

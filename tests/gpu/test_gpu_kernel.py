"""The preprocessing kernel and the CUDA plumbing (@gpu: an NVIDIA GPU with cuda-python and NVRTC, TensorRT not
needed): the kernel against its numpy twin, buffers, streams, async copies, graph replay, threads, growth, close.
`pytest -m gpu` runs them on any CUDA machine (scripts/gpu-check runs the same checks in-process). Without a GPU:
the staging-buffer growth policy, and NVRTC's log and CUBIN buffers (real NVRTC where its library is installed: it
needs no GPU).
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
from typing import Any

import numpy as np
import pytest

from gpu_fixtures import check_all, cuda, photos  # noqa: F401  (cuda, photos: fixtures)


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


# -- without a GPU (run everywhere) ---------------------------------------------------------------------------------
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

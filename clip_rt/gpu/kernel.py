"""The NVRTC-compiled preprocessing kernel (resize_crop.cu) and what feeds it: frames of any sizes staged in
growable pinned + device buffers, the kernel launched straight into the image engine's input.

The kernel's arithmetic is defined, and tested on the CPU, by its numpy twin in clip_rt/gpu/resample.py. NVRTC
compiles it once per GPU architecture per process (CUBIN cached); each device gets its own loaded module.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from importlib import resources
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from ..errors import BackendUnavailable, InputError
from .cuda import (
    CUDA_HINT,
    CudaError,
    DeviceBuffer,
    DeviceInfo,
    PinnedBuffer,
    Stream,
    bindings,
    check,
    error_name,
    is_success,
    parse_cuda_device,
    require_device,
    use_device,
)
from .resample import DESC_FIELDS, PRECISION_BITS, pack_tables, plan_frame

KERNEL_NAME = "resize_crop_pack"
KERNEL_FILE = "resize_crop.cu"
# Constants the kernel shares with the twin, passed to the compiler as -D (NVRTC here, g++ in the CPU test).
KERNEL_DEFINES: dict[str, int] = {"PRECISION_BITS": PRECISION_BITS, "DESC_FIELDS": DESC_FIELDS}
THREADS_PER_BLOCK = 256


def kernel_source() -> str:
    """The kernel's CUDA C++ source (package data next to this module)."""
    return resources.files(__package__).joinpath(KERNEL_FILE).read_text(encoding="utf-8")


# -- NVRTC ----------------------------------------------------------------------------------------------------
def nvrtc_bytes(get_size: Callable[[], Any], get: Callable[[bytearray], Any], what: str, text: bool) -> bytes:
    """Read one of NVRTC's size-then-fill outputs: ask its size, let NVRTC fill a writable buffer of that size.
    text=True (the program log): NVRTC counts the C string terminator in the size; it is cut off here.
    text=False (CUBIN): the bytes as they are, every one of them.

    The buffer must be a bytearray: cuda.bindings hands a bytes object's internal storage to NVRTC as `char*`,
    and writing into an immutable (possibly shared, interned) bytes object corrupts it."""
    size = int(check(get_size(), f"{what} size"))
    buffer = bytearray(size)
    check(get(buffer), what)
    if text:
        end = buffer.find(b"\x00")
        return bytes(buffer if end < 0 else buffer[:end])
    return bytes(buffer)


def compile_kernel(source: str, name: str, arch: str, defines: dict[str, int] | None = None) -> bytes:
    """NVRTC: CUDA C++ source -> CUBIN for `arch` (e.g. "sm_90"). CudaError carries the compiler log."""
    _, _, nvrtc = bindings()
    try:
        prog = check(nvrtc.nvrtcCreateProgram(source.encode(), f"{name}.cu".encode(), 0, None, None),
                     "nvrtcCreateProgram")
    except RuntimeError as e:  # cuda.pathfinder raises DynamicLibNotFoundError when libnvrtc is not installed
        raise BackendUnavailable(f"GPU preprocessing needs the NVRTC library, which was not found ({e}); "
                                 f"install it with: pip install 'cuda-python[all]' (or {CUDA_HINT})") from None
    try:
        opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++14", b"-default-device"]
        opts += [f"-D{k}={v}".encode() for k, v in (defines or {}).items()]
        status = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)[0]
        if not is_success(status):
            log = nvrtc_bytes(lambda: nvrtc.nvrtcGetProgramLogSize(prog),
                              lambda buf: nvrtc.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog", text=True)
            raise CudaError(f"NVRTC could not compile {name} for {arch} ({error_name(status)}):\n"
                            f"{log.decode(errors='replace').strip()}")
        return nvrtc_bytes(lambda: nvrtc.nvrtcGetCUBINSize(prog), lambda buf: nvrtc.nvrtcGetCUBIN(prog, buf),
                           "nvrtcGetCUBIN", text=False)
    finally:
        check(nvrtc.nvrtcDestroyProgram(prog), "nvrtcDestroyProgram")


@functools.lru_cache(maxsize=8)
def kernel_cubin(arch: str) -> bytes:
    """The preprocessing kernel compiled for `arch`, once per process (NVRTC takes about a second)."""
    return compile_kernel(kernel_source(), KERNEL_NAME, arch, KERNEL_DEFINES)


class ResizeKernel:
    """The preprocessing kernel loaded into one device's primary context."""

    def __init__(self, device: DeviceInfo):
        _, driver, _ = bindings()
        use_device(device.index)
        self.device = device
        self.cubin = kernel_cubin(f"sm_{device.major}{device.minor}")
        self._module = check(driver.cuModuleLoadData(np.char.array(self.cubin)), "cuModuleLoadData")
        self._function = check(driver.cuModuleGetFunction(self._module, KERNEL_NAME.encode()), "cuModuleGetFunction")

    def launch(self, pixels: int, desc: int, tables: int, out: int, batch: int, size: int, stream: Stream) -> None:
        """Enqueue the kernel for `batch` frames: device pointers in, uint8 [batch, size, size, 3] at `out`."""
        _, driver, _ = bindings()
        if batch < 1:
            return
        blocks = (size * size + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK
        # cuLaunchKernel takes kernelParams as (values, ctypes types); cuda-python packs them into void**.
        args = ((pixels, desc, tables, out, size),
                (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int))
        check(driver.cuLaunchKernel(self._function, blocks, batch, 1, THREADS_PER_BLOCK, 1, 1, 0, stream.handle,
                                    args, 0), f"cuLaunchKernel({KERNEL_NAME}, {batch} frames)")

    def unload(self) -> None:
        """Unload the module. Makes its device current first: cuModuleUnload acts on the calling thread's context."""
        if self._module is not None:
            _, driver, _ = bindings()
            module, self._module = self._module, None
            use_device(self.device.index)
            check(driver.cuModuleUnload(module), "cuModuleUnload")


# -- staging frames ----------------------------------------------------------------------------------------------
def grown_capacity(capacity: int, needed: int) -> int:
    """Bytes to allocate when `needed` exceeds `capacity`: at least double, so a run of growing batches
    reallocates O(log n) times, not once per batch."""
    return max(int(needed), 2 * int(capacity))


class Buffer(Protocol):
    nbytes: int
    ptr: int

    def free(self) -> None: ...


class StagingBuffers:
    """A pinned host buffer and a device buffer of the same capacity, grown geometrically and reused.

    The allocators are parameters so the growth policy is testable without a GPU; by default they are
    PinnedBuffer and DeviceBuffer. `allocations` counts (re)allocations."""

    def __init__(self, alloc_host: Callable[[int], Buffer] = PinnedBuffer,
                 alloc_device: Callable[[int], Buffer] = DeviceBuffer):
        self._alloc_host, self._alloc_device = alloc_host, alloc_device
        self.host: Buffer | None = None
        self.device: Buffer | None = None
        self.allocations = 0

    @property
    def capacity(self) -> int:
        return self.device.nbytes if self.device is not None else 0

    def reserve(self, nbytes: int) -> tuple[Any, Any]:
        """(host, device) buffers of at least `nbytes`. The caller must have finished all work that reads the old
        buffers (FrameStager synchronizes its stream first)."""
        if self.host is None or self.device is None or self.capacity < nbytes:
            capacity = grown_capacity(self.capacity, nbytes)  # read before free() drops the old buffers
            self.free()
            self.host, self.device = self._alloc_host(capacity), self._alloc_device(capacity)
            self.allocations += 1
        return self.host, self.device

    def free(self) -> None:
        for buf in (self.host, self.device):
            if buf is not None:
                buf.free()
        self.host = self.device = None


def align(n: int, to: int = 256) -> int:
    """`n` rounded up to a multiple of `to` (256: the alignment cudaMalloc gives, kept for every section)."""
    return (n + to - 1) // to * to


class FrameStager:
    """Packs a batch of frames of any sizes (uint8 [H, W, 3]) with their tables into pinned memory, copies them
    to the device on `stream` and launches the kernel into `out` (a device pointer to uint8 [B, S, S, 3]).
    One FrameStager serves one thread at a time."""

    def __init__(self, kernel: ResizeKernel, resize: int, size: int, filter: str,
                 buffers: StagingBuffers | None = None):
        self.kernel, self.resize, self.size, self.filter = kernel, resize, size, filter
        self.buffers = buffers if buffers is not None else StagingBuffers()

    def stage(self, frames: Sequence[np.ndarray], out: int, stream: Stream) -> None:
        plans = [plan_frame(f.shape[0], f.shape[1], self.resize, self.size, self.filter) for f in frames]
        desc, tables = pack_tables(plans)  # int64 [B, 8], int32 [...]
        pix_bytes = int(sum(f.nbytes for f in frames))
        desc_off = align(pix_bytes)
        tab_off = align(desc_off + desc.nbytes)
        total = tab_off + tables.nbytes
        # The previous batch's copy may still read the pinned buffer: finish it before reusing or freeing it.
        stream.synchronize()
        host, dev = self.buffers.reserve(total)
        offset = 0
        for f in frames:
            host.view(np.uint8, f.nbytes, offset)[:] = np.ascontiguousarray(f).reshape(-1)
            offset += f.nbytes
        host.view(np.int64, desc.size, desc_off)[:] = desc.reshape(-1)
        host.view(np.int32, tables.size, tab_off)[:] = tables
        stream.copy_to_device(dev.ptr, host.ptr, total)
        self.kernel.launch(dev.ptr, dev.ptr + desc_off, dev.ptr + tab_off, out, len(frames), self.size, stream)

    def free(self) -> None:
        self.buffers.free()


def check_frames(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Validate decoded frames for the kernel: a list of uint8 [H, W, 3] arrays."""
    out = []
    for i, f in enumerate(frames):
        a = np.asarray(f)
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
            raise InputError(f"frame {i}: expected a decoded RGB uint8 [H, W, 3] array, got {a.dtype} {list(a.shape)}")
        out.append(a)
    return out


class GpuResizer:
    """The kernel on its own, with its stream and buffers kept between calls: frames of any sizes ->
    uint8 [B, size, size, 3] on the host. For tests, gpu-check and benchmarks of the kernel against its twin
    and against Pillow; the tensorrt backend's encode_frames runs the same kernel straight into its engine input.
    One GpuResizer serves one thread at a time; close() it (or use it as a context manager)."""

    def __init__(self, resize: int, size: int, filter: str = "bicubic", device: str = "cuda"):
        self.info = require_device(parse_cuda_device(device))
        self.size = size
        self.kernel = ResizeKernel(self.info)
        self.stream = Stream()
        self.stager = FrameStager(self.kernel, resize, size, filter)
        self._out = StagingBuffers()
        self._lock = threading.Lock()

    def __call__(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        frames = check_frames(frames)
        n_out = len(frames) * self.size * self.size * 3
        with self._lock:
            use_device(self.info.index)
            self.stream.synchronize()
            out_host, out_dev = self._out.reserve(n_out)
            self.stager.stage(frames, out_dev.ptr, self.stream)
            self.stream.copy_to_host(out_host.ptr, out_dev.ptr, n_out)
            self.stream.synchronize()
            return out_host.view(np.uint8, n_out).reshape(len(frames), self.size, self.size, 3).copy()

    def close(self) -> None:
        """Free everything, on this resizer's device whatever thread calls it."""
        with self._lock:
            use_device(self.info.index)
            self.stream.synchronize()
            self.stager.free()
            self._out.free()
            self.stream.destroy()
            self.kernel.unload()

    def __enter__(self) -> "GpuResizer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def gpu_resize_crop(frames: Sequence[np.ndarray], resize: int, size: int, filter: str = "bicubic",
                    device: str = "cuda") -> np.ndarray:
    """One call through the kernel: frames of any sizes -> uint8 [B, size, size, 3] on the host
    (equal to resample.twin_packed of the same frames)."""
    with GpuResizer(resize, size, filter, device) as resizer:
        return resizer(frames)

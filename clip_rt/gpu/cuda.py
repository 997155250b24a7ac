"""Thin, checked wrappers over cuda-python (cuda.bindings): devices, memory, streams and graphs.

Every CUDA call goes through `check`, which raises CudaError naming the call and CUDA's own error name.
cuda-python is imported on first use; without it, BackendUnavailable says how to install it.

Threads and devices: all work uses the device's primary context (the runtime API's), made current on the
calling thread by `use_device`. Every resource remembers its device and makes it current again before it is
freed, so a backend may be closed from another thread than the one that opened it, or after other code
switched devices (cuModuleUnload, cudaFree and friends act on the calling thread's current context). A
Stream, buffer or graph may be used by one thread at a time.

API use follows the cuda-python documentation of cuda.bindings.runtime / driver (12.x and 13.x have the
same signatures for every call made here: (status, *values) tuples, handles as objects, pointers as ints).
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

import numpy as np

from ..errors import BackendUnavailable, ClipRtError, missing_dependency

CUDA_HINT = "pip install 'clip-rt[gpu]'"


class CudaError(ClipRtError):
    """A CUDA, driver or NVRTC call failed at run time (out of memory, launch failure, ...)."""


# -- imports and status checks ------------------------------------------------------------------------------
def bindings() -> tuple[ModuleType, ModuleType, ModuleType]:
    """(runtime, driver, nvrtc) from cuda.bindings (cuda-python >= 12.6), imported on first use."""
    try:
        from cuda.bindings import driver, nvrtc
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise missing_dependency("cuda-python", "gpu", "the CUDA path (tensorrt backend, GPU preprocessing)") from None
    return cudart, driver, nvrtc


def error_name(err: Any) -> str:
    """CUDA's name and description of a status value (runtime, driver or NVRTC), or its repr."""
    cudart, driver, nvrtc = bindings()
    try:
        if isinstance(err, cudart.cudaError_t):
            return f"{cudart.cudaGetErrorName(err)[1].decode()}: {cudart.cudaGetErrorString(err)[1].decode()}"
        if isinstance(err, driver.CUresult):
            return f"{driver.cuGetErrorName(err)[1].decode()}: {driver.cuGetErrorString(err)[1].decode()}"
        if isinstance(err, nvrtc.nvrtcResult):
            return str(nvrtc.nvrtcGetErrorString(err)[1].decode())
    except Exception:  # noqa: BLE001 - naming the error must never hide it (no libcuda: the driver call raises)
        pass
    return repr(err)


def is_success(err: Any) -> bool:
    """Whether a runtime, driver or NVRTC status value means success."""
    cudart, driver, nvrtc = bindings()
    if isinstance(err, cudart.cudaError_t):
        return bool(err == cudart.cudaError_t.cudaSuccess)
    if isinstance(err, driver.CUresult):
        return bool(err == driver.CUresult.CUDA_SUCCESS)
    if isinstance(err, nvrtc.nvrtcResult):
        return bool(err == nvrtc.nvrtcResult.NVRTC_SUCCESS)
    raise CudaError(f"unexpected CUDA status object {err!r}")


def check(result: Any, call: str) -> Any:
    """Unpack a cuda-python result: (status, *values) or status alone. Raises CudaError unless it is success;
    returns None, the single value, or the tuple of values."""
    status, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if not is_success(status):
        raise CudaError(f"{call} failed: {error_name(status)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


# -- devices ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceInfo:
    """What identifies a GPU for engine compatibility."""

    index: int  # CUDA ordinal (cuda:N)
    name: str  # e.g. "NVIDIA H100 80GB HBM3"
    major: int  # compute capability
    minor: int
    total_memory: int  # bytes

    @property
    def compute_capability(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def sm(self) -> str:
        return f"sm{self.major}{self.minor}"


def parse_cuda_device(device: str) -> int:
    """"cuda" -> 0, "cuda:N" -> N; anything else is refused (no silent move to another device)."""
    if device == "cuda":
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise BackendUnavailable(f"the CUDA path runs on device 'cuda' or 'cuda:N', not {device!r}")


def require_device(index: int = 0) -> DeviceInfo:
    """Check that CUDA device `index` exists and is usable, make it current; BackendUnavailable otherwise."""
    cudart, _, _ = bindings()
    try:
        err, count = cudart.cudaGetDeviceCount()
    except Exception as e:  # noqa: BLE001 - a missing libcuda surfaces as an exception in some releases
        raise BackendUnavailable(f"no CUDA driver found ({type(e).__name__}: {e}); install the NVIDIA driver") from None
    if err == cudart.cudaError_t.cudaErrorNoDevice or (is_success(err) and count == 0):
        raise BackendUnavailable("no CUDA device found (cudaGetDeviceCount reports none); the tensorrt backend and "
                                 "GPU preprocessing need an NVIDIA GPU")
    if err == cudart.cudaError_t.cudaErrorInsufficientDriver:
        raise BackendUnavailable("no CUDA device found: no NVIDIA driver is loaded, or it is older than this "
                                 f"cuda-python needs ({error_name(err)}); install or update the NVIDIA driver "
                                 f"(cuda-python 13 needs an R580 or newer driver; 'cuda-python<13' runs on CUDA 12 "
                                 f"ones)")
    if not is_success(err):
        raise BackendUnavailable(f"no usable CUDA device: cudaGetDeviceCount failed ({error_name(err)})")
    if index >= count:
        raise BackendUnavailable(f"CUDA device {index} does not exist; this machine has {count} (cuda:0..cuda:{count - 1})")
    use_device(index)
    prop = check(cudart.cudaGetDeviceProperties(index), f"cudaGetDeviceProperties({index})")
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return DeviceInfo(index, name.split("\x00")[0].strip(), int(prop.major), int(prop.minor), int(prop.totalGlobalMem))


_THREAD = threading.local()


def use_device(index: int) -> None:
    """Make device `index`'s primary context current on this thread (other code may have switched it)."""
    cudart, _, _ = bindings()
    check(cudart.cudaSetDevice(index), f"cudaSetDevice({index})")
    done: set[int] = _THREAD.__dict__.setdefault("initialized", set())
    if index not in done:  # driver-API calls (module load, launch, unload) need the primary context created and current
        check(cudart.cudaFree(0), "cudaFree(0) (primary context initialization)")
        done.add(index)


def current_device() -> int:
    """The CUDA ordinal current on this thread (cudaGetDevice)."""
    cudart, _, _ = bindings()
    return int(check(cudart.cudaGetDevice(), "cudaGetDevice"))


def memory_info() -> tuple[int, int]:
    """(free, total) bytes of the current device (cudaMemGetInfo)."""
    cudart, _, _ = bindings()
    free, total = check(cudart.cudaMemGetInfo(), "cudaMemGetInfo")
    return int(free), int(total)


# -- memory and streams ---------------------------------------------------------------------------------------
class DeviceBuffer:
    """cudaMalloc'd memory of `nbytes` (at least 1 byte) on the current device."""

    def __init__(self, nbytes: int):
        cudart, _, _ = bindings()
        self.nbytes = max(int(nbytes), 1)
        self.device = current_device()
        self.ptr: int = int(check(cudart.cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes})"))

    def free(self) -> None:
        if self.ptr:
            cudart, _, _ = bindings()
            ptr, self.ptr = self.ptr, 0
            use_device(self.device)
            check(cudart.cudaFree(ptr), "cudaFree")


class PinnedBuffer:
    """Page-locked host memory (cudaMallocHost) of `nbytes`, with numpy views for async copies."""

    def __init__(self, nbytes: int):
        cudart, _, _ = bindings()
        self.nbytes = max(int(nbytes), 1)
        self.device = current_device()
        self.ptr: int = int(check(cudart.cudaMallocHost(self.nbytes), f"cudaMallocHost({self.nbytes})"))
        base = ctypes.cast(self.ptr, ctypes.POINTER(ctypes.c_uint8))
        self._bytes: np.ndarray = np.ctypeslib.as_array(base, shape=(self.nbytes,))  # [nbytes] uint8, pinned

    def view(self, dtype: Any, count: int, offset: int = 0) -> np.ndarray:
        """A 1-D numpy view of `count` items of `dtype` starting at byte `offset` (no copy)."""
        size = np.dtype(dtype).itemsize * count
        if offset + size > self.nbytes:
            raise CudaError(f"pinned buffer of {self.nbytes} bytes is too small for {size} bytes at offset {offset}")
        return self._bytes[offset:offset + size].view(dtype)

    def free(self) -> None:
        if self.ptr:
            cudart, _, _ = bindings()
            ptr, self.ptr = self.ptr, 0
            self._bytes = np.zeros(0, np.uint8)
            use_device(self.device)
            check(cudart.cudaFreeHost(ptr), "cudaFreeHost")


class Stream:
    """A non-blocking CUDA stream on the current device (does not synchronize with the legacy default stream)."""

    def __init__(self) -> None:
        cudart, _, _ = bindings()
        self.device = current_device()
        self.handle = check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")

    @property
    def ptr(self) -> int:
        return int(self.handle)

    def copy_to_device(self, dst: int, src: int, nbytes: int) -> None:
        cudart, _, _ = bindings()
        check(cudart.cudaMemcpyAsync(dst, src, nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.handle),
              f"cudaMemcpyAsync(host->device, {nbytes} bytes)")

    def copy_to_host(self, dst: int, src: int, nbytes: int) -> None:
        cudart, _, _ = bindings()
        check(cudart.cudaMemcpyAsync(dst, src, nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.handle),
              f"cudaMemcpyAsync(device->host, {nbytes} bytes)")

    def copy_on_device(self, dst: int, src: int, nbytes: int) -> None:
        cudart, _, _ = bindings()
        check(cudart.cudaMemcpyAsync(dst, src, nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice, self.handle),
              f"cudaMemcpyAsync(device->device, {nbytes} bytes)")

    def synchronize(self) -> None:
        cudart, _, _ = bindings()
        check(cudart.cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def destroy(self) -> None:
        if self.handle is not None:
            cudart, _, _ = bindings()
            handle, self.handle = self.handle, None
            use_device(self.device)
            check(cudart.cudaStreamDestroy(handle), "cudaStreamDestroy")


class GraphExec:
    """A CUDA graph captured from the work `record(stream)` enqueues on `stream`, ready to replay."""

    def __init__(self, stream: Stream, record: Callable[[Stream], object]):
        cudart, _, _ = bindings()
        self.device = stream.device
        # Thread-local capture: other threads may keep calling CUDA (allocating, launching) meanwhile.
        check(cudart.cudaStreamBeginCapture(stream.handle, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
              "cudaStreamBeginCapture")
        try:
            record(stream)
        finally:
            graph = check(cudart.cudaStreamEndCapture(stream.handle), "cudaStreamEndCapture")
        try:
            self.handle = check(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        finally:
            check(cudart.cudaGraphDestroy(graph), "cudaGraphDestroy")

    def launch(self, stream: Stream) -> None:
        cudart, _, _ = bindings()
        check(cudart.cudaGraphLaunch(self.handle, stream.handle), "cudaGraphLaunch")

    def destroy(self) -> None:
        if self.handle is not None:
            cudart, _, _ = bindings()
            handle, self.handle = self.handle, None
            use_device(self.device)
            check(cudart.cudaGraphExecDestroy(handle), "cudaGraphExecDestroy")

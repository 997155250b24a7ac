"""Thin, checked wrappers over cuda-python (cuda.bindings): devices, memory, streams, graphs, and the NVRTC-
compiled preprocessing kernel (antialiased resize of the shortest side + center crop + batch packing).

Every CUDA call goes through `check`, which raises CudaError naming the call and CUDA's own error name.
cuda-python is imported on first use; without it, BackendUnavailable says how to install it. The kernel's
arithmetic is defined, and tested on CPU, by its numpy twin in clip_rt/resample.py.

Threads: all work uses the device's primary context (the runtime API's), made current on the calling
thread by `use_device`; a Stream, buffer or graph may be used by one thread at a time.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Sequence

import numpy as np

from .errors import BackendUnavailable, ClipRtError, InputError, missing_dependency
from .resample import DESC_FIELDS, PRECISION_BITS, pack_tables, plan_frame

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


def _error_name(err: Any) -> str:
    cudart, driver, nvrtc = bindings()
    try:
        if isinstance(err, cudart.cudaError_t):
            return f"{cudart.cudaGetErrorName(err)[1].decode()}: {cudart.cudaGetErrorString(err)[1].decode()}"
        if isinstance(err, driver.CUresult):
            return f"{driver.cuGetErrorName(err)[1].decode()}: {driver.cuGetErrorString(err)[1].decode()}"
        if isinstance(err, nvrtc.nvrtcResult):
            return nvrtc.nvrtcGetErrorString(err)[1].decode()
    except Exception:  # noqa: BLE001 - naming the error must never hide it
        pass
    return repr(err)


def _ok(err: Any) -> bool:
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
    if not _ok(status):
        raise CudaError(f"{call} failed: {_error_name(status)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


# -- devices ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceInfo:
    """What identifies a GPU for engine compatibility."""

    index: int
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
    if err == cudart.cudaError_t.cudaErrorNoDevice or (_ok(err) and count == 0):
        raise BackendUnavailable("no CUDA device found (cudaGetDeviceCount reports none); the tensorrt backend and "
                                 "GPU preprocessing need an NVIDIA GPU")
    if err == cudart.cudaError_t.cudaErrorInsufficientDriver:
        raise BackendUnavailable("no CUDA device found: no NVIDIA driver is loaded, or it is older than this "
                                 f"cuda-python needs ({_error_name(err)}); install or update the NVIDIA driver")
    if not _ok(err):
        raise BackendUnavailable(f"no usable CUDA device: cudaGetDeviceCount failed ({_error_name(err)})")
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
    if index not in done:  # driver-API calls (the kernel launch) need the primary context created and current
        check(cudart.cudaFree(0), "cudaFree(0) (primary context initialization)")
        done.add(index)


# -- memory and streams ---------------------------------------------------------------------------------------
class DeviceBuffer:
    """cudaMalloc'd device memory of `nbytes` (at least 1 byte)."""

    def __init__(self, nbytes: int):
        cudart, _, _ = bindings()
        self.nbytes = max(int(nbytes), 1)
        self.ptr: int = int(check(cudart.cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes})"))

    def free(self) -> None:
        if self.ptr:
            cudart, _, _ = bindings()
            ptr, self.ptr = self.ptr, 0
            check(cudart.cudaFree(ptr), "cudaFree")


class PinnedBuffer:
    """Page-locked host memory (cudaMallocHost) of `nbytes`, with numpy views for async copies."""

    def __init__(self, nbytes: int):
        cudart, _, _ = bindings()
        self.nbytes = max(int(nbytes), 1)
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
            check(cudart.cudaFreeHost(ptr), "cudaFreeHost")


class Stream:
    """A non-blocking CUDA stream (does not synchronize with the legacy default stream)."""

    def __init__(self) -> None:
        cudart, _, _ = bindings()
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

    def synchronize(self) -> None:
        cudart, _, _ = bindings()
        check(cudart.cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def destroy(self) -> None:
        if self.handle is not None:
            cudart, _, _ = bindings()
            handle, self.handle = self.handle, None
            check(cudart.cudaStreamDestroy(handle), "cudaStreamDestroy")


class GraphExec:
    """A CUDA graph captured from the work `record(stream)` enqueues on `stream`, ready to replay."""

    def __init__(self, stream: Stream, record: Callable[[Stream], object]):
        cudart, _, _ = bindings()
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
            check(cudart.cudaGraphExecDestroy(handle), "cudaGraphExecDestroy")


# -- the preprocessing kernel -------------------------------------------------------------------------------------
# One thread per output pixel (all 3 channels); blockIdx.y is the frame. The two separable passes of Pillow's
# resize are fused: for each source line the first pass needs, the thread computes that pass's value, rounds and
# clips it to uint8 exactly as Pillow stores its intermediate image, and feeds it to the second pass. Tables and
# descriptors are built on the host by clip_rt.resample (pack_tables); the numpy twin there (twin_packed) is this
# kernel's reference. All arithmetic is int32, as in Pillow; resample.axis_table checks it cannot overflow.
KERNEL_NAME = "resize_crop_pack"
KERNEL_SOURCE = r"""
#define PRECISION_BITS __PRECISION_BITS__
#define DESC_FIELDS __DESC_FIELDS__

__device__ __forceinline__ int clip8(int acc) {
    int v = acc >> PRECISION_BITS;  /* arithmetic shift: floor, as Pillow's clip8 lookup */
    return v < 0 ? 0 : (v > 255 ? 255 : v);
}

extern "C" __global__ void resize_crop_pack(
    const unsigned char* __restrict__ pixels,  /* frames back to back, each [H, W, 3] */
    const long long* __restrict__ desc,        /* [B, DESC_FIELDS]: offset, H, W, table offset, ky, kx, vfirst */
    const int* __restrict__ tables,            /* per frame: row start/count/weights, col start/count/weights */
    unsigned char* __restrict__ out,           /* [B, S, S, 3]: the image engine's input */
    int size)
{
    const int frame = blockIdx.y;
    const int pixel = blockIdx.x * blockDim.x + threadIdx.x;
    if (pixel >= size * size) return;
    const int oy = pixel / size;
    const int ox = pixel - oy * size;

    const long long* d = desc + (long long)frame * DESC_FIELDS;
    const unsigned char* img = pixels + d[0];
    const long long width = d[2];
    const int* t = tables + d[3];
    const int ky = (int)d[4];
    const int kx = (int)d[5];
    const int* row_start = t;
    const int* row_count = t + size;
    const int* row_w = t + 2 * size;
    const int* col_start = row_w + size * ky;
    const int* col_count = col_start + size;
    const int* col_w = col_count + size;

    const int y0 = row_start[oy], ny = row_count[oy];
    const int x0 = col_start[ox], nx = col_count[ox];
    const int* wy = row_w + oy * ky;
    const int* wx = col_w + ox * kx;
    const int half = 1 << (PRECISION_BITS - 1);
    int a0 = half, a1 = half, a2 = half;

    if (d[6] == 0) {
        /* horizontal first: each needed source row -> one clipped horizontal value, then the vertical taps */
        for (int r = 0; r < ny; ++r) {
            const unsigned char* p = img + ((long long)(y0 + r) * width + x0) * 3;
            int h0 = half, h1 = half, h2 = half;
            for (int c = 0; c < nx; ++c) {
                const int w = wx[c];
                h0 += (int)p[3 * c] * w;
                h1 += (int)p[3 * c + 1] * w;
                h2 += (int)p[3 * c + 2] * w;
            }
            const int w = wy[r];
            a0 += clip8(h0) * w;
            a1 += clip8(h1) * w;
            a2 += clip8(h2) * w;
        }
    } else {
        /* vertical first: each needed source column -> one clipped vertical value, then the horizontal taps */
        for (int c = 0; c < nx; ++c) {
            const unsigned char* p = img + ((long long)y0 * width + x0 + c) * 3;
            int v0 = half, v1 = half, v2 = half;
            for (int r = 0; r < ny; ++r) {
                const int w = wy[r];
                const unsigned char* q = p + (long long)r * width * 3;
                v0 += (int)q[0] * w;
                v1 += (int)q[1] * w;
                v2 += (int)q[2] * w;
            }
            const int w = wx[c];
            a0 += clip8(v0) * w;
            a1 += clip8(v1) * w;
            a2 += clip8(v2) * w;
        }
    }
    unsigned char* o = out + ((long long)frame * size * size + pixel) * 3;
    o[0] = (unsigned char)clip8(a0);
    o[1] = (unsigned char)clip8(a1);
    o[2] = (unsigned char)clip8(a2);
}
""".replace("__PRECISION_BITS__", str(PRECISION_BITS)).replace("__DESC_FIELDS__", str(DESC_FIELDS))

THREADS_PER_BLOCK = 256


def compile_kernel(source: str, name: str, arch: str) -> bytes:
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
        status = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)[0]
        if not _ok(status):
            size = check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
            log = b" " * size
            check(nvrtc.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
            raise CudaError(f"NVRTC could not compile {name} for {arch} ({_error_name(status)}):\n"
                            f"{log.decode(errors='replace').strip()}")
        size = check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
        cubin = b" " * size
        check(nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        return cubin
    finally:
        check(nvrtc.nvrtcDestroyProgram(prog), "nvrtcDestroyProgram")


class ResizeKernel:
    """The preprocessing kernel compiled for one device and loaded into its primary context."""

    def __init__(self, device: DeviceInfo):
        _, driver, _ = bindings()
        use_device(device.index)
        self.device = device
        self.cubin = compile_kernel(KERNEL_SOURCE, KERNEL_NAME, f"sm_{device.major}{device.minor}")
        self._module = check(driver.cuModuleLoadData(np.char.array(self.cubin)), "cuModuleLoadData")
        self._function = check(driver.cuModuleGetFunction(self._module, KERNEL_NAME.encode()), "cuModuleGetFunction")

    def launch(self, pixels: int, desc: int, tables: int, out: int, batch: int, size: int, stream: Stream) -> None:
        """Enqueue the kernel for `batch` frames: device pointers in, uint8 [batch, size, size, 3] at `out`."""
        _, driver, _ = bindings()
        if batch < 1:
            return
        blocks = (size * size + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK
        args = ((pixels, desc, tables, out, size),
                (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int))
        check(driver.cuLaunchKernel(self._function, blocks, batch, 1, THREADS_PER_BLOCK, 1, 1, 0, stream.handle,
                                    args, 0), f"cuLaunchKernel({KERNEL_NAME}, {batch} frames)")

    def unload(self) -> None:
        if self._module is not None:
            _, driver, _ = bindings()
            module, self._module = self._module, None
            check(driver.cuModuleUnload(module), "cuModuleUnload")


class FrameStager:
    """Growable pinned + device buffers that carry a batch of frames and their tables to the kernel.

    stage() packs frames of any sizes (uint8 [H, W, 3]) into pinned memory, copies them to the device on
    `stream` and launches the kernel into `out` (a device pointer to uint8 [B, S, S, 3]). Buffers grow to the
    largest batch seen and are reused; one FrameStager serves one thread at a time.
    """

    def __init__(self, kernel: ResizeKernel, resize: int, size: int, filter: str):
        self.kernel, self.resize, self.size, self.filter = kernel, resize, size, filter
        self._host: PinnedBuffer | None = None
        self._dev: DeviceBuffer | None = None

    def _reserve(self, nbytes: int) -> tuple[PinnedBuffer, DeviceBuffer]:
        if self._host is None or self._dev is None or self._host.nbytes < nbytes:
            self.free()
            grown = max(nbytes, 2 * (self._dev.nbytes if self._dev else 0))
            self._host, self._dev = PinnedBuffer(grown), DeviceBuffer(grown)
        return self._host, self._dev

    def stage(self, frames: Sequence[np.ndarray], out: int, stream: Stream) -> None:
        plans = [plan_frame(f.shape[0], f.shape[1], self.resize, self.size, self.filter) for f in frames]
        desc, tables = pack_tables(plans)  # int64 [B, 8], int32 [...]
        pix_bytes = int(sum(f.nbytes for f in frames))
        desc_off = _align(pix_bytes)
        tab_off = _align(desc_off + desc.nbytes)
        total = tab_off + tables.nbytes
        host, dev = self._reserve(total)
        # Wait for the previous batch's copies out of the pinned buffer before overwriting it.
        stream.synchronize()
        offset = 0
        for f in frames:
            host.view(np.uint8, f.nbytes, offset)[:] = np.ascontiguousarray(f).reshape(-1)
            offset += f.nbytes
        host.view(np.int64, desc.size, desc_off)[:] = desc.reshape(-1)
        host.view(np.int32, tables.size, tab_off)[:] = tables
        stream.copy_to_device(dev.ptr, host.ptr, total)
        self.kernel.launch(dev.ptr, dev.ptr + desc_off, dev.ptr + tab_off, out, len(frames), self.size, stream)

    def free(self) -> None:
        for buf in (self._host, self._dev):
            if buf is not None:
                buf.free()
        self._host = self._dev = None


def _align(n: int, to: int = 256) -> int:
    return (n + to - 1) // to * to


def check_frames(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Validate decoded frames for the kernel: a non-empty list of uint8 [H, W, 3] arrays."""
    out = []
    for i, f in enumerate(frames):
        a = np.asarray(f)
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
            raise InputError(f"frame {i}: expected a decoded RGB uint8 [H, W, 3] array, got {a.dtype} {list(a.shape)}")
        out.append(a)
    return out


def gpu_resize_crop(frames: Sequence[np.ndarray], resize: int, size: int, filter: str = "bicubic",
                    device: str = "cuda") -> np.ndarray:
    """Run only the preprocessing kernel: frames of any sizes -> uint8 [B, size, size, 3] on the host.

    For tests and benchmarks of the kernel against its numpy twin (resample.twin_packed); the tensorrt
    backend's encode_frames runs the same kernel straight into the engine's input buffer.
    """
    frames = check_frames(frames)
    info = require_device(parse_cuda_device(device))
    kernel = ResizeKernel(info)
    stream = Stream()
    stager = FrameStager(kernel, resize, size, filter)
    n_out = len(frames) * size * size * 3
    out_dev, out_host = DeviceBuffer(n_out), PinnedBuffer(n_out)
    try:
        stager.stage(frames, out_dev.ptr, stream)
        stream.copy_to_host(out_host.ptr, out_dev.ptr, n_out)
        stream.synchronize()
        return out_host.view(np.uint8, n_out).reshape(len(frames), size, size, 3).copy()
    finally:
        stager.free()
        out_dev.free()
        out_host.free()
        stream.destroy()
        kernel.unload()

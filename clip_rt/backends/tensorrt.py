"""TensorRT backend: the package's serialized engines run with cuda-python streams and memory.

    encode_images(pixels)      uint8 [B, S, S, 3]               -> float32 [B, D]
    encode_texts(input_ids)    int32 [B, L]                     -> float32 [B, D]
    encode_frames(frames)      list of uint8 [H, W, 3], any size -> float32 [B, D]  (GPU resize + crop kernel)

Engines are chosen from the manifest by encoder, precision, TensorRT version and GPU; one built for another
TensorRT or GPU, or from an older ONNX of the package, is refused with the command that rebuilds it. Nothing
falls back: a missing TensorRT, CUDA device or engine raises BackendUnavailable / PackageError.

Threads: each engine keeps a pool of `contexts` lanes (stream, pinned and device I/O buffers, one activation
buffer, reused across calls). A call takes a free lane, or waits for one; a lane serves one thread at a time,
so up to `contexts` calls per encoder run concurrently on the GPU. With cuda_graphs=True each lane captures one
CUDA graph per input shape (each with its own execution context), up to `max_graphs`, least recently used out.
All execution contexts of a lane share the lane's activation memory (ExecutionContextAllocationStrategy.
USER_MANAGED + set_device_memory, TensorRT >= 10.1): a lane runs one context at a time on its one stream, so
memory grows with lanes, not with lanes x captured shapes (what matters on 8 GB Jetsons).

Static engines (DLA: min = opt = max profile) take exactly their built shape: batches are split and the last
chunk padded with copies of its first row, texts are padded with the tokenizer's pad id after their EOT
(exact for CLIP's causal text tower, which reads the EOT position); padded rows are dropped from the output.
"""

from __future__ import annotations

import collections
import queue
import threading
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..contract import EOT_ID, EncoderContract, check_precision
from ..errors import BackendUnavailable, EngineMismatch, InputError, PackageError
from ..gpu.engines import engine_problem, import_tensorrt, last_errors, rebuild_command, select_engine, trt_logger

if TYPE_CHECKING:
    import tensorrt as trt

    from ..gpu.cuda import DeviceBuffer, DeviceInfo, GraphExec
    from ..gpu.kernel import FrameStager, ResizeKernel
    from ..package import Package

__all__ = ["TensorRTBackend", "LoadedEngine", "open_backend", "fit_to_profile", "pad_to_shape", "import_tensorrt",
           "trt_logger", "last_errors", "rebuild_command", "select_engine", "engine_problem"]


def pad_to_shape(array: np.ndarray, shape: tuple[int, ...], pad_id: int) -> np.ndarray:
    """A chunk for a static engine: `array` (batch <= shape[0], other axes <= shape's) grown to exactly `shape`.
    Extra rows repeat the first row; a shorter text (int32 [B, L]) is padded with `pad_id` after its EOT."""
    if array.shape == shape:
        return array
    out = np.empty(shape, dtype=array.dtype)  # [shape] of the engine
    if array.ndim == 2:  # texts: ids, then padding
        out[...] = pad_id
        out[:array.shape[0], :array.shape[1]] = array
    else:
        out[:array.shape[0]] = array
    out[array.shape[0]:] = out[0]
    return out


def fit_to_profile(array: np.ndarray, lo: tuple[int, ...], hi: tuple[int, ...], pad_id: int, encoder: str,
                   rebuild: str) -> list[tuple[np.ndarray, int]]:
    """Split a contract-checked input into chunks an engine's profile [lo, hi] takes: [(chunk, real rows)]. A static
    profile (lo == hi) gets every chunk padded to its one shape (pad_to_shape); InputError naming `rebuild` when an
    axis is outside the profile."""
    static = lo == hi
    for axis in range(1, array.ndim):
        if not (array.shape[axis] <= hi[axis] if static else lo[axis] <= array.shape[axis] <= hi[axis]):
            raise InputError(f"{encoder} input shape {list(array.shape)} is outside the engine's profile {list(lo)}.."
                             f"{list(hi)} (axis {axis}); rebuild the engine with a larger range: {rebuild}")
    chunks = []
    for start in range(0, array.shape[0], hi[0]):  # batches above the profile run in chunks
        chunk = np.ascontiguousarray(array[start:start + hi[0]])
        chunks.append((pad_to_shape(chunk, hi, pad_id) if static else chunk, len(chunk)))
    return chunks


# -- one engine and its lanes -------------------------------------------------------------------------------------
class _Lane:
    """One stream, its I/O buffers (pinned host + device) and activation memory, and the execution contexts that
    share them; used by one thread at a time."""

    def __init__(self, owner: "LoadedEngine"):
        from ..gpu.cuda import DeviceBuffer, PinnedBuffer, Stream

        self.owner = owner
        self.stream = Stream()
        self.activations: DeviceBuffer = DeviceBuffer(owner.activation_bytes)
        self.context: trt.IExecutionContext | None = owner.new_context(self.activations)
        self.in_dev, self.out_dev = DeviceBuffer(owner.max_in_bytes), DeviceBuffer(owner.max_out_bytes)
        self.in_host, self.out_host = PinnedBuffer(owner.max_in_bytes), PinnedBuffer(owner.max_out_bytes)
        owner.bind(self.context, self.in_dev.ptr, self.out_dev.ptr)
        self.shape: tuple[int, ...] | None = None  # input shape last set on self.context
        self.graphs: collections.OrderedDict[tuple[int, ...], tuple[Any, GraphExec]] = collections.OrderedDict()
        self.stager: FrameStager | None = None

    def run(self, array: np.ndarray) -> np.ndarray:
        """array (contract dtype, a shape inside the engine's profile) -> float32 [B, D] on the host."""
        o = self.owner
        assert self.context is not None, "lane destroyed"
        self.in_host.view(array.dtype, array.size)[:] = array.reshape(-1)
        if o.cuda_graphs:
            _, graph = self._graph(array.shape)
            graph.launch(self.stream)
        else:
            self.shape = o.enqueue(self.context, self.shape, array.shape, self.stream, self.in_host.ptr,
                                   self.in_dev.ptr, array.nbytes, self.out_host.ptr, self.out_dev.ptr)
        self.stream.synchronize()
        return self._result(array.shape[0])

    def run_frames(self, frames: Sequence[np.ndarray], stager: "FrameStager") -> np.ndarray:
        """Decoded frames -> kernel -> engine input on the device (no host copy of pixels) -> float32 [B, D].
        A static engine runs its whole built batch; the rows past len(frames) hold stale pixels and are dropped."""
        o = self.owner
        assert self.context is not None, "lane destroyed"
        stager.stage(frames, self.in_dev.ptr, self.stream)
        batch = o.max_batch if o.static else len(frames)
        shape = (batch, *o.contract.shape_for(batch=batch)[1:])
        self.shape = o.enqueue(self.context, self.shape, shape, self.stream, 0, 0, 0, self.out_host.ptr,
                               self.out_dev.ptr)
        self.stream.synchronize()
        return self._result(len(frames))

    def _result(self, batch: int) -> np.ndarray:
        dim = self.owner.embed_dim
        return self.out_host.view(np.float32, batch * dim).reshape(batch, dim).copy()  # [B, D] float32

    def _graph(self, shape: tuple[int, ...]) -> tuple[Any, "GraphExec"]:
        """The graph for this input shape, captured on first use with its own execution context (on the lane's
        activation memory)."""
        from ..gpu.cuda import GraphExec

        if shape in self.graphs:
            self.graphs.move_to_end(shape)
            return self.graphs[shape]
        o = self.owner
        if len(self.graphs) >= o.max_graphs:
            _, (old_ctx, old_graph) = self.graphs.popitem(last=False)
            old_graph.destroy()
            del old_ctx
        ctx = o.new_context(self.activations)
        o.bind(ctx, self.in_dev.ptr, self.out_dev.ptr)
        nbytes = int(np.prod(shape)) * o.in_dtype.itemsize
        args = (self.in_host.ptr, self.in_dev.ptr, nbytes, self.out_host.ptr, self.out_dev.ptr)
        # One eager run first: TensorRT finishes shape-dependent setup outside the capture.
        o.enqueue(ctx, None, shape, self.stream, *args)
        self.stream.synchronize()
        graph = GraphExec(self.stream, lambda s: o.enqueue(ctx, shape, shape, s, *args))
        self.graphs[shape] = (ctx, graph)
        return ctx, graph

    def destroy(self) -> None:
        self.stream.synchronize()
        for _, graph in self.graphs.values():
            graph.destroy()
        self.graphs.clear()  # drops the graphs' execution contexts
        self.context = None  # before its activation memory goes
        if self.stager is not None:
            self.stager.free()
        for buf in (self.in_dev, self.out_dev, self.in_host, self.out_host, self.activations):
            buf.free()
        self.stream.destroy()


def _dtype_name(dtype: "trt.DataType") -> str:
    import tensorrt as trt

    try:
        return np.dtype(trt.nptype(dtype)).name
    except TypeError:  # TensorRT types without a numpy twin (bf16, fp8, int4)
        return str(dtype)


class LoadedEngine:
    """A deserialized engine for one encoder, its I/O checked against the contract, and its lane pool."""

    def __init__(self, runtime: "trt.Runtime", path: Path, contract: EncoderContract, meta: dict[str, Any],
                 contexts: int, cuda_graphs: bool, max_graphs: int, pad_id: int = EOT_ID):
        self.path, self.contract, self.meta, self.pad_id = path, contract, meta, pad_id
        self.cuda_graphs, self.max_graphs = cuda_graphs, max(1, max_graphs)
        dla = meta.get("build", {}).get("dla_core")
        if dla is not None:
            runtime.DLA_core = int(dla)
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise EngineMismatch(f"TensorRT could not load {path}{last_errors()}; rebuild it with: "
                                 f"{rebuild_command(path.parent.parent, meta.get('precision', '?'), meta.get('build', {}))}")
        self.engine: trt.ICudaEngine | None = engine
        self.in_name, self.out_name = contract.input.name, contract.output.name
        self._check_io(engine)
        lo, _, hi = engine.get_tensor_profile_shape(self.in_name, 0)  # Dims: len() and [i], like a tuple
        self.min_shape = tuple(int(lo[i]) for i in range(len(lo)))
        self.max_shape = tuple(int(hi[i]) for i in range(len(hi)))
        self.static = self.min_shape == self.max_shape  # DLA engines: exactly one input shape
        self.in_dtype = np.dtype(contract.input.dtype)
        self.embed_dim = int(contract.output.shape[1])
        self.max_batch = self.max_shape[0]
        self.max_in_bytes = int(np.prod(self.max_shape)) * self.in_dtype.itemsize
        self.max_out_bytes = self.max_batch * self.embed_dim * 4
        # Activation memory of one context at the profile's largest shapes. The V2 size (TensorRT >= 10.1; the only
        # one in 11) includes weight-streaming scratch memory.
        self.activation_bytes = int(engine.device_memory_size_v2)
        self._limit = max(1, contexts)
        self._free: queue.LifoQueue[_Lane] = queue.LifoQueue()
        self._lanes: list[_Lane] = []
        self._lock = threading.Lock()

    def _check_io(self, e: "trt.ICudaEngine") -> None:
        import tensorrt as trt

        io = {e.get_tensor_name(i): (e.get_tensor_mode(e.get_tensor_name(i)), e.get_tensor_dtype(e.get_tensor_name(i)))
              for i in range(e.num_io_tensors)}
        want = {self.in_name: (trt.TensorIOMode.INPUT, self.contract.input.dtype),
                self.out_name: (trt.TensorIOMode.OUTPUT, self.contract.output.dtype)}
        got = {n: (m, _dtype_name(d)) for n, (m, d) in io.items()}
        if got != want:
            raise EngineMismatch(f"{self.path} has I/O {got}, but the {self.contract.encoder} contract needs {want}; "
                                 f"rebuild it with clip-rt build-engine")

    def new_context(self, activations: "DeviceBuffer") -> "trt.IExecutionContext":
        """An execution context whose activation memory is `activations` (the lane's; user-managed)."""
        import tensorrt as trt

        from ..gpu.cuda import CudaError

        assert self.engine is not None, "engine closed"
        ctx = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if ctx is None:
            raise CudaError(f"TensorRT could not create an execution context for {self.path.name}{last_errors()}")
        ctx.set_device_memory(activations.ptr, activations.nbytes)  # TensorRT >= 10.1: the V2 call, with the size
        return ctx

    def bind(self, ctx: "trt.IExecutionContext", in_ptr: int, out_ptr: int) -> None:
        if not (ctx.set_tensor_address(self.in_name, in_ptr) and ctx.set_tensor_address(self.out_name, out_ptr)):
            from ..gpu.cuda import CudaError

            raise CudaError(f"TensorRT refused the I/O addresses for {self.path.name}{last_errors()}")

    def enqueue(self, ctx: "trt.IExecutionContext", current: tuple[int, ...] | None, shape: tuple[int, ...],
                stream: Any, in_host: int, in_dev: int, in_nbytes: int, out_host: int, out_dev: int) -> tuple[int, ...]:
        """Enqueue [host->device input copy,] inference and the output copy on `stream`; returns the shape set."""
        from ..gpu.cuda import CudaError

        if current != shape and not ctx.set_input_shape(self.in_name, shape):
            raise CudaError(f"TensorRT refused input shape {shape} for {self.path.name}{last_errors()}")
        if in_nbytes:
            stream.copy_to_device(in_dev, in_host, in_nbytes)
        if not ctx.execute_async_v3(stream.ptr):
            raise CudaError(f"TensorRT execute_async_v3 failed for {self.path.name}{last_errors()}")
        stream.copy_to_host(out_host, out_dev, shape[0] * self.embed_dim * 4)
        return shape

    def fit(self, array: np.ndarray, rebuild: str) -> list[tuple[np.ndarray, int]]:
        """fit_to_profile with this engine's profile."""
        return fit_to_profile(array, self.min_shape, self.max_shape, self.pad_id, self.contract.encoder, rebuild)

    def acquire(self) -> _Lane:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if len(self._lanes) < self._limit:
                lane = _Lane(self)
                self._lanes.append(lane)
                return lane
        return self._free.get()  # every lane is busy: wait for one

    def release(self, lane: _Lane) -> None:
        self._free.put(lane)

    def close(self) -> None:
        """Free the lanes (the caller has made the engine's device current) and drop the engine."""
        for lane in self._lanes:
            lane.destroy()
        self._lanes.clear()
        self.engine = None


# -- the backend ------------------------------------------------------------------------------------------------------
class TensorRTBackend:
    """The package's TensorRT engines for one precision on one GPU."""

    name = "tensorrt"

    def __init__(self, trt_module: ModuleType, package: "Package", precision: str, device: "DeviceInfo",
                 contexts: int = 2, cuda_graphs: bool = False, max_graphs: int = 8):
        from ..gpu.cuda import use_device

        self.trt_version: str = trt_module.__version__
        self.package, self.precision, self.info = package, precision, device
        self.device = f"cuda:{device.index}"
        self.contexts, self.cuda_graphs = contexts, cuda_graphs
        use_device(device.index)
        self._runtime: trt.Runtime | None = trt_module.Runtime(trt_logger())
        tokenizer = package.manifest.get("tokenizer", {})
        pad_id = int(tokenizer.get("pad_id", tokenizer.get("eos_id", EOT_ID)))
        self._engines: dict[str, LoadedEngine] = {}
        self._missing: dict[str, PackageError] = {}
        for encoder in ("image", "text"):
            try:
                art = select_engine(package, encoder, precision, self.trt_version, device)
            except EngineMismatch:
                raise
            except PackageError as e:  # no engine at all for this encoder: reported when it is used
                self._missing[encoder] = e
                continue
            path = package.path(art)  # sha256-verified
            self._engines[encoder] = LoadedEngine(self._runtime, path, package.contract(encoder),
                                                  art.extra.get("engine", {}), contexts, cuda_graphs, max_graphs,
                                                  pad_id)
        if not self._engines:
            raise self._missing["image"]
        self._kernel: ResizeKernel | None = None
        self._kernel_lock = threading.Lock()

    def _engine(self, encoder: str) -> LoadedEngine:
        if encoder in self._missing:
            raise self._missing[encoder]
        return self._engines[encoder]

    def _run(self, encoder: str, array: np.ndarray) -> np.ndarray:
        from ..gpu.cuda import use_device

        eng = self._engine(encoder)
        array = eng.contract.check_input(array)
        chunks = eng.fit(array, rebuild_command(self.package.root, self.precision, eng.meta.get("build", {})))
        if array.shape[0] == 0:
            return np.zeros((0, eng.embed_dim), np.float32)
        use_device(self.info.index)
        outs = []
        for chunk, rows in chunks:
            lane = eng.acquire()
            try:
                outs.append(lane.run(chunk)[:rows])
            finally:
                eng.release(lane)
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [B, S, S, 3] RGB crops -> float32 [B, D], L2-normalized."""
        return self._run("image", pixels)

    def encode_texts(self, input_ids: np.ndarray) -> np.ndarray:
        """int32 [B, L] token ids -> float32 [B, D], L2-normalized."""
        return self._run("text", input_ids)

    def encode_frames(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Decoded RGB frames, uint8 [H, W, 3] of any sizes -> float32 [B, D].

        One kernel resizes the shortest side (antialiased, Pillow's coefficients), center-crops and writes
        the batch straight into the image engine's input on the GPU; the package's preprocessing settings
        decide the sizes and the filter."""
        from ..gpu.cuda import use_device
        from ..gpu.kernel import FrameStager, ResizeKernel, check_frames
        from ..gpu.resample import FILTERS
        from ..preprocess import PreprocessConfig

        eng = self._engine("image")
        frames = check_frames(frames)
        if not frames:
            return np.zeros((0, eng.embed_dim), np.float32)
        cfg = PreprocessConfig.from_manifest(self.package.preprocess)
        if cfg.interpolation not in FILTERS:
            raise BackendUnavailable(f"GPU preprocessing reproduces {', '.join(FILTERS)} resizing; this package uses "
                                     f"{cfg.interpolation!r}. Use preprocess='cpu'")
        use_device(self.info.index)
        with self._kernel_lock:
            if self._kernel is None:
                self._kernel = ResizeKernel(self.info)
        outs = []
        for start in range(0, len(frames), eng.max_batch):
            lane = eng.acquire()
            try:
                if lane.stager is None:
                    lane.stager = FrameStager(self._kernel, cfg.resize, cfg.image_size, cfg.interpolation)
                outs.append(lane.run_frames(frames[start:start + eng.max_batch], lane.stager))
            finally:
                eng.release(lane)
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "precision": self.precision, "device": self.device, "gpu": self.info.name,
                "compute_capability": self.info.compute_capability, "tensorrt": self.trt_version,
                "engines": {e: eng.path.name for e, eng in self._engines.items()},
                "static_shapes": {e: list(eng.max_shape) for e, eng in self._engines.items() if eng.static},
                "missing": sorted(self._missing), "contexts_per_engine": self.contexts,
                "cuda_graphs": self.cuda_graphs,
                "activation_mib_per_lane": {e: round(eng.activation_bytes / 2**20, 1)
                                            for e, eng in self._engines.items()},
                "threads": f"pool of {self.contexts} lanes per engine, one thread each"}

    def close(self) -> None:
        """Free every GPU resource, from any thread (the backend's device is made current first). No call may be
        running."""
        from ..gpu.cuda import use_device

        if self._runtime is None:
            return
        use_device(self.info.index)
        for eng in self._engines.values():
            eng.close()
        self._engines.clear()
        if self._kernel is not None:
            self._kernel.unload()
            self._kernel = None
        self._runtime = None

    def __enter__(self) -> "TensorRTBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_backend(package: "Package", precision: str = "fp16", device: str = "cuda", threads: int | None = None,
                 contexts: int = 2, cuda_graphs: bool = False, max_graphs: int = 8,
                 **options: Any) -> TensorRTBackend:
    """The package's TensorRT engines for `precision` on `device` ("cuda" or "cuda:N").

    contexts: lanes (stream, buffers, activation memory) per engine, i.e. concurrent calls.
    cuda_graphs: replay one captured CUDA graph per input shape (up to max_graphs per lane).
    threads: accepted for a uniform load() signature; host threads do not apply to TensorRT.
    Checks, in order: TensorRT importable, cuda-python importable, a CUDA device, then the engines.
    """
    trt_module = import_tensorrt()
    from ..gpu.cuda import bindings, parse_cuda_device, require_device

    bindings()
    cuda_like = device == "cuda" or device.startswith("cuda:")
    info = require_device(parse_cuda_device(device) if cuda_like else 0)  # "no CUDA device" comes first
    if not cuda_like:
        raise BackendUnavailable(f"the tensorrt backend runs on a CUDA device, not {device!r}: pass device='cuda' "
                                 f"(on the command line: --device cuda)")
    if options:
        raise InputError(f"unknown tensorrt backend option(s): {', '.join(sorted(options))}")
    if contexts < 1 or max_graphs < 1:
        raise InputError(f"contexts and max_graphs must be >= 1, got {contexts} and {max_graphs}")
    return TensorRTBackend(trt_module, package, check_precision(precision), info, contexts, cuda_graphs, max_graphs)

"""TensorRT backend: the package's serialized engines run with cuda-python streams and memory.

    encode_images(pixels)      uint8 [B, S, S, 3]               -> float32 [B, D]
    encode_texts(input_ids)    int32 [B, L]                     -> float32 [B, D]
    encode_frames(frames)      list of uint8 [H, W, 3], any size -> float32 [B, D]  (GPU resize + crop kernel)

Engines are chosen from the manifest by encoder, precision, TensorRT version and GPU; one built for another
TensorRT or GPU, or from an older ONNX of the package, is refused with the command that rebuilds it. Nothing
falls back: a missing TensorRT, CUDA device or engine raises BackendUnavailable / PackageError.

Threads: each engine keeps a pool of `contexts` lanes (execution context + stream + pinned and device
buffers, reused across calls). A call takes a free lane, or waits for one; a lane serves one thread at a
time, so up to `contexts` calls per encoder run concurrently on the GPU. With cuda_graphs=True each lane
captures one CUDA graph (with its own execution context) per input shape, up to `max_graphs`, least
recently used first out.
"""

from __future__ import annotations

import collections
import queue
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..contract import EncoderContract, check_precision
from ..errors import BackendUnavailable, EngineMismatch, InputError, PackageError, missing_dependency

if TYPE_CHECKING:
    from ..cuda import DeviceInfo, FrameStager, GraphExec, ResizeKernel
    from ..package import Artifact, Package


# -- TensorRT import and logging ------------------------------------------------------------------------------
def import_tensorrt(purpose: str = "the tensorrt backend") -> Any:
    """The tensorrt module, or BackendUnavailable with the install hint."""
    try:
        import tensorrt as trt
    except ImportError:
        raise missing_dependency("tensorrt", "gpu", purpose) from None
    return trt


_LOGGER: Any = None
_LOGGER_LOCK = threading.Lock()


def trt_logger(trt: Any) -> Any:
    """One process-wide TensorRT logger: warnings and errors to stderr; recent errors kept for messages."""
    global _LOGGER
    with _LOGGER_LOCK:
        if _LOGGER is None:
            class _Logger(trt.ILogger):
                def __init__(self) -> None:
                    trt.ILogger.__init__(self)
                    self.errors: collections.deque[str] = collections.deque(maxlen=8)

                def log(self, severity: Any, msg: str) -> None:
                    level = int(severity)  # pybind11 enums convert to int; they need not support "<"
                    if level <= int(trt.ILogger.Severity.ERROR):
                        self.errors.append(msg)
                    if level <= int(trt.ILogger.Severity.WARNING):
                        print(f"[TensorRT] {msg}", file=sys.stderr)

            _LOGGER = _Logger()
        return _LOGGER


def last_errors(trt: Any) -> str:
    errors = list(trt_logger(trt).errors)
    return f" (TensorRT: {errors[-1]})" if errors else ""


# -- engine metadata: what invalidates an engine ----------------------------------------------------------------
def rebuild_command(root: Path | str, precision: str, build: dict[str, Any]) -> str:
    """The build-engine command line that rebuilds an engine with its recorded flags."""
    cmd = [f"clip-rt build-engine {root} --precision {precision}"]
    for flag, key in (("--max-batch", "max_batch"), ("--opt-batch", "opt_batch"), ("--max-text-len", "max_text_len"),
                      ("--workspace-mib", "workspace_mib"), ("--dla-core", "dla_core"),
                      ("--builder-level", "builder_level"), ("--timing-cache", "timing_cache")):
        if build.get(key) is not None:
            cmd.append(f"{flag} {build[key]}")
    return " ".join(cmd)


def engine_problem(package: "Package", meta: dict[str, Any], trt_version: str, device: "DeviceInfo") -> str | None:
    """Why an engine cannot run here (built for another TensorRT, GPU or ONNX), or None."""
    problems = []
    if meta.get("tensorrt") != trt_version:
        problems.append(f"TensorRT {meta.get('tensorrt')} (this machine has {trt_version})")
    if meta.get("gpu") != device.name or meta.get("compute_capability") != device.compute_capability:
        problems.append(f"GPU {meta.get('gpu')} (compute capability {meta.get('compute_capability')}; this machine "
                        f"has {device.name}, {device.compute_capability})")
    source = meta.get("source", {})
    current = [a for a in package.artifacts if a.file == source.get("file")]
    if not current or current[-1].sha256 != source.get("sha256"):
        problems.append(f"an earlier {source.get('file')} (the package was re-exported since)")
    return "; ".join(problems) or None


def select_engine(package: "Package", encoder: str, precision: str, trt_version: str,
                  device: "DeviceInfo") -> "Artifact":
    """The newest engine artifact for (encoder, precision) that runs here; EngineMismatch naming the rebuild."""
    candidates = package.find(encoder, precision, "tensorrt")
    if not candidates:
        package.artifact(encoder, precision, "tensorrt")  # raises PackageError with the build-engine command
    reasons = []
    for art in reversed(candidates):
        meta = art.extra.get("engine", {})
        problem = engine_problem(package, meta, trt_version, device)
        if problem is None:
            return art
        reasons.append((art, meta, problem))
    art, meta, problem = reasons[0]
    raise EngineMismatch(f"{package.root / art.file} was built for {problem}; a TensorRT engine only runs with the "
                         f"TensorRT version and GPU it was built for. Rebuild it with: "
                         f"{rebuild_command(package.root, precision, meta.get('build', {}))}")


# -- one engine and its lanes -------------------------------------------------------------------------------------
class _Lane:
    """An execution context with its stream and I/O buffers (pinned host + device), used by one thread at a time."""

    def __init__(self, owner: "LoadedEngine"):
        from ..cuda import DeviceBuffer, PinnedBuffer, Stream

        self.owner = owner
        self.context = owner.new_context()
        self.stream = Stream()
        self.in_dev, self.out_dev = DeviceBuffer(owner.max_in_bytes), DeviceBuffer(owner.max_out_bytes)
        self.in_host, self.out_host = PinnedBuffer(owner.max_in_bytes), PinnedBuffer(owner.max_out_bytes)
        owner.bind(self.context, self.in_dev.ptr, self.out_dev.ptr)
        self.shape: tuple[int, ...] | None = None  # input shape last set on self.context
        self.graphs: collections.OrderedDict[tuple[int, ...], tuple[Any, GraphExec]] = collections.OrderedDict()
        self.stager: FrameStager | None = None

    def run(self, array: np.ndarray) -> np.ndarray:
        """array (contract dtype, batch <= engine max) -> float32 [B, D] on the host."""
        o = self.owner
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
        """Decoded frames -> kernel -> engine input on the device (no host copy of pixels) -> float32 [B, D]."""
        o = self.owner
        stager.stage(frames, self.in_dev.ptr, self.stream)
        shape = (len(frames), *o.contract.shape_for(batch=len(frames))[1:])
        self.shape = o.enqueue(self.context, self.shape, shape, self.stream, 0, 0, 0, self.out_host.ptr,
                               self.out_dev.ptr)
        self.stream.synchronize()
        return self._result(len(frames))

    def _result(self, batch: int) -> np.ndarray:
        dim = self.owner.embed_dim
        return self.out_host.view(np.float32, batch * dim).reshape(batch, dim).copy()  # [B, D] float32

    def _graph(self, shape: tuple[int, ...]) -> tuple[Any, "GraphExec"]:
        """The graph for this input shape, captured on first use with its own execution context."""
        from ..cuda import GraphExec

        if shape in self.graphs:
            self.graphs.move_to_end(shape)
            return self.graphs[shape]
        o = self.owner
        if len(self.graphs) >= o.max_graphs:
            _, (old_ctx, old_graph) = self.graphs.popitem(last=False)
            old_graph.destroy()
            del old_ctx
        ctx = o.new_context()
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
        if self.stager is not None:
            self.stager.free()
        for buf in (self.in_dev, self.out_dev, self.in_host, self.out_host):
            buf.free()
        self.stream.destroy()
        self.context = None


def _dtype_name(trt: Any, dtype: Any) -> str:
    try:
        return np.dtype(trt.nptype(dtype)).name
    except TypeError:  # TensorRT types without a numpy twin (bf16, fp8, int4)
        return str(dtype)


class LoadedEngine:
    """A deserialized engine for one encoder, its I/O checked against the contract, and its lane pool."""

    def __init__(self, trt: Any, runtime: Any, path: Path, contract: EncoderContract, meta: dict[str, Any],
                 contexts: int, cuda_graphs: bool, max_graphs: int):
        self.trt, self.path, self.contract, self.meta = trt, path, contract, meta
        self.cuda_graphs, self.max_graphs = cuda_graphs, max(1, max_graphs)
        dla = meta.get("build", {}).get("dla_core")
        if dla is not None:
            runtime.DLA_core = int(dla)
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise EngineMismatch(f"TensorRT could not load {path}{last_errors(trt)}; rebuild it with: "
                                 f"{rebuild_command(path.parent.parent, meta.get('precision', '?'), meta.get('build', {}))}")
        self.in_name, self.out_name = contract.input.name, contract.output.name
        self._check_io()
        lo, _, hi = self.engine.get_tensor_profile_shape(self.in_name, 0)
        self.min_shape, self.max_shape = tuple(int(d) for d in lo), tuple(int(d) for d in hi)
        self.in_dtype = np.dtype(contract.input.dtype)
        self.embed_dim = int(contract.output.shape[1])
        self.max_batch = self.max_shape[0]
        self.max_in_bytes = int(np.prod(self.max_shape)) * self.in_dtype.itemsize
        self.max_out_bytes = self.max_batch * self.embed_dim * 4
        self._limit = max(1, contexts)
        self._free: queue.LifoQueue[_Lane] = queue.LifoQueue()
        self._lanes: list[_Lane] = []
        self._lock = threading.Lock()

    def _check_io(self) -> None:
        trt, e = self.trt, self.engine
        io = {e.get_tensor_name(i): (e.get_tensor_mode(e.get_tensor_name(i)), e.get_tensor_dtype(e.get_tensor_name(i)))
              for i in range(e.num_io_tensors)}
        want = {self.in_name: (trt.TensorIOMode.INPUT, self.contract.input.dtype),
                self.out_name: (trt.TensorIOMode.OUTPUT, self.contract.output.dtype)}
        got = {n: (m, _dtype_name(trt, d)) for n, (m, d) in io.items()}
        if got != want:
            raise EngineMismatch(f"{self.path} has I/O {got}, but the {self.contract.encoder} contract needs {want}; "
                                 f"rebuild it with clip-rt build-engine")

    def new_context(self) -> Any:
        ctx = self.engine.create_execution_context()
        if ctx is None:
            from ..cuda import CudaError

            raise CudaError(f"TensorRT could not create an execution context for {self.path.name}{last_errors(self.trt)}")
        return ctx

    def bind(self, ctx: Any, in_ptr: int, out_ptr: int) -> None:
        if not (ctx.set_tensor_address(self.in_name, in_ptr) and ctx.set_tensor_address(self.out_name, out_ptr)):
            from ..cuda import CudaError

            raise CudaError(f"TensorRT refused the I/O addresses for {self.path.name}{last_errors(self.trt)}")

    def enqueue(self, ctx: Any, current: tuple[int, ...] | None, shape: tuple[int, ...], stream: Any, in_host: int,
                in_dev: int, in_nbytes: int, out_host: int, out_dev: int) -> tuple[int, ...]:
        """Enqueue [host->device input copy,] inference and the output copy on `stream`; returns the shape set."""
        from ..cuda import CudaError

        if current != shape and not ctx.set_input_shape(self.in_name, shape):
            raise CudaError(f"TensorRT refused input shape {shape} for {self.path.name}{last_errors(self.trt)}")
        if in_nbytes:
            stream.copy_to_device(in_dev, in_host, in_nbytes)
        if not ctx.execute_async_v3(stream.ptr):
            raise CudaError(f"TensorRT execute_async_v3 failed for {self.path.name}{last_errors(self.trt)}")
        stream.copy_to_host(out_host, out_dev, shape[0] * self.embed_dim * 4)
        return shape

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
        for lane in self._lanes:
            lane.destroy()
        self._lanes.clear()
        self.engine = None


# -- the backend ------------------------------------------------------------------------------------------------------
class TensorRTBackend:
    """The package's TensorRT engines for one precision on one GPU."""

    name = "tensorrt"

    def __init__(self, trt: Any, package: "Package", precision: str, device: "DeviceInfo", contexts: int = 2,
                 cuda_graphs: bool = False, max_graphs: int = 8):
        from ..cuda import use_device

        self.trt, self.package, self.precision, self.info = trt, package, precision, device
        self.device = f"cuda:{device.index}"
        self.contexts, self.cuda_graphs = contexts, cuda_graphs
        use_device(device.index)
        self._runtime = trt.Runtime(trt_logger(trt))
        self._engines: dict[str, LoadedEngine] = {}
        self._missing: dict[str, PackageError] = {}
        for encoder in ("image", "text"):
            try:
                art = select_engine(package, encoder, precision, trt.__version__, device)
            except EngineMismatch:
                raise
            except PackageError as e:  # no engine at all for this encoder: reported when it is used
                self._missing[encoder] = e
                continue
            path = package.path(art)  # sha256-verified
            self._engines[encoder] = LoadedEngine(trt, self._runtime, path, package.contract(encoder),
                                             art.extra.get("engine", {}), contexts, cuda_graphs, max_graphs)
        if not self._engines:
            raise self._missing["image"]
        self._kernel: ResizeKernel | None = None
        self._kernel_lock = threading.Lock()

    def _engine(self, encoder: str) -> LoadedEngine:
        if encoder in self._missing:
            raise self._missing[encoder]
        return self._engines[encoder]

    def _run(self, encoder: str, array: np.ndarray) -> np.ndarray:
        from ..cuda import use_device

        eng = self._engine(encoder)
        array = eng.contract.check_input(array)
        lo, hi = eng.min_shape, eng.max_shape
        for axis in range(1, array.ndim):
            if not lo[axis] <= array.shape[axis] <= hi[axis]:
                raise InputError(f"{encoder} input shape {list(array.shape)} is outside the engine's profile "
                                 f"{list(lo)}..{list(hi)} (axis {axis}); rebuild the engine with a larger range: "
                                 f"{rebuild_command(self.package.root, self.precision, eng.meta.get('build', {}))}")
        if array.shape[0] == 0:
            return np.zeros((0, eng.embed_dim), np.float32)
        use_device(self.info.index)
        outs = []
        for start in range(0, array.shape[0], eng.max_batch):  # batches above the profile run in chunks
            lane = eng.acquire()
            try:
                outs.append(lane.run(np.ascontiguousarray(array[start:start + eng.max_batch])))
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
        from ..cuda import FrameStager, ResizeKernel, check_frames, use_device
        from ..preprocess import PreprocessConfig
        from ..resample import FILTERS

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
                "compute_capability": self.info.compute_capability, "tensorrt": self.trt.__version__,
                "engines": {e: eng.path.name for e, eng in self._engines.items()},
                "missing": sorted(self._missing), "contexts_per_engine": self.contexts,
                "cuda_graphs": self.cuda_graphs,
                "threads": f"pool of {self.contexts} execution contexts per engine, one thread each"}

    def close(self) -> None:
        """Free every GPU resource. No call may be running."""
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

    contexts: execution contexts (with their streams and buffers) per engine, i.e. concurrent calls.
    cuda_graphs: replay one captured CUDA graph per input shape (up to max_graphs per context).
    threads: accepted for a uniform load() signature; host threads do not apply to TensorRT.
    Checks, in order: TensorRT importable, cuda-python importable, a CUDA device, then the engines.
    """
    trt = import_tensorrt()
    from ..cuda import bindings, parse_cuda_device, require_device

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
    return TensorRTBackend(trt, package, check_precision(precision), info, contexts, cuda_graphs, max_graphs)

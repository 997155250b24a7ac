"""TensorRT engines of a package, without running them: importing TensorRT (refusing its type stubs alone), the
process-wide logger, and which engine artifact may run here (TensorRT version, GPU, source ONNX) with the command
that rebuilds one that may not. The backend (clip_rt/backends/tensorrt.py) and the builder (export/engine.py) share
these; engine_problem and select_engine are metadata only and run without TensorRT.
"""

from __future__ import annotations

import collections
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..errors import BackendUnavailable, EngineMismatch, missing_dependency

if TYPE_CHECKING:
    import tensorrt as trt

    from ..package import Artifact, Package
    from .cuda import DeviceInfo


# -- TensorRT import and logging ------------------------------------------------------------------------------
def import_tensorrt(purpose: str = "the tensorrt backend") -> ModuleType:
    """The tensorrt module, or BackendUnavailable with the install hint.

    tensorrt-stubs (type stubs, in the dev extra for mypy) installs a `tensorrt/` folder of .pyi files only, which
    Python imports as an empty namespace package: that is not TensorRT either."""
    try:
        import tensorrt
    except ImportError:
        raise missing_dependency("tensorrt", "gpu", purpose) from None
    if not hasattr(tensorrt, "Builder"):
        raise BackendUnavailable(f"{purpose} needs the Python package 'tensorrt', which is not installed (only its "
                                 f"type stubs, tensorrt-stubs, are); install it with: pip install 'clip-rt[gpu]'")
    return tensorrt


_LOGGER: Any = None
_LOGGER_LOCK = threading.Lock()


def trt_logger() -> "trt.ILogger":
    """One process-wide TensorRT logger: warnings and errors to stderr; recent errors kept for messages."""
    global _LOGGER
    import tensorrt as trt

    with _LOGGER_LOCK:
        if _LOGGER is None:
            class _Logger(trt.ILogger):
                def __init__(self) -> None:
                    trt.ILogger.__init__(self)
                    self.errors: collections.deque[str] = collections.deque(maxlen=8)

                def log(self, severity: "trt.ILogger.Severity", msg: str) -> None:
                    level = int(severity)  # pybind11 enums convert to int; they need not support "<"
                    if level <= int(trt.ILogger.Severity.ERROR):
                        self.errors.append(msg)
                    if level <= int(trt.ILogger.Severity.WARNING):
                        print(f"[TensorRT] {msg}", file=sys.stderr)

            _LOGGER = _Logger()
        return _LOGGER  # type: ignore[no-any-return]


def last_errors() -> str:
    errors = list(trt_logger().errors)  # type: ignore[attr-defined]
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

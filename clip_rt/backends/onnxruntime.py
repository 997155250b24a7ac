"""ONNX Runtime backend: one InferenceSession per encoder, on CPU, CUDA or TensorRT execution providers.

    encode_images(pixels)    uint8 [B, S, S, 3] -> float32 [B, D]   (preprocessing is folded into image.onnx)
    encode_texts(input_ids)  int32 [B, L]       -> float32 [B, D]

The provider asked for is the provider that runs: after creating a session we read session.get_providers()
and refuse (BackendUnavailable) if ONNX Runtime quietly dropped the requested one. On a GPU, nodes must not
slip to the CPU either: ONNX Runtime always appends its CPU provider (get_providers() lists it), so GPU
sessions set the session config `session.disable_cpu_ep_fallback = "1"` (onnxruntime_session_options_config_keys.h:
session creation fails if any node is assigned to the CPU provider). InferenceSession.run is documented as safe
to call from several threads at once, so no lock is taken here.

ONNX Runtime's GPU build is the `onnxruntime-gpu` distribution, which installs the same `onnxruntime` module as
the CPU build clip-rt depends on; pip cannot express "instead of", so installing both leaves one folder with two
builds' files. GPU sessions refuse such a mixed install (mixed_install_problem) with the commands that fix it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..contract import EncoderContract, check_precision
from ..errors import BackendUnavailable, InputError
from .ort_options import SessionTuning, make_session_options, warm_up

if TYPE_CHECKING:
    import onnxruntime as ort

    from ..package import Package

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
# The CUDA provider needs CUDA and cuDNN libraries; the [cuda,cudnn] extras of onnxruntime-gpu bring them from pip.
# clip-rt[gpu] does not install it: onnxruntime-gpu has to replace the onnxruntime clip-rt depends on (see above).
GPU_INSTALL = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'onnxruntime-gpu[cuda,cudnn]'"
GPU_HINT = f"install ONNX Runtime's GPU build in place of the CPU one: {GPU_INSTALL} (clip-rt[gpu] brings TensorRT " \
           f"and cuda-python, not ONNX Runtime)"
NO_CPU_FALLBACK = "session.disable_cpu_ep_fallback"


def onnxruntime_distributions(path: Sequence[str] | None = None) -> dict[str, str]:
    """Installed distributions that provide the `onnxruntime` module: {name: version}, e.g. {"onnxruntime":
    "1.32.0"}. `path` limits the search to those folders (default: sys.path)."""
    found = {}
    for dist in metadata.distributions(path=list(path)) if path is not None else metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name == "onnxruntime" or name.startswith("onnxruntime-"):
            top = (dist.read_text("top_level.txt") or "").split()
            files = [str(f) for f in dist.files or []]
            if "onnxruntime" in top or any(f.startswith("onnxruntime/") for f in files):
                found[name] = dist.version
    return found


def mixed_install_problem(path: Sequence[str] | None = None) -> str | None:
    """Why this ONNX Runtime install cannot be trusted with a GPU provider (two builds in one `onnxruntime`
    folder), with the fix; None when one build is installed."""
    found = onnxruntime_distributions(path)
    if len(found) < 2:
        return None
    names = ", ".join(f"{n} {v}" for n, v in sorted(found.items()))
    return (f"{len(found)} ONNX Runtime builds are installed over each other ({names}): they share the onnxruntime "
            f"folder, so which files load is an accident of install order. Keep only the GPU build: {GPU_INSTALL}")


def gpu_session_options(tuning: SessionTuning = SessionTuning()) -> "ort.SessionOptions":
    """SessionOptions for the CUDA / TensorRT providers: `tuning` plus no CPU fallback (ONNX Runtime then fails
    at session creation instead of running the nodes the GPU providers do not take on the CPU)."""
    options = make_session_options(tuning)
    options.add_session_config_entry(NO_CPU_FALLBACK, "1")
    return options


@dataclass(frozen=True)
class SessionConfig:
    """Everything that shapes an InferenceSession. New tuning knobs go here and into make_session()."""

    threads: int | None = None  # intra_op_num_threads; None lets ONNX Runtime use one thread per physical core
    provider: str = "cpu"  # "cpu" | "cuda" | "tensorrt" (TensorRT EP, with CUDA for unsupported nodes)
    device_id: int = 0  # GPU ordinal for the CUDA / TensorRT providers
    trt_cache_dir: str | None = None  # TensorRT EP engine cache folder (engines take minutes to build)
    log_severity: int = 3  # 0 verbose .. 4 fatal; 3 keeps ONNX Runtime's warnings off stderr
    # GPU providers only: False (default) makes session creation fail when a node would run on the CPU; True is
    # ONNX Runtime's own behaviour (such nodes run on the CPU), for a user who asks for it.
    cpu_fallback: bool = False
    # Spinning, arena, pre-packing, graph level, warm-up (clip_rt/backends/ort_options.py); threads/log_severity
    # above win.
    tuning: SessionTuning = SessionTuning()


def parse_device(device: str) -> tuple[str, int]:
    """"cpu" -> ("cpu", 0); "cuda" -> ("cuda", 0); "cuda:1" -> ("cuda", 1). Anything else is an InputError."""
    if device == "cpu":
        return "cpu", 0
    if device == "cuda":
        return "cuda", 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return "cuda", int(device[5:])
    raise InputError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'")


def providers_for(config: SessionConfig) -> list[Any]:
    """The ONNX Runtime provider list for a config (with provider options), most preferred first."""
    if config.provider == "cpu":
        return [CPU]
    cuda = (CUDA, {"device_id": config.device_id})
    if config.provider == "cuda":
        return [cuda]
    if config.provider == "tensorrt":
        trt: dict[str, Any] = {"device_id": config.device_id}
        if config.trt_cache_dir:
            trt.update(trt_engine_cache_enable=True, trt_engine_cache_path=config.trt_cache_dir)
        # CUDA runs whatever TensorRT does not take; CPU is deliberately absent (no silent slow path).
        return [(TENSORRT, trt), cuda]
    raise InputError(f"unknown provider {config.provider!r}; choose one of cpu, cuda, tensorrt")


def session_options_for(config: SessionConfig) -> "ort.SessionOptions":
    """The SessionOptions make_session uses: the config's tuning, and no CPU fallback on a GPU provider."""
    tuning = replace(config.tuning, threads=config.threads, log_severity=config.log_severity)
    if config.provider == "cpu" or config.cpu_fallback:
        return make_session_options(tuning)
    return gpu_session_options(tuning)


def make_session(path: str | Path, config: SessionConfig) -> "ort.InferenceSession":
    """Create one InferenceSession, checking that every requested provider is both available and in use.

    The one place sessions are built: tuning options (optimization level, arena, pre-packing) belong here.
    """
    import onnxruntime as ort

    providers = providers_for(config)
    wanted = [p if isinstance(p, str) else p[0] for p in providers]
    if config.provider != "cpu":
        problem = mixed_install_problem()
        if problem:
            raise BackendUnavailable(problem)
    available = ort.get_available_providers()
    missing = [p for p in wanted if p not in available]
    if missing:
        raise BackendUnavailable(f"ONNX Runtime {ort.__version__} here has no {', '.join(missing)} (available: "
                                 f"{', '.join(available)}); {GPU_HINT}")
    if config.threads is not None and config.threads < 1:
        raise InputError(f"threads must be >= 1, got {config.threads}")
    options = session_options_for(config)
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as e:  # ONNX Runtime raises its own exception types (Fail, RuntimeException, ...)
        if config.provider == "cpu":
            raise BackendUnavailable(f"ONNX Runtime cannot load {path}: {e}") from e
        if "fallback" in str(e).lower():
            raise BackendUnavailable(f"{', '.join(wanted)} cannot run every node of {path}, and running the rest on "
                                     f"the CPU is off ({NO_CPU_FALLBACK}); pass cpu_fallback=True to allow it: "
                                     f"{e}") from e
        raise BackendUnavailable(f"ONNX Runtime cannot start {', '.join(wanted)} for {path} (GPU driver, CUDA or "
                                 f"cuDNN/TensorRT libraries missing?): {e}; {GPU_HINT}") from e
    in_use = session.get_providers()
    dropped = [p for p in wanted if p not in in_use]
    if dropped:
        raise BackendUnavailable(f"ONNX Runtime did not enable {', '.join(dropped)} for {path} (it would run on "
                                 f"{', '.join(in_use)}); check the CUDA/cuDNN/TensorRT libraries, or {GPU_HINT}")
    return session


class OnnxRuntimeBackend:
    """Two ONNX Runtime sessions (image, text) for one package, precision and device."""

    name = "onnxruntime"

    def __init__(self, package: "Package", precision: str, device: str, config: SessionConfig):
        self.precision = check_precision(precision)
        self.device = device
        self.config = config
        self._contracts: dict[str, EncoderContract] = {e: package.contract(e) for e in ("image", "text")}
        self._files: dict[str, Path] = {}
        self._sessions: dict[str, Any] = {}
        for encoder in ("image", "text"):
            # TensorRT EP: the portable graph (fused com.microsoft ops would fall back to CUDA kernels). INT8 on CUDA:
            # the QDQ graph too; the lowered INT8 graph (export/lower.py) is written for ONNX Runtime's CPU kernels.
            portable = config.provider == "tensorrt" or (precision == "int8" and device != "cpu")
            artifact = package.artifact(encoder, precision, "onnxruntime", portable=portable)
            path = package.path(artifact)  # sha256-verified
            session = make_session(path, config)
            contract = self._contracts[encoder]
            names = [i.name for i in session.get_inputs()]
            if names != [contract.input.name]:
                raise BackendUnavailable(f"{path} has inputs {names}, expected [{contract.input.name!r}]; "
                                         f"re-export the package with this clip-rt version")
            warm_up(session, contract, config.tuning.warmup)
            self._files[encoder] = path
            self._sessions[encoder] = session

    def _run(self, encoder: str, array: np.ndarray) -> np.ndarray:
        contract = self._contracts[encoder]
        array = contract.check_input(array)
        (out,) = self._sessions[encoder].run([contract.output.name], {contract.input.name: array})
        return np.asarray(out, dtype=np.float32)  # [B, D]

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [B, S, S, 3] RGB -> float32 [B, D], L2-normalized."""
        return self._run("image", pixels)

    def encode_texts(self, input_ids: np.ndarray) -> np.ndarray:
        """int32 [B, L] token ids -> float32 [B, D], L2-normalized."""
        return self._run("text", input_ids)

    def describe(self) -> dict[str, Any]:
        # get_providers() always ends with the CPU provider; on a GPU no node may use it (NO_CPU_FALLBACK).
        return {"backend": self.name, "precision": self.precision, "device": self.device,
                "providers": self._sessions["image"].get_providers(), "threads": self.config.threads,
                "cpu_fallback": self.config.provider == "cpu" or self.config.cpu_fallback,
                "tuning": replace(self.config.tuning, threads=self.config.threads).to_json(),
                "files": {e: p.name for e, p in self._files.items()}}

    def close(self) -> None:
        self._sessions.clear()


def open_backend(package: "Package", precision: str = "fp32", device: str = "cpu", threads: int | None = None,
                 provider: str | None = None, **options: Any) -> OnnxRuntimeBackend:
    """ONNX Runtime on `device` ("cpu", "cuda", "cuda:N"); provider="tensorrt" selects the TensorRT EP on a GPU.

    Extra keyword options are SessionConfig fields or SessionTuning fields (spinning, prepacking, memory_arena,
    memory_pattern, graph_level, denormal_as_zero, warmup). Raises BackendUnavailable, naming the fix, when the
    requested provider is not installed or does not start.
    """
    kind, device_id = parse_device(device)
    if provider is None:
        provider = kind
    if provider == "cpu" and kind != "cpu":
        raise InputError(f"provider 'cpu' contradicts device {device!r}; use device='cpu'")
    if provider in ("cuda", "tensorrt") and kind != "cuda":
        raise InputError(f"provider {provider!r} runs on a GPU; pass device='cuda' (or 'cuda:N'), not {device!r}")
    if provider == "tensorrt" and "trt_cache_dir" not in options:
        from ..fsutil import cache_dir

        options["trt_cache_dir"] = str(cache_dir() / "ort-tensorrt")
    tuning_names = set(SessionTuning.fields()) - {"threads", "log_severity"}
    tuning = SessionTuning(**{k: options.pop(k) for k in list(options) if k in tuning_names})
    unknown = set(options) - set(SessionConfig.__dataclass_fields__)
    if unknown:
        raise InputError(f"unknown onnxruntime option(s): {', '.join(sorted(unknown))}")
    config = SessionConfig(threads=threads, provider=provider, device_id=device_id, tuning=tuning, **options)
    return OnnxRuntimeBackend(package, precision, device, config)

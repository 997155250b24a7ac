"""OpenVINO backend: the package's portable ONNX files compiled by OpenVINO's CPU plugin.

    encode_images(pixels)    uint8 [B, S, S, 3] -> float32 [B, D]   (image.onnx / image.int8.onnx)
    encode_texts(input_ids)  int32 [B, L]       -> float32 [B, D]   (text.onnx / text.int8.onnx)

It reads the same files TensorRT does: the plain fp32 graph and the calibrated QDQ INT8 graph (the fused
`*.opt.onnx` files use ONNX Runtime's own contrib ops). OpenVINO turns each QDQ MatMul into an integer GEMM
(oneDNN, VNNI/AMX where the CPU has them). On the 2-core Zen 4 this project is measured on, `clip-rt bench` put
its ViT-B/32 INT8 image encoder 1-7% ahead of ONNX Runtime's lowered INT8 graph and its INT8 text encoder at 16
tokens 4-19% behind at batch 1 and 11-15% ahead at batch 32; fp32 ran at the same speed (docs/CPU_SPEED.md).

The precision asked for is the precision that runs:
- INFERENCE_PRECISION_HINT is pinned to f32. Left alone, OpenVINO computes fp32 models in bf16 on CPUs with
  AVX512_BF16 or AMX (Zen 4, Sapphire Rapids): faster, and a different answer from the one the package was
  validated for.
- After compiling, the runtime graph is read back: an fp32 artifact must have no op running in bf16/f16, and an
  INT8 artifact must have its GEMMs running in i8/u8. Otherwise BackendUnavailable, not a quiet slow path.

INT8 without VNNI: oneDNN's fast integer GEMMs (brgemm) need VNNI or AMX. On an AVX2-only CPU (clip_rt.cputier
tier "avx2") OpenVINO runs the same integer GEMMs with oneDNN's older jit_gemm_i8 kernels, which measured slower
than OpenVINO's own fp32 there and well behind ONNX Runtime's INT8 (docs/CPU_SPEED.md, "CPU tiers"). Nothing in
OpenVINO's settings selects another kernel, so loading INT8 on that tier warns (SlowPathWarning) and names the
faster choice; describe() reports the kernels that actually ran (`gemm_kernels`).

A compiled model is safe to share between threads, an infer request is not: each calling thread gets its own.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..contract import EncoderContract, check_precision
from ..errors import BackendUnavailable, InputError, check_threads, check_warmup, missing_dependency

if TYPE_CHECKING:
    from ..package import Package

HINTS = ("latency", "throughput")
# CPU tiers (clip_rt.cputier) where OpenVINO INT8 measured slower than OpenVINO fp32 (no oneDNN brgemm int8 kernel).
SLOW_INT8_TIERS = ("avx2",)
GEMM_LAYERS = ("FullyConnected", "MatMul", "Convolution")  # runtime layer types that carry the weight GEMMs
LOW_FLOAT = ("bf16", "f16")


@dataclass(frozen=True)
class OpenVinoConfig:
    threads: int | None = None  # INFERENCE_NUM_THREADS; None: OpenVINO's default (the CPU's cores)
    hint: str = "latency"  # PERFORMANCE_HINT: "latency" (one stream: every call uses all threads) or "throughput"
    warmup: int = 0  # calls per encoder at load (batch 1 and the contract's opt batch), so the first real one is fast

    def __post_init__(self) -> None:
        check_threads(self.threads)
        if self.hint not in HINTS:
            raise InputError(f"hint must be one of {', '.join(HINTS)}, got {self.hint!r}")
        check_warmup(self.warmup)

    def properties(self) -> dict[str, Any]:
        props: dict[str, Any] = {"PERFORMANCE_HINT": self.hint.upper(), "INFERENCE_PRECISION_HINT": "f32"}
        if self.threads is not None:
            props["INFERENCE_NUM_THREADS"] = self.threads
        return props


def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError as e:
        raise missing_dependency(e.name or "openvino", "openvino", "the openvino backend") from e
    return openvino


def runtime_precisions(compiled: Any) -> dict[str, dict[str, int]]:
    """{runtime layer type: {precision: count}} of what the CPU plugin will execute (constants left out)."""
    out: dict[str, dict[str, int]] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        if layer in ("Const", "Input", "Output"):
            continue
        precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
        by = out.setdefault(layer, {})
        by[precision] = by.get(precision, 0) + 1
    return out


def gemm_kernels(compiled: Any) -> dict[str, int]:
    """{oneDNN primitive: count} of the GEMM layers, e.g. {"brgemm_avx512_i8": 73} or {"jit_gemm_i8": 73}. With
    dynamic shapes the plugin picks primitives at the first inference; before it they read "undef_*"."""
    out: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) in GEMM_LAYERS:
            kind = info["primitiveType"].astype(str) if "primitiveType" in info else "?"
            out[kind] = out.get(kind, 0) + 1
    return out


def slow_int8_warning(tier: str) -> str | None:
    """The SlowPathWarning text for INT8 on CPU tier `tier`, or None where OpenVINO INT8 is not known to be slow."""
    if tier not in SLOW_INT8_TIERS:
        return None
    return (f"OpenVINO INT8 on this CPU (tier {tier}: no VNNI, so oneDNN runs the integer GEMMs with its jit_gemm_i8 "
            f"kernels) measured slower than OpenVINO fp32 and than ONNX Runtime INT8; for the fastest INT8 here use "
            f"backend='onnxruntime' (CLI: --backend onnxruntime), or openvino with precision fp32")


def check_runtime_precision(precisions: dict[str, dict[str, int]], precision: str, path: Path) -> None:
    """BackendUnavailable unless the compiled graph computes in `precision` (see the module docstring)."""
    low = sorted(f"{layer} ({p})" for layer, by in precisions.items() for p in by if p in LOW_FLOAT)
    if low:
        raise BackendUnavailable(f"OpenVINO compiled {path.name} with {', '.join(low)} although f32 was asked for; "
                                 f"this OpenVINO does not honour INFERENCE_PRECISION_HINT=f32 here")
    gemms = {p: n for layer in GEMM_LAYERS for p, n in precisions.get(layer, {}).items()}
    integer = sum(n for p, n in gemms.items() if p in ("i8", "u8"))
    if precision == "int8" and integer == 0:
        raise BackendUnavailable(f"OpenVINO compiled the INT8 file {path.name} without a single integer GEMM "
                                 f"(GEMM precisions: {gemms or 'none'}): it would run as fp32; use "
                                 f"backend='onnxruntime' for INT8 on this machine")
    if precision == "fp32" and integer:
        raise BackendUnavailable(f"{path.name} is listed as fp32 but OpenVINO runs {integer} integer GEMMs in it: "
                                 f"the package is inconsistent; re-export it")


class OpenVinoBackend:
    """Two OpenVINO compiled models (image, text) for one package and precision, on the CPU."""

    name = "openvino"

    def __init__(self, package: "Package", precision: str, config: OpenVinoConfig):
        self.precision = check_precision(precision)
        if precision == "fp16":
            raise BackendUnavailable("the openvino backend runs fp32 and int8 on the CPU; fp16 artifacts are for "
                                     "GPUs (backend='tensorrt', or backend='onnxruntime' with device='cuda')")
        ov = _import_openvino()
        self.device = "cpu"
        self.config = config
        self.version = ov.__version__
        core = ov.Core()
        self.cpu = str(core.get_property("CPU", "FULL_DEVICE_NAME"))
        self._contracts: dict[str, EncoderContract] = {e: package.contract(e) for e in ("image", "text")}
        self._files: dict[str, Path] = {}
        self._compiled: dict[str, Any] = {}
        self._precisions: dict[str, dict[str, dict[str, int]]] = {}
        for encoder in ("image", "text"):
            # portable: the plain / QDQ graph; the fused *.opt.onnx files hold ONNX Runtime contrib ops.
            path = package.path(package.artifact(encoder, precision, "onnxruntime", portable=True))  # sha256-checked
            try:
                compiled = core.compile_model(core.read_model(str(path)), "CPU", config.properties())
            except RuntimeError as e:  # OpenVINO reports read and compile failures as RuntimeError
                raise BackendUnavailable(f"OpenVINO {self.version} cannot compile {path}: {e}") from e
            contract = self._contracts[encoder]
            names = [sorted(i.get_names()) for i in compiled.inputs]
            if len(names) != 1 or contract.input.name not in names[0]:
                raise BackendUnavailable(f"{path} has inputs {names}, expected [{contract.input.name!r}]; "
                                         f"re-export the package with this clip-rt version")
            self._precisions[encoder] = runtime_precisions(compiled)
            check_runtime_precision(self._precisions[encoder], precision, path)
            self._files[encoder] = path
            self._compiled[encoder] = compiled
        self._local = threading.local()
        if precision == "int8":
            from ..cputier import detect

            slow = slow_int8_warning(detect().name)
            if slow:
                import warnings

                from ..errors import SlowPathWarning

                warnings.warn(slow, SlowPathWarning, stacklevel=4)
        for encoder, contract in self._contracts.items():
            inputs = contract.warmup_inputs() if config.warmup > 0 else []
            for _ in range(config.warmup):
                for array in inputs:
                    self._run(encoder, array)

    def _request(self, encoder: str) -> Any:
        requests = getattr(self._local, "requests", None)
        if requests is None:
            requests = self._local.requests = {}
        if encoder not in requests:
            requests[encoder] = self._compiled[encoder].create_infer_request()
        return requests[encoder]

    def _run(self, encoder: str, array: np.ndarray) -> np.ndarray:
        array = self._contracts[encoder].check_input(array)
        request = self._request(encoder)
        request.infer({0: array})
        # The output tensor belongs to the request and is overwritten by its next call: copy it out.
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)  # [B, D]

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [B, S, S, 3] RGB -> float32 [B, D], L2-normalized."""
        return self._run("image", pixels)

    def encode_texts(self, input_ids: np.ndarray) -> np.ndarray:
        """int32 [B, L] token ids -> float32 [B, D], L2-normalized."""
        return self._run("text", input_ids)

    def describe(self) -> dict[str, Any]:
        image = self._compiled["image"]
        return {"backend": self.name, "precision": self.precision, "device": self.device,
                "openvino": self.version, "cpu": self.cpu, "threads": int(image.get_property("INFERENCE_NUM_THREADS")),
                "hint": self.config.hint,
                "inference_precision": image.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
                "gemm_precisions": {e: {layer: by for layer, by in p.items() if layer in GEMM_LAYERS}
                                    for e, p in self._precisions.items()},
                "gemm_kernels": {e: gemm_kernels(c) for e, c in self._compiled.items()},
                "files": {e: p.name for e, p in self._files.items()}}

    def close(self) -> None:
        self._compiled.clear()
        self._local = threading.local()


def open_backend(package: "Package", precision: str = "fp32", device: str = "cpu", threads: int | None = None,
                 **options: Any) -> OpenVinoBackend:
    """OpenVINO on the CPU. Options: hint ("latency" | "throughput"), warmup (calls per encoder at load)."""
    if device != "cpu":
        raise BackendUnavailable(f"the openvino backend runs on the CPU only (asked for device={device!r}); for a "
                                 f"GPU use backend='tensorrt' or backend='onnxruntime' with device='cuda'")
    unknown = set(options) - {"hint", "warmup"}
    if unknown:
        raise InputError(f"unknown openvino option(s): {', '.join(sorted(unknown))} (known: hint, warmup)")
    return OpenVinoBackend(package, precision, OpenVinoConfig(threads=threads, **options))

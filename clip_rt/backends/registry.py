"""The backend registry: one row per backend, the one table every other place derives from.

    BackendSpec("onnxruntime", "clip_rt.backends.onnxruntime", devices=("cpu", "cuda"), default_device="cpu",
                artifact="onnxruntime", tolerance="onnx", int8_cpu_tier=True)

The CLI's --backend choices, `clip-rt bench`'s backends, load()'s INT8 CPU-tier check, the tolerance lookup
(clip_rt.tolerances) and the index's artifact check (clip_rt.search) all read these rows, so a new backend is one
module with `open_backend(package, precision, device, **options) -> Backend` plus one `register_backend(...)` call
(or one row in BUILTIN). Pure data: it imports only clip_rt.errors and clip_rt.package (standard library only), and
never a backend module.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BackendUnavailable
from ..package import ARTIFACT_FORMATS

_DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class BackendSpec:
    """One backend: where its code lives and what the rest of clip-rt needs to know about it."""

    name: str  # the value of load(backend=...) and --backend
    module: str  # import path of the module whose open_backend(package, precision, device, **options) opens it
    devices: tuple[str, ...]  # device kinds it runs on ("cpu", "cuda"; "cuda" covers cuda:N)
    default_device: str  # the device when none is named (load(device=None), the CLI without --device)
    # The package artifact format it reads (clip_rt.package.ARTIFACT_FORMATS: "onnxruntime" = ONNX files,
    # "tensorrt" = serialized engines); None: no artifact, the eager reference reads the source model.
    artifact: str | None
    tolerance: str  # its row group in clip_rt.tolerances.TOLERANCES ("onnx" or "tensorrt")
    int8_cpu_tier: bool = False  # INT8 on the CPU: check this CPU's integer tier against the validated one (cputier)
    int8_portable: bool = False  # INT8 reads the portable QDQ file, not ONNX Runtime's fused/lowered graph

    def __post_init__(self) -> None:
        if not self.name or not self.module:
            raise ValueError(f"a backend needs a name and a module, got {self.name!r}, {self.module!r}")
        if not self.devices or any(d not in _DEVICES for d in self.devices):
            raise ValueError(f"backend {self.name!r}: devices must be a non-empty subset of {_DEVICES}, "
                             f"got {self.devices!r}")
        if self.default_device not in self.devices:
            raise ValueError(f"backend {self.name!r}: default device {self.default_device!r} is not one of its "
                             f"devices {self.devices!r}")
        if self.artifact is not None and self.artifact not in ARTIFACT_FORMATS:
            raise ValueError(f"backend {self.name!r}: artifact must be one of {ARTIFACT_FORMATS} or None, "
                             f"got {self.artifact!r}")
        if (self.int8_cpu_tier or self.int8_portable) and self.artifact != "onnxruntime":
            raise ValueError(f"backend {self.name!r}: the INT8 CPU rules apply to backends that read ONNX artifacts")


BUILTIN: tuple[BackendSpec, ...] = (
    # ONNX Runtime: the default; CPU, or the CUDA / TensorRT execution providers on a GPU. INT8 runs the lowered
    # (ORT-fused) graph, whose integer arithmetic depends on the CPU's tier.
    BackendSpec("onnxruntime", "clip_rt.backends.onnxruntime", devices=("cpu", "cuda"), default_device="cpu",
                artifact="onnxruntime", tolerance="onnx", int8_cpu_tier=True),
    # OpenVINO (as used here) runs on the CPU only, the plain fp32 files and the portable QDQ INT8 ones.
    BackendSpec("openvino", "clip_rt.backends.openvino", devices=("cpu",), default_device="cpu",
                artifact="onnxruntime", tolerance="onnx", int8_cpu_tier=True, int8_portable=True),
    # TensorRT engines built by clip-rt build-engine: a GPU only.
    BackendSpec("tensorrt", "clip_rt.backends.tensorrt", devices=("cuda",), default_device="cuda",
                artifact="tensorrt", tolerance="tensorrt"),
    # Eager transformers, the fp32 reference everything is measured against; reads the source model, not an
    # artifact. Held to the fp32 ONNX row where a gate compares it (e.g. the bench's cached-text tutorial row).
    BackendSpec("torch", "clip_rt.backends.torch", devices=("cpu", "cuda"), default_device="cpu",
                artifact=None, tolerance="onnx"),
)

# name -> row, in registration order (the order of --backend's choices).
REGISTRY: dict[str, BackendSpec] = {spec.name: spec for spec in BUILTIN}


def register_backend(spec: BackendSpec) -> BackendSpec:
    """Add a backend row (a name already taken is refused: unregister_backend it first). Returns the row."""
    if spec.name in REGISTRY:
        raise ValueError(f"backend {spec.name!r} is already registered ({REGISTRY[spec.name].module})")
    REGISTRY[spec.name] = spec
    return spec


def unregister_backend(name: str) -> BackendSpec:
    """Remove a backend row (tests, plugins that unload); returns it."""
    return REGISTRY.pop(name)


def backend_names() -> tuple[str, ...]:
    """Every registered backend, in registration order: the CLI's --backend choices."""
    return tuple(REGISTRY)


def backend_spec(name: str) -> BackendSpec:
    """The row of backend `name`; BackendUnavailable (naming the choices) for an unknown one."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of {', '.join(REGISTRY)}") from None

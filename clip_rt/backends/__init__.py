"""Backend registry. Each backend lives in its own module and is imported only when asked for.

Every backend module exposes `open_backend(package, precision, device, **options) -> Backend`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..errors import BackendUnavailable

if TYPE_CHECKING:
    from ..package import Package
    from .base import Backend

BACKENDS: dict[str, str] = {
    "onnxruntime": "clip_rt.backends.onnxruntime",
    "openvino": "clip_rt.backends.openvino",
    "tensorrt": "clip_rt.backends.tensorrt",
    "torch": "clip_rt.backends.torch",
}

# The device a backend runs on when none is named (load(device=None), the CLI without --device): TensorRT only
# runs on a GPU, OpenVINO (as used here) only on the CPU, the others default to the CPU.
DEFAULT_DEVICES: dict[str, str] = {"onnxruntime": "cpu", "openvino": "cpu", "tensorrt": "cuda", "torch": "cpu"}


def default_device(backend: str) -> str:
    """The backend's natural device ("cpu" or "cuda"); BackendUnavailable for an unknown backend."""
    if backend not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return DEFAULT_DEVICES[backend]


def open_backend(name: str, package: "Package", precision: str = "fp32", device: str | None = None,
                 **options: Any) -> "Backend":
    """Open backend `name` for the package; device None means the backend's natural one (default_device)."""
    if device is None:
        device = default_device(name)
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    module = importlib.import_module(BACKENDS[name])
    return module.open_backend(package, precision=precision, device=device, **options)

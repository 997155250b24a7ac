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
    "tensorrt": "clip_rt.backends.tensorrt",
    "torch": "clip_rt.backends.torch",
}


def open_backend(name: str, package: "Package", precision: str = "fp32", device: str = "cpu",
                 **options: Any) -> "Backend":
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    module = importlib.import_module(BACKENDS[name])
    return module.open_backend(package, precision=precision, device=device, **options)

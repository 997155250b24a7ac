"""Backends: one module each, imported only when asked for, listed once in the registry (clip_rt.backends.registry).

Every backend module exposes `open_backend(package, precision, device, **options) -> Backend`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .registry import REGISTRY, BackendSpec, backend_names, backend_spec, register_backend, unregister_backend

if TYPE_CHECKING:
    from ..package import Package
    from .base import Backend

# name -> registry row (the registry itself, so a backend registered later is listed too).
BACKENDS: dict[str, BackendSpec] = REGISTRY

__all__ = ["BACKENDS", "BackendSpec", "backend_names", "backend_spec", "default_device", "open_backend",
           "register_backend", "unregister_backend"]


def default_device(backend: str) -> str:
    """The backend's natural device ("cpu" or "cuda"); BackendUnavailable for an unknown backend."""
    return backend_spec(backend).default_device


def open_backend(name: str, package: "Package", precision: str = "fp32", device: str | None = None,
                 **options: Any) -> "Backend":
    """Open backend `name` for the package; device None means the backend's natural one (default_device)."""
    spec = backend_spec(name)
    module = importlib.import_module(spec.module)
    if device is None:
        device = spec.default_device
    return module.open_backend(package, precision=precision, device=device, **options)

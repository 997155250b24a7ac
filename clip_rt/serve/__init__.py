"""clip-rt as an HTTP service on Ray Serve (the `serve` extra), and its Python client.

    from clip_rt.serve import ServeConfig, start, stop
    url = start(ServeConfig("pkg/", max_batch_size=32))      # a local Ray cluster unless already connected
    from clip_rt.client import Client
    Client(url).embed_texts(["a dog"])                        # float32 [1, D]
    stop()

Modules: config (ServeConfig, no Ray), gateway (HTTP routes), encoder (the model replica with @serve.batch),
limits (body size, API errors), app (assemble and run), client (httpx only), loadgen (concurrent load + checks).
Importing this package imports neither Ray nor FastAPI; the names below load their module on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import build_app, serve_forever, start, stop
    from .client import Client, ServeError
    from .config import ServeConfig

__all__ = ["ServeConfig", "build_app", "start", "stop", "serve_forever", "Client", "ServeError"]

_LAZY = {"ServeConfig": "config", "build_app": "app", "start": "app", "stop": "app", "serve_forever": "app",
         "Client": "client", "ServeError": "client"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

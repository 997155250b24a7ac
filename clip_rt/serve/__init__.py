"""clip-rt as an HTTP service (the `serve` extra): one process by default, Ray Serve for clusters; and its client.

    from clip_rt.serve import LocalServer, ServeConfig
    server = LocalServer(ServeConfig("pkg/", port=8000))    # uvicorn in this process; the model on its own thread
    url = server.start()                                     # or server.run(): block until SIGTERM / Ctrl-C
    from clip_rt.client import Client
    Client(url).embed_texts(["a dog"])                       # float32 [1, D]
    server.stop()

    from clip_rt.serve import start, stop                    # the same service on Ray Serve
    url = start(ServeConfig("pkg/", replicas=2)); ...; stop()

Modules: config (ServeConfig), routes (the HTTP API, written once), service (admission, decoding, the calls the
routes make), batcher (dynamic batching), workers (how a batch reaches the model: a local thread or a Ray handle),
encoder (the model and index), limits (body size, request counts, API errors), parsing and schemas (request
bodies), local (the one-process runner), ray_runner and ray_replicas (the Ray Serve runner), client (httpx only),
loadgen (concurrent load + checks). Importing this package imports neither Ray, FastAPI nor uvicorn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import Client, ServeError
    from .config import ServeConfig
    from .local import LocalServer
    from .ray_runner import build_app, serve_forever, start, stop

__all__ = ["ServeConfig", "LocalServer", "build_app", "start", "stop", "serve_forever", "Client", "ServeError"]

_LAZY = {"ServeConfig": "config", "LocalServer": "local", "build_app": "ray_runner", "start": "ray_runner",
         "stop": "ray_runner", "serve_forever": "ray_runner", "Client": "client", "ServeError": "client"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

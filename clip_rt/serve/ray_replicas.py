"""The Ray Serve replica classes (imported only with --ray; this module imports Ray).

- Ingress: the HTTP routes (clip_rt.serve.routes) and the batching (clip_rt.serve.service) in a replica. With no
  encoder handle it loads the model itself (one deployment: no hop between replicas); with one, it sends each batch
  to the Encoder deployment (two deployments: decoding and the model scale apart).
- EncoderReplica: the model of the two-deployment shape, every call on its own thread.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from ray import serve

from .config import ServeConfig
from .encoder import Encoder
from .workers import LocalWorker, RayWorker


@serve.ingress()  # the app is built in each replica by __serve_build_asgi_app__, around that replica's Service
class Ingress:
    def __init__(self, config: ServeConfig, encoder: Any = None):
        from .service import Service

        if encoder is None:
            worker: Any = LocalWorker(Encoder(config))
            concurrency = 1
        else:  # two batches per encoder replica in flight: one runs while the next is on its way
            worker = RayWorker(encoder, queued=config.ongoing(ingress=False) * config.replicas,
                               retry_attempts=config.retry_attempts)
            concurrency = 2 * config.replicas
        self.service = Service(config, worker, runner="ray", concurrency=concurrency)

    def __serve_build_asgi_app__(self) -> Any:
        from .routes import make_app

        return make_app(self.service)


class EncoderReplica:
    """Encoder's methods, each awaited on the replica's model thread."""

    def __init__(self, config: ServeConfig):
        # Batches only (the gateway runs nothing here on its own thread): no twin for lone requests.
        self.worker = LocalWorker(Encoder(replace(config, spinning=False) if config.spinning is None else config))

    async def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return await self.worker.call("embed_pixels", pixels)

    async def embed_texts(self, texts: list[str]) -> np.ndarray:
        return await self.worker.call("embed_texts", texts)

    async def classify(self, emb: np.ndarray, labels: list[str], templates: Any, top_k: int) -> dict[str, Any]:
        return await self.worker.call("classify", emb, labels, templates, top_k)

    async def search(self, query: np.ndarray | None, top_k: int, where: dict[str, str] | None = None,
                     like: int | None = None) -> list[dict[str, Any]]:
        return await self.worker.call("search", query, top_k, where, like)

    async def info(self) -> dict[str, Any]:
        return await self.worker.call("info")

    async def ping(self) -> bool:
        return await self.worker.call("ping")

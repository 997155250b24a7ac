"""What the routes call, the same in both runners: admission (a bounded number of requests in the service, JSON
503 + Retry-After beyond it), image decoding on a pool sized to the cores, dynamic batching per kind (Batcher),
and classification and search on top of the batched embeddings. A worker (clip_rt.serve.workers) carries each
batch to the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator

import numpy as np

from .. import __version__
from ..errors import ClipRtError
from ..package import Package
from ..preprocess import PreprocessConfig
from .batcher import Batcher
from .config import ServeConfig
from .limits import ApiError
from .parsing import decode_images


class Service:
    """One served package behind one event loop. `runner` names how it runs ("one-process" or "ray")."""

    def __init__(self, config: ServeConfig, worker: Any, runner: str, concurrency: int = 1):
        self.config = config
        self.worker = worker  # LocalWorker or RayWorker: await worker.call(method, *args)
        self.runner = runner
        self.package = Package.open(config.package)
        self.preprocess = PreprocessConfig.from_manifest(self.package.preprocess)
        wait_s = config.batch_wait_ms / 1000.0
        self.images = Batcher(lambda pixels: self._embed("embed_pixels", pixels), config.max_batch_size, wait_s,
                              concurrency)
        self.texts = Batcher(lambda texts: self._embed("embed_texts", texts), config.max_batch_size, wait_s,
                             concurrency)
        self._decode = ThreadPoolExecutor(max_workers=config.decode_threads or os.cpu_count() or 1,
                                          thread_name_prefix="clip-rt-decode")
        # Requests inside the service at once: those the running batches hold, plus --max-queued waiting.
        self.limit = config.max_queued + config.max_batch_size * concurrency
        self.active = 0
        self.counters = {"queue_full": 0}
        self._encoder_info: dict[str, Any] | None = None

    def _alone(self) -> bool:
        """One request in the service and the model idle: work for it may run on the loop's thread, saving the
        hops to a pool thread and back (a one-process worker only; nothing else waits for the loop meanwhile)."""
        return self.active <= 1 and getattr(self.worker, "idle", False)

    async def _embed(self, method: str, items: Any) -> np.ndarray:
        """A batch to the model: on this thread for a lone request of one item (LocalWorker.call_here: the loop is
        held for one item's encoding at most), else the worker's way."""
        if len(items) == 1 and self._alone():
            return self.worker.call_here(method, items, True)  # lone=True: the encoder's spinning twin, if any
        return await self.worker.call(method, items)

    # -- admission and decoding ----------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """Hold a place in the service for one request, or answer 503 when every place is taken."""
        if self.active >= self.limit:
            self.counters["queue_full"] += 1
            raise ApiError(503, f"server busy: the queue is full ({self.config.max_queued} requests waiting, "
                                f"--max-queued); retry shortly", retry_after_s=1)
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1

    async def decode(self, items: list[tuple[str, bytes]]) -> tuple[np.ndarray, list[str], list[dict[str, str]]]:
        """(name, bytes) pairs -> (uint8 [N, S, S, 3] crops of the readable ones, their names, per-image errors),
        one image per decode thread; 400 when none is readable."""
        if not items:
            raise ApiError(400, "no images: send multipart file fields named 'files', or JSON "
                                '{"images": [base64, ...]}')
        if len(items) > self.config.max_items:
            raise ApiError(400, f"{len(items)} images in one request; the server takes at most {self.config.max_items} "
                                f"(--max-items)")
        if len(items) == 1 and self._alone():  # a lone image: decoded here, without the hop to a decode thread
            parts = [decode_images(items, self.preprocess)]
        else:
            loop = asyncio.get_running_loop()
            parts = await asyncio.gather(*(loop.run_in_executor(self._decode, decode_images, [item], self.preprocess)
                                           for item in items))
        crops = [p for p, _, _ in parts if len(p)]
        names = [n for _, ns, _ in parts for n in ns]
        errors = [e for _, _, es in parts for e in es]
        if not names:
            what = errors[0]["error"] if len(errors) == 1 else f"none of the {len(errors)} images could be read"
            raise ApiError(400, f"unreadable image: {what}", errors=errors)
        pixels = crops[0] if len(crops) == 1 else np.concatenate(crops)  # [N, S, S, 3] uint8
        return pixels, names, errors

    async def _user_call(self, method: str, *args: Any) -> Any:
        """A worker call whose input the model side may still refuse (a ClipRtError becomes a 400)."""
        try:
            return await self.worker.call(method, *args)
        except ClipRtError as e:
            raise ApiError(400, str(e)) from None

    # -- operations ------------------------------------------------------------------------------------------------
    async def classify(self, pixels: np.ndarray, labels: list[str], templates: str | list[str],
                       top_k: int) -> dict[str, Any]:
        emb = await self.images.submit(pixels)  # [N, D]
        return await self._user_call("classify", emb, labels, templates, top_k)

    async def search(self, text: str | None, pixels: np.ndarray | None, text_weight: float, top_k: int,
                     where: dict[str, str] | None = None, like: int | None = None) -> list[dict[str, Any]]:
        """A text, one crop [1, S, S, 3], or both mixed as normalize(w * text + (1 - w) * image), or an item's own
        stored vector (like) -> top_k hits among the photos `where` allows (folder, after, before, camera)."""
        if like is not None:
            return await self._user_call("search", None, top_k, where, like)
        parts: list[tuple[float, Any]] = []
        if text is not None:
            parts.append((text_weight if pixels is not None else 1.0, self.texts.submit([text])))
        if pixels is not None:
            parts.append((1.0 - text_weight if text is not None else 1.0, self.images.submit(pixels)))
        vectors = await asyncio.gather(*(p for _, p in parts))
        query = sum(w * v[0] for (w, _), v in zip(parts, vectors))  # [D]; the index normalizes it
        return await self._user_call("search", np.asarray(query, dtype=np.float32), top_k, where)

    async def health(self) -> None:
        try:
            await asyncio.wait_for(self.worker.call("ping"), timeout=10.0)
        except (ApiError, asyncio.TimeoutError) as e:
            raise ApiError(503, f"the model does not answer ({e or 'timeout'})", retry_after_s=2) from None

    async def info(self) -> dict[str, Any]:
        """The package, the settings, the runner, the counters and the model's batching so far."""
        if self._encoder_info is None:
            self._encoder_info = await self.worker.call("info")
        pkg = self.package
        replica = {**self._encoder_info, "batches": {"images": self.images.stats.to_json(),
                                                     "texts": self.texts.stats.to_json()}}
        return {"version": __version__, "runner": self.runner,
                "package": {"path": str(pkg.root), "fingerprint": pkg.fingerprint, "embed_dim": pkg.embed_dim,
                            "image_size": pkg.image_size, "context_length": pkg.context_length},
                "config": {k: v for k, v in self.config.to_json().items() if k != "options"},
                "gateway": {**self.counters, **self.worker.counters, "active": self.active,
                            "waiting": {"images": self.images.waiting, "texts": self.texts.waiting}},
                "replica": replica}

    async def close(self) -> None:
        """Answer what is queued, then stop the batchers, the decode pool and the worker."""
        await asyncio.gather(self.images.close(), self.texts.close())
        self._decode.shutdown(wait=True)
        self.worker.close()

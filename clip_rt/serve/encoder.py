"""The encoder replica: one model, batched calls (Ray Serve's @serve.batch) merged once more across gateways,
label embeddings cached for /classify, and the served index for /search.

The gateway (clip_rt.serve.gateway) sends already decoded and preprocessed pixels and validated texts; everything
here runs on the model. Model calls go through one worker thread per replica, so an image batch, a text batch and
a label-matrix build never compete for the backend's intra-op threads, and the replica's event loop stays free to
collect the next batch (and to answer Serve's health checks) while one runs.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
from ray import serve

from ..errors import InputError
from .config import ServeConfig

T = TypeVar("T")


def rows(items: Sequence[Sequence[Any]]) -> int:
    """@serve.batch size of a batch: the images (or texts) it holds, not the requests."""
    return sum(len(x) for x in items)


class BatchStats:
    """How many encoder calls ran and how full they were, per kind (what /info shows about batching)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0
        self.items = 0
        self.largest = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.calls += 1
            self.items += n
            self.largest = max(self.largest, n)

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            mean = self.items / self.calls if self.calls else 0.0
            return {"calls": self.calls, "items": self.items, "largest": self.largest, "mean": round(mean, 3)}


class Encoder:
    """One model per replica. Public coroutines take whole requests and split them into batch-sized chunks;
    the @serve.batch methods merge chunks from many requests into one model call."""

    def __init__(self, config: ServeConfig):
        from ..model import load

        self.config = config
        self.model = load(config.package, backend=config.backend, precision=config.precision, device=config.device,
                          threads=config.threads, **config.load_options())
        self.index = None
        if config.index is not None:
            from ..search import Index

            self.index = Index.open(config.index)
            for encoder in ("image", "text"):  # queries are texts, images or both
                self.index.check_model(self.model, encoder)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clip-rt-encoder")
        handlers: tuple[Any, ...] = (self._image_batch, self._text_batch)  # @serve.batch wrappers with setters
        for handler in handlers:
            handler.set_max_batch_size(config.max_batch_size)
            # The gateways already waited batch_wait_ms to fill their batches: here, merge only what is queued.
            handler.set_batch_wait_timeout_s(0.0)
        self.stats = {"images": BatchStats(), "texts": BatchStats()}

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    def _chunks(self, items: Any) -> list[Any]:
        """A list or an array cut into pieces of at most max_batch_size."""
        m = self.config.max_batch_size
        return [items[i: i + m] for i in range(0, len(items), m)]

    # -- batched model calls (one call per batch of chunks from any number of requests) ------------------------
    @serve.batch(batch_size_fn=rows)
    async def _image_batch(self, chunks: list[np.ndarray]) -> list[np.ndarray]:
        sizes = [len(c) for c in chunks]
        pixels = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]  # [B, S, S, 3] uint8
        emb = await self._run(self.model.encode_images, pixels, len(pixels))  # [B, D] float32, normalized
        self.stats["images"].add(len(pixels))
        return np.split(emb, np.cumsum(sizes)[:-1])

    @serve.batch(batch_size_fn=rows)
    async def _text_batch(self, chunks: list[list[str]]) -> list[np.ndarray]:
        texts = [t for c in chunks for t in c]
        emb, _ = await self._run(self.model.encode_texts_counted, texts, len(texts))  # [B, D] float32, normalized
        self.stats["texts"].add(len(texts))
        return np.split(emb, np.cumsum([len(c) for c in chunks])[:-1])

    # -- what the gateway calls ------------------------------------------------------------------------------
    async def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] preprocessed crops -> float32 [N, D] normalized embeddings, in order."""
        parts = await asyncio.gather(*(self._image_batch(c) for c in self._chunks(pixels)))
        return np.concatenate(parts) if parts else np.zeros((0, self.model.embed_dim), np.float32)

    async def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Non-empty strings -> float32 [N, D] normalized embeddings, in order (long texts cut as CLIP does)."""
        parts = await asyncio.gather(*(self._text_batch(c) for c in self._chunks(texts)))
        return np.concatenate(parts) if parts else np.zeros((0, self.model.embed_dim), np.float32)

    def _classifier(self, labels: tuple[str, ...], templates: str | tuple[str, ...]) -> Any:
        from ..zeroshot import ZeroShotClassifier

        # The label matrix comes from zeroshot's caches: in memory in this replica (LRU), then on disk, shared by
        # every replica and every clip-rt process with the same cache folder; only a miss runs the text encoder.
        return ZeroShotClassifier(self.model, list(labels), templates=templates if isinstance(templates, str)
                                  else list(templates), cache_dir=self.config.cache_dir)

    async def classify(self, pixels: np.ndarray, labels: list[str], templates: str | list[str],
                       top_k: int) -> dict[str, Any]:
        """Crops [N, S, S, 3] + labels + templates -> {"predictions": per image [{label, score}], "cache": ...},
        scored by the package's own zero-shot rule (ZeroShotClassifier.predict_embeddings)."""
        emb = await self.embed_pixels(pixels)
        key = tuple(templates) if isinstance(templates, list) else templates
        clf = await self._run(self._classifier, tuple(labels), key)
        preds = clf.predict_embeddings(emb, top_k)
        return {"predictions": [[{"label": p.label, "score": p.score} for p in row] for row in preds],
                "cache": clf.cache_status}

    async def search(self, text: str | None, pixels: np.ndarray | None, text_weight: float,
                     top_k: int) -> list[dict[str, Any]]:
        """A text, one crop [1, S, S, 3], or both mixed as normalize(w * text + (1 - w) * image) -> the top_k
        files of the served index by cosine similarity, best first."""
        if self.index is None:
            raise InputError("this server has no index (start clip-rt serve with --index INDEX)")
        parts: list[tuple[float, Any]] = []
        if text is not None:
            parts.append((text_weight if pixels is not None else 1.0, self.embed_texts([text])))
        if pixels is not None:
            parts.append((1.0 - text_weight if text is not None else 1.0, self.embed_pixels(pixels)))
        vectors = await asyncio.gather(*(p for _, p in parts))
        query = sum(w * v[0] for (w, _), v in zip(parts, vectors))  # [D]; search_embedding normalizes it
        hits = self.index.search_embedding(np.asarray(query, dtype=np.float32), top_k)
        return [{"file": h.file, "score": h.score} for h in hits]

    def info(self) -> dict[str, Any]:
        """The model this replica runs, its batching so far, and the index it serves."""
        return {"model": self.model.describe(), "embed_dim": self.model.embed_dim,
                "image_size": self.model.image_size, "batches": {k: s.to_json() for k, s in self.stats.items()},
                "index": None if self.index is None else {"path": self.config.index, "count": len(self.index)}}

    def ping(self) -> bool:
        return True

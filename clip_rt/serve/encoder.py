"""The model side of the service, with no HTTP and no Ray: one loaded package, the served index, label embeddings
cached for /classify, and the check that the index fits the served package before anything starts.

Every method is synchronous and runs on the model's own thread (clip_rt.serve.workers.LocalWorker), in this process
or in a Ray Serve replica.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError
from .config import ServeConfig


def check_index(config: ServeConfig) -> None:
    """IndexFileError, in one line with the fix, unless the index's embeddings come from the served package,
    backend and precision. Reads the package manifest and the index header only (no model), so that a mismatch is
    refused before a model, a server or a Ray cluster starts."""
    if config.index is None:
        return
    from ..package import Package
    from ..search import Index, IndexFileError

    package = Package.open(config.package)
    with Index.open(config.index) as index:
        info = index.info
    keys = info.get("keys") or {}
    for encoder in ("image", "text"):  # queries are texts, images or both
        want = keys.get(encoder)
        got = package.embedding_key(encoder, config.precision, config.backend)  # PackageError: no such artifact
        if want != got:
            built = f"--backend {info.get('backend') or 'onnxruntime'} --precision {info.get('precision') or 'fp32'}"
            raise IndexFileError(
                f"the index {config.index} was built with {info.get('package')} ({info.get('backend')}, "
                f"{info.get('precision')}); {config.package} ({config.backend}, {config.precision}) makes other "
                f"{encoder} embeddings, so its results would be wrong; serve with the package, backend and precision "
                f"it was built with ({built}), or rebuild the index with --precision {config.precision}")


class Encoder:
    """One model (and index). Public methods take whole batches; they never see HTTP."""

    def __init__(self, config: ServeConfig):
        from ..model import ClipModel, load

        self.config = config
        check_index(config)

        def load_model(lone: bool) -> ClipModel:
            return load(config.package, backend=config.backend, precision=config.precision, device=config.device,
                        threads=config.threads, **config.load_options(lone=lone))

        self.model = load_model(lone=False)
        # Lone requests (one item, nothing else in the service): a twin whose threads spin inside a call, as
        # in-process clip_rt's do; batches under load stay on self.model, whose threads leave the cores to decoding.
        self.lone = load_model(lone=True) if config.lone_twin else self.model
        self.index = None
        if config.index is not None:
            from ..search import Index

            self.index = Index.open(config.index)
            for encoder in ("image", "text"):
                self.index.check_model(self.model, encoder)

    @property
    def embed_dim(self) -> int:
        return int(self.model.embed_dim)

    def embed_pixels(self, pixels: np.ndarray, lone: bool = False) -> np.ndarray:
        """uint8 [B, S, S, 3] preprocessed crops -> float32 [B, D] normalized embeddings, in order. lone: a lone
        request's (the twin runs it, when there is one)."""
        if not len(pixels):
            return np.zeros((0, self.embed_dim), np.float32)
        return (self.lone if lone else self.model).encode_images(pixels, len(pixels))

    def embed_texts(self, texts: list[str], lone: bool = False) -> np.ndarray:
        """Non-empty strings -> float32 [B, D] normalized embeddings, in order (long texts cut as CLIP does)."""
        if not texts:
            return np.zeros((0, self.embed_dim), np.float32)
        emb, _ = (self.lone if lone else self.model).encode_texts_counted(texts, len(texts))
        return emb

    def classify(self, emb: np.ndarray, labels: list[str], templates: str | list[str],
                 top_k: int) -> dict[str, Any]:
        """Image embeddings [N, D] + labels + templates -> {"predictions": per image [{label, score}], "cache"},
        scored by the package's own zero-shot rule (ZeroShotClassifier.predict_embeddings)."""
        from ..zeroshot import ZeroShotClassifier

        # The label matrix comes from zeroshot's caches: in memory in this process (LRU), then on disk, shared by
        # every replica and every clip-rt process with the same cache folder; only a miss runs the text encoder.
        clf = ZeroShotClassifier(self.model, list(labels), templates=templates, cache_dir=self.config.cache_dir)
        preds = clf.predict_embeddings(emb, top_k)
        return {"predictions": [[{"label": p.label, "score": p.score} for p in row] for row in preds],
                "cache": clf.cache_status}

    def search(self, query: np.ndarray | None, top_k: int, where: dict[str, str] | None = None,
               like: int | None = None) -> list[dict[str, Any]]:
        """A query embedding [D] (normalized here), or the stored vector of item `like` -> the top_k items of the
        served index, best first, among the photos `where` allows (PhotoFilter fields)."""
        from ..search.photo_store import PhotoFilter

        if self.index is None:
            raise InputError("this server has no index (start clip-rt serve with --index INDEX)")
        if like is not None:
            query = self.index.item_vector(int(like))  # [D], as indexed: nothing is embedded again
        hits = self.index.search_vector(np.asarray(query, dtype=np.float32), top_k,
                                        PhotoFilter(**where) if where else None)
        return [{"id": h.id, "file": h.file, "score": h.score, **({"time": h.time} if h.time is not None else {})}
                for h in hits]  # a video frame's hit: the video file and the frame's time (s)

    def info(self) -> dict[str, Any]:
        """The model, and the index it serves."""
        return {"model": self.model.describe(), "embed_dim": self.embed_dim, "image_size": self.model.image_size,
                "lone_twin": self.lone.describe()["tuning"] if self.lone is not self.model else None,
                "index": None if self.index is None else {"path": self.config.index, "count": len(self.index)}}

    def ping(self) -> bool:
        return True

"""`Index`: an opened index folder (image files or a text pool) searched by text, image, both, or a raw vector.

    index = Index.open("photos.index")                  # read-only; a clip-rt 0.1 index folder opens too
    model = index.open_model()                           # the package, backend and precision it was built with
    index.search(model, text="a dog on a beach", top_k=5)   # [Hit(item, score), ...], best first
    index.search_vector(vector, top_k=5)                 # a query embedding [D] of your own

Scores are cosine similarities (inner products of L2-normalized embeddings), whatever the model family's own
scoring (softmax or sigmoid are monotonic in them, so the ranking is the same). Building and updating live in
clip_rt.search.update (images) and clip_rt.search.texts (text pools).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import InputError, PackageError
from .filtered import filtered_search
from .engine import ExactEngine, FaissEngine
from .kinds import KINDS
from .legacy import LegacyStore
from .ops import faiss_available
from .store import DB, IndexFileError, Store, is_legacy
from .video_items import frames_by_id

if TYPE_CHECKING:
    from .photo_store import PhotoFilter
    from ..model import ClipModel, ImageInput

log = logging.getLogger("clip_rt.search")


@dataclass(frozen=True)
class Hit:
    item: str  # the file's absolute path (image index) or the text (text pool)
    score: float  # cosine similarity between the query and the item
    id: int = field(default=-1, compare=False)  # the item's vector id (the page's /thumb/{id}, "more like this")
    time: float | None = field(default=None, compare=False)  # a video frame: its time in the video, seconds
    video: str | None = field(default=None, compare=False)  # a video frame: the video file (item is VIDEO#t=S)

    @property
    def file(self) -> str:
        """The file of an image index's hit: the photo's path, or the video's for a video frame."""
        return self.video if self.video is not None else self.item


def not_an_index_message(root: Path) -> str:
    """Why `root` cannot be opened as an index, with the command that makes one (never one writing into a photo
    folder)."""
    if (root / "manifest.json").is_file():  # a model package: the index is built from it, into a folder of its own
        return (f"{root} is a model package, not a clip-rt index; build an index with it first, into a new folder: "
                f"clip-rt index {root} PHOTOS_DIR -o photos.index, then search that: clip-rt search photos.index "
                f"--text ...")
    if root.is_dir():
        from ..files import IMAGE_EXTENSIONS

        images = sum(1 for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if images:
            return (f"{root} is a folder of images ({images} here), not a clip-rt index; index it with: "
                    f"clip-rt index PKG {root} -o {root.name or 'photos'}.index")
    return f"{root} is not a clip-rt index (no {DB}); build one with: clip-rt index PKG DIR -o {root}"


class Index:
    """Items (files or texts), their vectors [rows, D] float32 and an engine over the live rows."""

    def __init__(self, store: Any, engine: ExactEngine | FaissEngine | None = None):
        self.store = store  # Store (an index folder) or legacy.LegacyStore (a clip-rt 0.1 folder, read-only)
        self.root: Path = store.root
        self._vectors = store.vectors()  # [rows, D] float32 (memory-mapped for Store)
        self.live = np.zeros(self._vectors.shape[0], dtype=bool)  # [rows] rows that are items (not deleted)
        self.live[store.live_ids()] = True
        self.engine = engine if engine is not None else self._open_engine()

    # -- opening ------------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, writable: bool = False) -> "Index":
        """Open an index folder. A clip-rt 0.1 folder (header.json + embeddings.npy + files.json) opens read-only;
        `clip-rt index --convert PATH` turns it into this format."""
        root = Path(path)
        if (root / DB).is_file():
            return cls(Store.open(root, writable))
        if is_legacy(root):
            if writable:
                raise IndexFileError(f"{root} is a clip-rt 0.1 index folder, which is read-only; convert it first "
                                     f"with: clip-rt index --convert {root}")
            return cls(LegacyStore.load(root))
        raise IndexFileError(not_an_index_message(root))

    load = open  # clip-rt 0.1's name

    def _open_engine(self) -> ExactEngine | FaissEngine:
        """The engine the header asks for, brought up to date with the item table if it is behind."""
        meta = self.store.meta.get("engine") or {"kind": "flat"}
        kind = KINDS.get(str(meta.get("kind", "flat")))
        if kind is None:
            log.warning("search: %s has a %r engine, a kind this clip-rt does not know (it knows %s); searching its %d "
                        "vectors exactly", self.root, meta.get("kind"), ", ".join(KINDS), len(self))
            return ExactEngine({"kind": "flat", "reason": f"unknown engine kind {meta.get('kind')!r}"})
        if not kind.stored:  # flat: the header's entry is the whole engine
            return kind.open(self.root, meta) or ExactEngine(meta)
        if kind.needs_faiss and not faiss_available():
            log.warning("search: %s has an approximate index but FAISS is not installed; searching its %d vectors "
                        "exactly with numpy (slower; pip install 'clip-rt[search]' for the fast path)",
                        self.root, len(self))
            return ExactEngine({"kind": "flat", "reason": "faiss is not installed"})
        engine = kind.open(self.root, meta)
        if not isinstance(engine, FaissEngine) or engine.meta.get("epoch") != self.store.meta.get("epoch"):
            log.warning("search: %s: the approximate index is missing or from before a compaction; searching "
                        "exactly until it is rebuilt (clip-rt index PKG DIR... -o %s --update)", self.root, self.root)
            return ExactEngine({"kind": "flat", "reason": "approximate index missing; rebuild with --update"})
        if engine.meta.get("generation") != self.store.meta.get("generation"):
            added, removed = engine.sync(self._vectors, self.store.live_ids())
            log.info("search: %s: brought the approximate index up to date (+%d, -%d vectors)", self.root,
                     added, removed)
            engine.meta["generation"] = self.store.meta.get("generation")
            if self.store.writable:
                engine.save(self.root)
        return engine

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- facts ------------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.live.sum())

    def __repr__(self) -> str:
        return (f"Index({str(self.root)!r}, kind={self.kind!r}, items={len(self)}, dim={self.dim}, "
                f"engine={self.engine.meta.get('factory') or self.engine.kind!r})")

    @property
    def kind(self) -> str:
        return str(self.store.meta.get("kind", "images"))

    @property
    def dim(self) -> int:
        return int(self.store.meta["dim"])

    @property
    def info(self) -> dict[str, Any]:
        """The header: format, kind, package path, backend, precision, embedding keys, decode, counts, engine."""
        return {**self.store.meta, "count": len(self), "engine": self.engine.meta}

    @property
    def vectors(self) -> np.ndarray:
        """float32 [rows, D] (memory-mapped); rows not in `live` are deleted items."""
        return self._vectors

    def items(self) -> list[str]:
        """Every item (path or text), in vector-id order."""
        return [row[1] for row in self.store.rows()]

    def embeddings(self, items: Sequence[str] | None = None) -> np.ndarray:
        """float32 [N, D]: the vectors of `items` (default: all, in vector-id order)."""
        rows = {item: vid for vid, item, *_ in self.store.rows()}
        wanted = list(rows) if items is None else list(items)
        missing = [x for x in wanted if x not in rows]
        if missing:
            raise InputError(f"{missing[0]!r} is not in the index {self.root}")
        return np.asarray(self._vectors[[rows[x] for x in wanted]], dtype=np.float32)

    # -- the model ----------------------------------------------------------------------------------------------------
    def check_model(self, model: "ClipModel", encoder: str) -> None:
        """Refuse a model whose `encoder` ("image" or "text") embeddings are not comparable with this index's."""
        if model.embed_dim != self.dim:
            raise IndexFileError(f"the index {self.root} holds {self.dim}-d embeddings, the model makes "
                                 f"{model.embed_dim}-d ones")
        self.store.check_key(model, encoder)

    def open_model(self, package: str | os.PathLike | None = None, **kwargs: Any) -> "ClipModel":
        """Load the package this index was built with (its recorded path unless `package` is given), with the
        backend and precision recorded in the header unless kwargs name others."""
        from ..model import load
        from ..package import Package

        opts: dict[str, Any] = {"backend": self.store.meta.get("backend") or "onnxruntime",
                                "precision": self.store.meta.get("precision") or "fp32"}
        opts.update(kwargs)
        where = package or self.store.meta.get("package")
        if not where:
            raise IndexFileError(f"the index {self.root} records no model package (it was imported from vectors); "
                                 f"name the package that made them: clip-rt search INDEX --package PKG")
        try:
            pkg = Package.open(str(where))
        except PackageError as e:
            hint = "" if package else " (the index was built with that package; if it moved, name it: clip-rt search INDEX --package PKG)"
            raise PackageError(f"{e}{hint}") from None
        self._check_artifacts(pkg, opts["precision"], opts["backend"])
        return load(pkg, **opts)

    def _check_artifacts(self, pkg: Any, precision: str, backend: str) -> None:
        """Name the artifacts a search needs that the package lacks, and the export command that adds them."""
        from ..backends.registry import backend_spec

        kind = backend_spec(backend).artifact  # the format it reads (registry row); None: eager, no artifact needed
        if kind is None:
            return
        missing = [e for e in ("text", "image") if not pkg.find(e, precision, kind)]
        if missing:
            have = sorted({f"{a.encoder} {a.precision}" for a in pkg.artifacts})
            fix = (f"clip-rt build-engine {pkg.root} --precision {precision}" if kind == "tensorrt"
                   else pkg.export_command(precision))
            raise PackageError(f"the index {self.root} holds {precision} embeddings ({backend}); the package "
                               f"{pkg.root} has no {precision} {' or '.join(missing)} artifact, needed to load the "
                               f"model for a query (it has: {', '.join(have)}); add it with: {fix}")

    def query_embedding(self, model: "ClipModel", text: str | None = None, image: "ImageInput | None" = None,
                        text_weight: float = 0.5, max_pixels: int | None = None) -> np.ndarray:
        """The normalized query vector [D]: the text's, the image's, or normalize(w * text + (1 - w) * image).
        max_pixels: the image's decompression-bomb limit (None: the default, as in encode_images)."""
        if text is None and image is None:
            raise InputError("give a text, an image, or both")
        if not 0.0 <= text_weight <= 1.0:
            raise InputError(f"text_weight must be in [0, 1], got {text_weight}")
        parts = []
        if text is not None:
            self.check_model(model, "text")
            parts.append((text_weight if image is not None else 1.0, model.encode_texts([text])[0]))  # [D]
        if image is not None:
            self.check_model(model, "image")
            from ..decode import DEFAULT_MAX_PIXELS

            limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
            parts.append((1.0 - text_weight if text is not None else 1.0,
                          model.encode_images([image], max_pixels=limit)[0]))  # [D]
        q = sum(w * v for w, v in parts)
        norm = float(np.linalg.norm(q))
        if not np.isfinite(norm) or norm == 0.0:
            raise InputError("the query embedding is zero or not finite (text and image cancel out?)")
        return np.asarray(q / norm, dtype=np.float32)  # [D]

    # -- searching ------------------------------------------------------------------------------------------------
    def search_vectors(self, queries: np.ndarray, top_k: int = 10,
                       where: "PhotoFilter | None" = None) -> list[list[Hit]]:
        """Query embeddings [nq, D] (normalized here) -> per query, the top_k items by cosine, best first.
        where: only photos it allows (folder, date range, camera; clip_rt.search.photo_store.PhotoFilter), with
        the top_k an exact search over just those would give (clip_rt.search.filtered)."""
        if not isinstance(top_k, int) or top_k < 1:
            raise InputError(f"top_k must be an int >= 1, got {top_k!r}")
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InputError(f"queries must be [nq, {self.dim}], got {list(q.shape)}")
        norms = np.linalg.norm(q, axis=1, keepdims=True)  # [nq, 1]
        if not np.all(np.isfinite(norms)) or np.any(norms == 0):
            raise InputError("a query embedding is zero or not finite")
        q = np.ascontiguousarray(q / norms)
        if where is not None and where.active:
            if self.kind != "images":
                raise InputError(f"{self.root} is a text pool; folder, date and camera filters apply to photos")
            if not hasattr(self.store, "photo_ids"):
                raise IndexFileError(f"{self.root} is a clip-rt 0.1 index folder, without photo metadata; convert it "
                                     f"with: clip-rt index --convert {self.root}")
            allowed = self.store.photo_ids(where)  # vector ids the filter allows, from SQLite: int64 [n]
            scores, ids = filtered_search(self.engine, q, top_k, self._vectors, self.live, allowed)  # [nq, k] each
        else:
            scores, ids = self.engine.search(q, top_k, self._vectors, self.live)  # [nq, k] each
        found = np.unique(ids[ids >= 0])
        names = self.store.items_by_id(found)
        frames = self._frames(found)  # {id: (video, seconds)} of the hits that are video frames
        return [[self._hit(names[int(i)], float(s), int(i), frames.get(int(i)))
                 for s, i in zip(srow, irow) if i >= 0 and int(i) in names]
                for srow, irow in zip(scores, ids)]

    def _frames(self, ids: np.ndarray) -> dict[int, tuple[str, float]]:
        if not isinstance(self.store, Store) or not len(ids):  # a clip-rt 0.1 folder holds photos only
            return {}
        with self.store._read_lock:
            return frames_by_id(self.store.conn, ids.tolist())

    @staticmethod
    def _hit(item: str, score: float, vid: int, frame: tuple[str, float] | None) -> Hit:
        return Hit(item, score, vid) if frame is None else Hit(item, score, vid, time=frame[1], video=frame[0])

    def search_vector(self, query: np.ndarray, top_k: int = 10, where: "PhotoFilter | None" = None) -> list[Hit]:
        """One query embedding [D] -> the top_k items by cosine, best first (where: as in search_vectors)."""
        return self.search_vectors(np.asarray(query, dtype=np.float32).reshape(1, -1), top_k, where)[0]

    def item_vector(self, item_id: int) -> np.ndarray:
        """The stored vector [D] of the item with this vector id ("more like this": nothing is re-embedded)."""
        if not isinstance(item_id, (int, np.integer)) or not 0 <= int(item_id) < len(self.live) \
                or not self.live[int(item_id)]:
            raise InputError(f"no item with id {item_id!r} in the index {self.root}")
        return np.array(self._vectors[int(item_id)], dtype=np.float32)  # [D]

    search_embedding = search_vector  # clip-rt 0.1's name

    def search(self, model: "ClipModel", text: str | None = None, image: "ImageInput | None" = None,
               text_weight: float = 0.5, top_k: int = 10, where: "PhotoFilter | None" = None,
               max_pixels: int | None = None) -> list[Hit]:
        """Search by text, by image (path, PIL image or array), or by both mixed with text_weight in [0, 1].
        max_pixels: the query image's decompression-bomb limit (None: encode_images' default). where: only the
        photos a PhotoFilter allows (folder, date range, camera)."""
        return self.search_vector(self.query_embedding(model, text, image, text_weight, max_pixels), top_k, where)


def open_index(path: str | os.PathLike) -> Index:
    """Open an index folder read-only (see Index.open)."""
    return Index.open(path)

"""What every index update shares: opening (or creating) the folder for writing under the model that feeds it,
and bringing the engine up to date after the item table changed (sync, re-tune, rebuild, compaction, the auto
fallback). What differs between engine kinds is asked of the kind's object (clip_rt.search.kinds), never decided
here by its name; the one name used is flat, the exact scan an index keeps where FAISS is not installed."""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..errors import ImageError, InputError
from .engine import ExactEngine, FaissEngine, remove_engine_file
from .kinds import KINDS, EngineKind, EnginePlan
from .ops import faiss, faiss_available
from .plan import plan
from .store import DB, ENCODER_OF, IndexFileError, Item, Store, is_legacy
from .tune import TARGET_RECALL, pick_queries, tune

if TYPE_CHECKING:
    from ..model import ClipModel

log = logging.getLogger("clip_rt.search")

REBUILD_GROWTH = 2.0  # retrain the approximate index when the collection grew or shrank this much since its build
RETUNE_CHANGE = 0.1  # re-measure recall and re-pick the search depth when this share of the vectors changed since
COMPACT_DEAD = 0.5  # rewrite the vectors file when more than this share of its rows are deleted items
COMPACT_MIN_ROWS = 4096  # ... and it has at least this many rows


@dataclass
class UpdateReport:
    """What an update did. `embedded` counts the inputs that went through the encoder."""

    added: int = 0  # new items
    changed: int = 0  # items whose content changed (re-embedded)
    removed: int = 0  # items dropped (files gone, texts no longer in the file, or --remove)
    unchanged: int = 0
    moved: int = 0  # new paths whose content an indexed file had: its vector was reused, nothing re-embedded
    touched: int = 0  # size or mtime changed, content (sha256) did not: nothing re-embedded
    embedded: int = 0
    repaired: int = 0  # items whose vector was missing or failed its checksum (re-embedded when still found)
    frames: int = 0  # video frames stored (near-duplicates skipped; clip_rt.search.video_items)
    errors: list[ImageError] = field(default_factory=list)
    engine: str = ""  # what happened to the vector engine

    def summary(self) -> str:
        parts = [f"{self.added} added", f"{self.changed} changed", f"{self.removed} removed",
                 f"{self.unchanged} unchanged"]
        parts += [f"{n} {what}" for n, what in ((self.moved, "moved"), (self.touched, "touched"),
                                                (self.repaired, "repaired"), (self.frames, "video frames stored")) if n]
        return ", ".join(parts) + f"; {self.embedded} embedded; engine: {self.engine}"


def stderr_progress(label: str) -> Callable[[str], None]:
    def say(message: str) -> None:
        print(f"{label}: {message}", file=sys.stderr, flush=True)
    return say


def check_output_folder(root: Path) -> None:
    """An index folder must be new, empty, or an index: never a folder of someone's files."""
    if root.exists() and not root.is_dir():
        raise InputError(f"{root} exists and is not a folder; choose another index path for -o")
    if root.is_dir() and not (root / DB).is_file():
        entries = [p.name for p in root.iterdir() if not p.name.startswith(".")]
        if entries:
            raise InputError(f"{root} already exists and is not a clip-rt index ({len(entries)} entries, e.g. "
                             f"{sorted(entries)[0]!r}); choose a new folder for -o")


def model_meta(model: "ClipModel", kind: str) -> dict[str, Any]:
    """The header entries that say what makes (and queries) the vectors."""
    precision, backend = model.backend.precision, model.backend.name
    keys = {e: model.package.embedding_key(e, precision, backend) for e in ("image", "text")}
    return {"kind": kind, "dim": int(model.embed_dim), "package": str(Path(model.package.root).resolve()),
            "backend": backend, "precision": precision, "keys": keys}


def open_for_update(root: Path, model: "ClipModel", kind: str, extra: dict[str, Any]) -> Store:
    """The index at `root` opened for writing (created when absent), refusing another kind or another model."""
    if is_legacy(root):
        raise IndexFileError(f"{root} is a clip-rt 0.1 index folder; convert it first with: "
                             f"clip-rt index --convert {root}")
    check_output_folder(root)
    if not (root / DB).is_file():
        return Store.create(root, {**model_meta(model, kind), **extra})
    store = Store.open(root, writable=True)
    if store.meta.get("kind") != kind:
        store.close()
        raise InputError(f"{root} is an index of {store.meta.get('kind')}, not of {kind}; choose another -o")
    try:
        store.check_key(model, ENCODER_OF[kind])
    except IndexFileError:
        store.close()
        raise
    return store


def refresh_engine(store: Store, index_type: str | None = None, memory_budget: int | None = None,
                   progress: Callable[[str], None] | None = None, seed: int = 0,
                   text_queries: Callable[[], np.ndarray] | None = None) -> str:
    """Bring the engine in line with the item table; returns what was done (see refresh)."""
    return refresh(store, index_type, memory_budget, progress, seed, text_queries)[0]


def refresh(store: Store, index_type: str | None = None, memory_budget: int | None = None,
            progress: Callable[[str], None] | None = None, seed: int = 0,
            text_queries: Callable[[], np.ndarray] | None = None) -> tuple[str, ExactEngine | FaissEngine]:
    """Bring the engine in line with the item table; returns what was done and the engine, ready to search.
    Compacts the vectors file first when most of its rows are dead. index_type / memory_budget: new choices
    (recorded), else the recorded ones. text_queries: called for the text query embeddings [m, D] that tuning must
    also satisfy (clip_rt.search.tune)."""
    request = dict(store.meta.get("engine_request") or {"index_type": "auto", "memory_budget": None})
    changed_request = False
    for key, value in (("index_type", index_type), ("memory_budget", memory_budget)):
        if value is not None and request.get(key) != value:
            request[key], changed_request = value, True
    if changed_request:
        store.set_meta(engine_request=request)
    rows, n = int(store.meta["rows"]), store.count()
    compacted = False
    if rows >= COMPACT_MIN_ROWS and rows - n > COMPACT_DEAD * rows:
        store.compact()
        compacted = True
    want = plan(n, store.dim, request.get("index_type") or "auto", request.get("memory_budget"))
    kind = KINDS[want.kind]
    if kind.needs_faiss and not faiss_available():
        if request.get("index_type") not in (None, "auto"):
            faiss()  # raises the missing-dependency error naming clip-rt[search]
        log.warning("search: FAISS is not installed, so %s stays an exact (numpy) index of %d vectors; pip install "
                    "'clip-rt[search]' and run the update again for an approximate one", store.root, n)
        want = plan(n, store.dim, "flat")
        kind = KINDS[want.kind]
    if not kind.stored:  # nothing built or saved (flat): the header's entry is the whole engine
        meta = {"kind": want.kind, "reason": want.reason}
        store.set_meta(engine=meta)
        remove_engine_file(store.root)
        opened = kind.open(store.root, meta)
        if opened is None:
            raise TypeError(f"the {kind.name} engine kind keeps no file but opened no engine")
        return kind.describe(want), opened
    vectors, live_ids = store.vectors(), store.live_ids()
    saved = None if compacted else _saved(store)
    built_n = int(saved.meta.get("built_n", 0)) if saved is not None else 0
    auto = (request.get("index_type") or "auto") == "auto"
    switched = auto and saved is not None and saved.kind == kind.fallback  # auto gave way to it before (below)
    if (saved is not None and (saved.kind == want.kind or switched)
            and saved.meta.get("epoch") == store.meta.get("epoch")
            and not changed_request and _within(n, built_n)):
        return _sync(store, saved, vectors, live_ids, seed, text_queries), saved
    live = np.zeros(len(vectors), dtype=bool)  # [rows]
    live[live_ids] = True
    queries = pick_queries(live_ids, seed)
    texts = text_queries() if text_queries else None
    t0 = time.perf_counter()
    limit = kind.tuning_limit(want) if auto else None
    engine = _build_tuned(kind, want, vectors, live, live_ids, queries, texts, seed, progress, limit)
    why = kind.gives_way(engine, limit) if limit is not None and kind.fallback else None
    if why:  # e.g. an IVF without cluster structure to use: try the fallback kind, keep the better of the two
        try:
            alt_plan: EnginePlan | None = plan(n, store.dim, str(kind.fallback), request.get("memory_budget"), why=why)
        except InputError:
            alt_plan = None
        if alt_plan is not None:
            if progress:
                progress(why + f"; trying {alt_plan.factory}")
            alt = _build_tuned(KINDS[alt_plan.kind], alt_plan, vectors, live, live_ids, queries, texts, seed, progress)
            engine = _better(engine, alt)
    engine.meta.update({"total_s": round(time.perf_counter() - t0, 2), "tuned_n": n, "churn": 0})
    _save(store, engine)
    return (f"{engine.meta['factory']} built in {engine.meta['total_s']:.0f} s, recall@10 "
            f"{engine.meta['recall_at_10']:.3f} on held-back queries (nprobe {engine.meta.get('nprobe')}, rerank "
            f"{engine.meta.get('k_factor')} x 10)"), engine


def _saved(store: Store) -> FaissEngine | None:
    """The saved engine the header records, or None (none, another format, unknown kind, unreadable file)."""
    meta = store.meta.get("engine") or {}
    kind = KINDS.get(str(meta.get("kind")))
    engine = kind.open(store.root, meta) if kind is not None and kind.stored else None
    return engine if isinstance(engine, FaissEngine) else None


def _sync(store: Store, engine: FaissEngine, vectors: np.ndarray, live_ids: np.ndarray, seed: int,
          text_queries: Callable[[], np.ndarray] | None) -> str:
    """Bring a saved engine that still fits the collection up to date by id, re-tuned when enough changed."""
    n, built_n = len(live_ids), int(engine.meta.get("built_n", 0))
    if engine.meta.get("generation") == store.meta.get("generation"):
        return f"{engine.meta['factory']} up to date ({n} vectors)"
    added, removed = engine.sync(vectors, live_ids)
    churn = int(engine.meta.get("churn", 0)) + added + removed
    engine.meta["churn"] = churn
    what = f"{engine.meta['factory']} updated (+{added}, -{removed} vectors; built at {built_n}, now {n})"
    if churn > RETUNE_CHANGE * int(engine.meta.get("tuned_n", built_n)):
        live = np.zeros(len(vectors), dtype=bool)  # [rows]
        live[live_ids] = True
        engine.meta.update(tune(engine, vectors, live, pick_queries(live_ids, seed), TARGET_RECALL,
                                text_queries() if text_queries else None))
        engine.meta.update({"tuned_n": n, "churn": 0})
        what += f", re-tuned: recall@10 {engine.meta['recall_at_10']:.3f}"
    _save(store, engine)
    return what


def _build_tuned(kind: EngineKind, want: EnginePlan, vectors: np.ndarray, live: np.ndarray, live_ids: np.ndarray,
                 queries: np.ndarray, texts: np.ndarray | None, seed: int, progress: Callable[[str], None] | None,
                 max_nprobe: int | None = None) -> FaissEngine:
    if progress:
        progress(f"building {want.factory} for {len(live_ids)} vectors: {want.reason}")
    engine = kind.build(want, vectors, live_ids, exclude=queries, seed=seed, progress=progress)
    if not isinstance(engine, FaissEngine):
        raise TypeError(f"the {kind.name} engine kind is stored but built a {type(engine).__name__}")
    if progress:
        progress(f"tuning the search depth on {len(queries)} held-back queries")
    engine.meta.update(tune(engine, vectors, live, queries, TARGET_RECALL, texts, max_nprobe))
    return engine


def _better(a: FaissEngine, b: FaissEngine) -> FaissEngine:
    """Of two tuned engines: the cheaper of those that reach the target, else the one with the higher recall."""
    def worst(e: FaissEngine) -> float:
        return min(float(e.meta["recall_at_10"]), float(e.meta.get("recall_at_10_text", 1.0)))

    if a.meta["reached_target"] and b.meta["reached_target"]:
        return a if a.meta["tuned_cost_bytes"] <= b.meta["tuned_cost_bytes"] else b
    if a.meta["reached_target"] != b.meta["reached_target"]:
        return a if a.meta["reached_target"] else b
    return a if worst(a) >= worst(b) else b


def import_vectors(path: str | os.PathLike, items: list[str], vectors: np.ndarray, header: dict[str, Any], *,
                   index_type: str | None = None, memory_budget: int | None = None,
                   progress: Callable[[str], None] | None = None,
                   text_queries: np.ndarray | None = None) -> UpdateReport:
    """A new index of ready-made embeddings [N, D] (normalized here) for `items`, e.g. `clip-rt embed` output or
    the scale bench's vectors. header: kind ("images"/"texts"), and what made them (package, backend, precision,
    keys) if a model is to query it; an index without keys is searched with search_vector only. text_queries: as
    update_images tunes an image index with (the model's embeddings of tune.tuning_texts())."""
    root = Path(path)
    check_output_folder(root)
    if (root / DB).is_file():
        raise InputError(f"{root} already holds an index; import into a new folder")
    vecs = np.asarray(vectors, dtype=np.float32)
    if vecs.ndim != 2 or len(vecs) != len(items) or len(set(items)) != len(items):
        raise InputError(f"import needs distinct items and vectors [N, D] for them, got {len(items)} items and "
                         f"{list(vecs.shape)}")
    store = Store.create(root, {"kind": "images", "keys": {}, **header, "dim": int(vecs.shape[1])})
    try:
        step = 1 << 16
        for start in range(0, len(items), step):
            part = vecs[start:start + step]
            part = part / np.linalg.norm(part, axis=1, keepdims=True)  # [n, D]
            store.commit([Item(x, "", "imported") for x in items[start:start + step]], part)
        report = UpdateReport(added=len(items))
        report.engine = refresh_engine(store, index_type, memory_budget, progress,
                                       text_queries=None if text_queries is None else lambda: text_queries)
    finally:
        store.close()
    return report


def _within(n: int, built_n: int) -> bool:
    return built_n > 0 and built_n / REBUILD_GROWTH <= n <= built_n * REBUILD_GROWTH


def _save(store: Store, engine: FaissEngine) -> None:
    """Write the engine (tagged with the generation and epoch it matches), then record it in the header."""
    engine.meta.update({"generation": store.meta["generation"], "epoch": store.meta.get("epoch", 0),
                        "count": int(len(engine.ids))})
    engine.save(store.root)
    store.set_meta(engine={k: v for k, v in engine.meta.items() if k != "tried"})


def scoped(item: str, roots: list[str]) -> bool:
    """True when the absolute path `item` is one of `roots` or lies under one of them."""
    return any(item == r or item.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def as_vectors(rows: list[np.ndarray], dim: int) -> np.ndarray:
    return np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, dim), np.float32)

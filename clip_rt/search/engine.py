"""The two engine shapes behind an index, with one call: queries [nq, D] -> (scores, vector ids) [nq, k], best first.

    ExactEngine   inner product with numpy over the memory-mapped vectors (no FAISS needed)
    FaissEngine   FAISS shards proposing k * k_factor candidates per query, reranked exactly from the memory-mapped
                  vectors. Vector id i lives in shard i % shards (one core each), searched and reranked in parallel
                  threads: FAISS scans the codes of one query on one thread.

What differs between FAISS kinds (training, shard count, search parameters, removal) is the kind object's
(clip_rt.search.kinds); a FaissEngine holds it as `spec` and asks it. Both engines skip dead rows (items deleted
since the vectors were written) through a boolean `live` mask [rows]; a filter over the items would narrow that
mask. The FAISS structure is saved as engine.npz (serialized shards, the ids they hold, the metadata as JSON) in
one atomic write, tagged with the index generation and vectors epoch it matches; an engine that is behind its
index is brought up to date with sync() (adds and removes by id) instead of being rebuilt.
"""

from __future__ import annotations

import io
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from ..fsutil import atomic_write_bytes
from .ops import exact_search, faiss, rerank, top_k

log = logging.getLogger("clip_rt.search")

ENGINE_FILE = "engine.npz"
ADD_CHUNK = 65536  # vectors copied from the memory map and added to FAISS at a time
_pools: dict[int, ThreadPoolExecutor] = {}


class ShardRules(Protocol):
    """What a FaissEngine and the tuner (clip_rt.search.tune) ask the engine's kind; clip_rt.search.kinds.base.FaissKind
    implements it."""

    name: str
    can_remove: bool  # FAISS removes ids from the structure (else they are tombstoned, skipped by the live mask)

    def configure(self, shard: Any, params: Mapping[str, Any]) -> None: ...

    def nlist(self, shard: Any) -> int: ...

    def probe_settings(self, engine: "FaissEngine", max_nprobe: int | None = None) -> list[dict[str, int]]: ...

    def depths(self, setting: Mapping[str, int]) -> list[tuple[int, int]]: ...

    def candidate_depth(self, setting: Mapping[str, int]) -> int: ...

    def cost(self, engine: "FaissEngine", setting: Mapping[str, int], k_factor: int, dim: int) -> float: ...


class ExactEngine:
    """Exact inner product over every live row."""

    kind = "flat"

    def __init__(self, meta: dict[str, Any] | None = None):
        self.meta = dict(meta or {"kind": "flat"})

    def search(self, queries: np.ndarray, k: int, vectors: np.ndarray, live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return exact_search(queries, k, vectors, live)


def _one_omp_thread() -> None:
    faiss().omp_set_num_threads(1)  # OpenMP settings are per thread: this one's FAISS calls stay on its core


def _pool(n: int) -> ThreadPoolExecutor:
    if n not in _pools:
        _pools[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="clip-rt-search",
                                       initializer=_one_omp_thread)
    return _pools[n]


class FaissEngine:
    """FAISS shards over the live vectors (ids = vector ids), searched for k * k_factor candidates each that are
    then reranked exactly."""

    def __init__(self, spec: ShardRules, shards: list[Any], ids: np.ndarray, meta: dict[str, Any]):
        self.spec = spec  # the engine kind (clip_rt.search.kinds)
        self.shards = shards  # FAISS indexes; vector id i lives in shards[i % len(shards)]
        self.ids = np.asarray(ids, dtype=np.int64)  # the vector ids the structure holds, ascending
        self.meta = meta  # kind, factory, shards, nprobe, k_factor, recall, generation, epoch, ...
        self.kind = str(meta["kind"])
        self.configure(meta)

    @property
    def nlist(self) -> int:
        """Inverted lists (0 for kinds without them)."""
        return self.spec.nlist(self.shards[0])

    # -- changing ------------------------------------------------------------------------------------------------
    def add(self, vectors: np.ndarray, ids: np.ndarray, progress: Callable[[str], None] | None = None) -> None:
        n = len(self.shards)
        for start in range(0, len(ids), ADD_CHUNK):
            part = np.asarray(ids[start:start + ADD_CHUNK], dtype=np.int64)
            for s, shard in enumerate(self.shards):
                mine = part[part % n == s]
                shard.add_with_ids(np.ascontiguousarray(vectors[mine], dtype=np.float32), mine)
            if progress:
                progress(f"added {min(start + ADD_CHUNK, len(ids))}/{len(ids)} vectors")
        self.ids = np.union1d(self.ids, ids)

    def remove(self, ids: np.ndarray) -> None:
        """Drop ids from the structure where the kind can (IVF); elsewhere (HNSW, the fast-scan PQ) the dead ids stay
        and the live mask skips them (a rebuild or compaction drops them)."""
        if len(ids) == 0:
            return
        if self.spec.can_remove:
            ids = np.asarray(ids, dtype=np.int64)
            for s, shard in enumerate(self.shards):
                shard.remove_ids(faiss().IDSelectorBatch(ids[ids % len(self.shards) == s]))
            self.ids = np.setdiff1d(self.ids, ids)
        else:
            self.meta["tombstones"] = int(self.meta.get("tombstones", 0)) + len(ids)

    def sync(self, vectors: np.ndarray, live_ids: np.ndarray) -> tuple[int, int]:
        """Add the live ids the structure lacks and remove the ones no longer live. Returns (added, removed)."""
        missing = np.setdiff1d(live_ids, self.ids, assume_unique=True)
        gone = np.setdiff1d(self.ids, live_ids, assume_unique=True)
        if not self.spec.can_remove:
            gone = np.zeros(0, np.int64)  # already tombstoned: the live mask hides them
        self.add(vectors, missing)
        self.remove(gone)
        return len(missing), len(gone)

    # -- searching ------------------------------------------------------------------------------------------------
    def configure(self, params: Mapping[str, Any]) -> None:
        """Set the kind's search parameters (nprobe, efSearch, ...) from `params` on every shard."""
        for shard in self.shards:
            self.spec.configure(shard, params)

    def candidates(self, queries: np.ndarray, depth: int) -> np.ndarray:
        """Vector ids [nq, shards * depth] proposed by the shards (-1 where one has fewer); FAISS releases the GIL,
        so the shards run in parallel threads."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        return np.concatenate(self._on_shards(lambda shard: shard.search(q, int(depth))[1]), axis=1)

    def search(self, queries: np.ndarray, k: int, vectors: np.ndarray, live: np.ndarray,
               k_factor: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Each shard proposes k * k_factor candidates and reranks them exactly in its own thread; the shards' best
        k are merged."""
        depth = k * int(k_factor or self.meta.get("k_factor", 8))
        q = np.ascontiguousarray(queries, dtype=np.float32)

        parts = self._on_shards(lambda shard: rerank(q, shard.search(q, depth)[1], k, vectors, live))
        if len(parts) == 1:
            return parts[0]
        scores = np.concatenate([p[0] for p in parts], axis=1)  # [nq, shards * k]
        ids = np.concatenate([p[1] for p in parts], axis=1)
        return top_k(scores, ids, k)

    def _on_shards(self, fn: Callable[[Any], Any]) -> list[Any]:
        """fn(shard) for every shard, in parallel when there are several (FAISS releases the GIL): the first shard in
        the calling thread, the others on pool threads, each FAISS call on one OpenMP thread. Measured at 1M random
        vectors on two cores: FAISS's default OpenMP team per call put 4 busy threads on 2 cores (p99 16.2 ms), one
        thread each 12.5 ms, and the caller doing a shard's share instead of waiting 11.4 ms (p50 8.8 -> 8.6 ms)."""
        if len(self.shards) == 1:
            return [fn(self.shards[0])]
        fa = faiss()
        others = [_pool(len(self.shards) - 1).submit(fn, shard) for shard in self.shards[1:]]
        threads = fa.omp_get_max_threads()
        fa.omp_set_num_threads(1)  # this thread only; given back below
        try:
            first = fn(self.shards[0])
        finally:
            fa.omp_set_num_threads(threads)
        return [first] + [f.result() for f in others]

    # -- files ------------------------------------------------------------------------------------------------------
    def save(self, root: Path) -> None:
        buf = io.BytesIO()
        shards = {f"shard{i}": faiss().serialize_index(x) for i, x in enumerate(self.shards)}
        np.savez(buf, ids=self.ids, meta=np.frombuffer(json.dumps(self.meta).encode("utf-8"), dtype=np.uint8), **shards)
        atomic_write_bytes(root / ENGINE_FILE, buf.getvalue())


def read_engine_file(root: Path) -> tuple[list[Any], np.ndarray, dict[str, Any]] | None:
    """(shards, ids, meta) of the saved FAISS structure, or None when there is none or it cannot be read (it is then
    rebuilt from the vectors)."""
    path = root / ENGINE_FILE
    if not path.is_file():
        return None
    fa = faiss()
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode("utf-8"))
            shards = [fa.deserialize_index(z[f"shard{i}"]) for i in range(int(meta.get("shards", 1)))]
            ids = z["ids"]
    except Exception as e:  # noqa: BLE001 - a damaged derived file is rebuilt, never trusted
        log.warning("search: ignoring unreadable %s (%s: %s); it will be rebuilt", path, type(e).__name__, e)
        return None
    return shards, ids, meta


def remove_engine_file(root: Path) -> None:
    try:
        os.unlink(root / ENGINE_FILE)
    except FileNotFoundError:
        pass

"""The two vector engines behind an index, with one call: queries [nq, D] -> (scores, vector ids) [nq, k], best first.

    ExactEngine   inner product with numpy over the memory-mapped vectors (no FAISS needed)
    FaissEngine   a FAISS structure (IVF + SQ8 or fast-scan PQ codes, fast-scan PQ alone, or HNSW; see plan.py)
                  proposing k * k_factor candidates per query, reranked exactly from the memory-mapped vectors.
                  Every kind but HNSW is split into shards (vector id modulo the shard count, one core each),
                  searched and reranked in parallel threads: FAISS scans the codes of one query on one thread.

Both skip dead rows (items deleted since the vectors were written) through a boolean `live` mask [rows]. The FAISS
structure is saved as engine.npz (serialized index, the ids it holds, its metadata as JSON) in one atomic write,
tagged with the index generation and vectors epoch it matches; an engine that is behind its index is brought up to
date with sync() (adds and removes by id) instead of being rebuilt.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import missing_dependency
from ..fsutil import atomic_write_bytes
from .plan import IVF_KINDS, EnginePlan
from .store import IndexFileError

log = logging.getLogger("clip_rt.search")

ENGINE_FILE = "engine.npz"
ADD_CHUNK = 65536  # vectors copied from the memory map and added to FAISS at a time
TRAIN_PER_LIST = 40  # k-means training points per inverted list (FAISS asks for at least 39; plan keeps 48 per list)
PQ_TRAIN = 65536  # training vectors for SQ ranges and PQ codebooks (at least; an IVF samples TRAIN_PER_LIST per list)
KMEANS_ITERATIONS = 10  # IVF coarse quantizer: 10 rounds reach a usable partition at a fraction of 25's cost
MAX_SHARDS = 4  # shards (all kinds but HNSW): one per usable core, at most this many
_pools: dict[int, ThreadPoolExecutor] = {}


def faiss() -> Any:  # the faiss module (untyped: FAISS ships no stubs)
    """The faiss module, or BackendUnavailable naming the extra."""
    try:
        import faiss as module
    except ImportError as e:
        raise missing_dependency(e.name or "faiss", "search", "an approximate (FAISS) index") from e
    return module


def faiss_available() -> bool:
    try:
        faiss()
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False
    return True


def top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of scores [nq, m] with their ids [nq, m] (-inf scores dropped to id -1), best first, ties by id."""
    k_eff = min(k, scores.shape[1])
    if k_eff < scores.shape[1]:
        part = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]  # [nq, k]
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    s = np.take_along_axis(scores, part, axis=1)
    i = np.take_along_axis(ids, part, axis=1)
    order = np.lexsort((i, -s), axis=1)  # by score descending, then id
    s, i = np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)
    i = np.where(np.isfinite(s), i, -1)
    return s, i


def exact_search(queries: np.ndarray, k: int, vectors: np.ndarray,
                 live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (scores, vector ids) [nq, k] over the live rows, a block of rows at a time (bounded memory for a
    memory map of any size and any number of queries)."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.full((len(queries), 0), -1, np.int64)
    step = max(1024, (1 << 24) // max(1, len(queries)))  # rows per block: ~64 MiB of scores
    for start in range(0, vectors.shape[0], step):
        stop = min(start + step, vectors.shape[0])
        s = queries @ np.asarray(vectors[start:stop]).T  # [nq, block]
        s[:, ~live[start:stop]] = -np.inf
        ids = np.broadcast_to(np.arange(start, stop, dtype=np.int64), s.shape)
        best_s, best_i = top_k(np.concatenate([best_s, s], 1), np.concatenate([best_i, ids], 1), k)
    return best_s, best_i


class ExactEngine:
    """Exact inner product over every live row."""

    kind = "flat"

    def __init__(self, meta: dict[str, Any] | None = None):
        self.meta = dict(meta or {"kind": "flat"})

    def search(self, queries: np.ndarray, k: int, vectors: np.ndarray, live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return exact_search(queries, k, vectors, live)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


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

    def __init__(self, shards: list[Any], ids: np.ndarray, meta: dict[str, Any]):
        self.shards = shards  # FAISS indexes; vector id i lives in shards[i % len(shards)]
        self.ids = np.asarray(ids, dtype=np.int64)  # the vector ids the structure holds, ascending
        self.meta = meta  # kind, factory, shards, nprobe, k_factor, recall, generation, epoch, ...
        self.kind = str(meta["kind"])
        self.configure(int(meta.get("nprobe", 1)), int(meta.get("ef_search", 64)))

    @property
    def ivf(self) -> bool:
        return self.kind in IVF_KINDS

    @property
    def nlist(self) -> int:
        return int(faiss().extract_index_ivf(self.shards[0]).nlist) if self.ivf else 0

    # -- building ------------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, plan: EnginePlan, vectors: np.ndarray, live_ids: np.ndarray, exclude: np.ndarray | None = None,
              seed: int = 0, progress: Callable[[str], None] | None = None) -> "FaissEngine":
        """Train (IVF: the coarse k-means, then the codes; pqfs: the codes) on a sample of live vectors that leaves
        out `exclude`, the tuning queries, and add every live vector under its vector id."""
        fa = faiss()
        t0 = time.perf_counter()
        dim = vectors.shape[1]
        index = fa.index_factory(dim, plan.factory, fa.METRIC_INNER_PRODUCT)
        trained_on = 0
        if plan.kind != "hnsw":
            pool = np.setdiff1d(live_ids, exclude) if exclude is not None and len(exclude) else live_ids
            rng = np.random.default_rng(seed)
            sample = np.sort(rng.choice(pool, min(len(pool), max(TRAIN_PER_LIST * plan.nlist, PQ_TRAIN)), replace=False))
            trained_on = len(sample)
            if progress:
                progress(f"training {plan.factory} on {trained_on} vectors")
            x = np.ascontiguousarray(vectors[sample], dtype=np.float32)
            if plan.ivf:
                ivf = fa.extract_index_ivf(index)
                ivf.cp.niter = KMEANS_ITERATIONS
                ivf.cp.seed = seed
                km = x if len(x) <= TRAIN_PER_LIST * plan.nlist else \
                    x[np.sort(rng.choice(len(x), TRAIN_PER_LIST * plan.nlist, replace=False))]
                fa.Clustering(dim, plan.nlist, ivf.cp).train(km, ivf.quantizer)  # the coarse k-means, every thread
            threads = fa.omp_get_max_threads()
            # The PQ step runs one tiny k-means per sub-quantizer (hundreds of them, 16 centroids each): with OpenMP
            # every iteration ends in a barrier, which on a busy machine costs more than the arithmetic. One thread.
            fa.omp_set_num_threads(1)
            try:
                index.train(x)  # IVF: the quantizer is trained already, this trains the codes on the residuals
            finally:
                fa.omp_set_num_threads(threads)
        t_train = time.perf_counter() - t0
        n_shards = 1 if plan.kind == "hnsw" else min(MAX_SHARDS, usable_cores())
        shards = [index] + [fa.clone_index(index) for _ in range(n_shards - 1)]  # trained, empty
        depth = {"ivfsq": 4, "pqfs": 64}.get(plan.kind, 8)
        engine = cls(shards, np.zeros(0, np.int64), {"kind": plan.kind, "factory": plan.factory, "reason": plan.reason,
                                                    "resident_bytes": plan.resident_bytes, "shards": n_shards,
                                                    "budget_bytes": plan.budget_bytes, "trained_on": trained_on,
                                                    "code_bytes": plan.code_bytes,
                                                    "nprobe": max(1, plan.nlist // 16), "k_factor": depth})
        engine.add(vectors, live_ids, progress)
        engine.meta.update({"train_s": round(t_train, 2), "build_s": round(time.perf_counter() - t0, 2),
                            "built_n": int(len(live_ids))})
        return engine

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
        """Drop ids from the structure (IVF); HNSW and the fast-scan PQ cannot remove, so their dead ids stay and the
        live mask skips them (a rebuild or compaction drops them)."""
        if len(ids) == 0:
            return
        if self.ivf:
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
        if not self.ivf:
            gone = np.zeros(0, np.int64)  # already tombstoned: the live mask hides them
        self.add(vectors, missing)
        self.remove(gone)
        return len(missing), len(gone)

    # -- searching ------------------------------------------------------------------------------------------------
    def configure(self, nprobe: int, ef_search: int = 64) -> None:
        fa = faiss()
        for shard in self.shards:
            if self.ivf:
                fa.extract_index_ivf(shard).nprobe = int(nprobe)
            elif self.kind == "hnsw":
                fa.ParameterSpace().set_index_parameter(shard, "efSearch", int(ef_search))

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

    @classmethod
    def load(cls, root: Path) -> "FaissEngine | None":
        """The saved engine, or None when there is none or it cannot be read (it is then rebuilt from the vectors)."""
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
        return cls(shards, ids, meta)


def rerank(queries: np.ndarray, candidates: np.ndarray, k: int, vectors: np.ndarray,
           live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores of candidate ids [nq, m] (-1 = none) from the vectors, dead ones dropped -> the top k.

    FAISS's fvec_inner_products_by_idx reads each candidate's row straight from the memory map (no gathered copy;
    it releases the GIL, so shards rerank in parallel). Not FAISS's IndexRefine: that keeps its own copy of every
    vector in memory and needs sequential ids, while the vectors already sit memory-mapped in the index's file."""
    nq, m = candidates.shape
    cand = np.array(candidates, dtype=np.int64, order="C")  # a copy: dead rows are marked in it
    ok = cand >= 0
    ok[ok] = live[cand[ok]]
    cand[~ok] = -1  # dead rows are no candidates
    q = np.ascontiguousarray(queries, dtype=np.float32)
    base = np.ascontiguousarray(vectors, dtype=np.float32)  # a memory map of float32 rows stays as it is (no copy)
    scores = np.empty((nq, m), dtype=np.float32)
    if nq and m:
        fa = faiss()
        fa.fvec_inner_products_by_idx(fa.swig_ptr(scores), fa.swig_ptr(q), fa.swig_ptr(base), fa.swig_ptr(cand),
                                      q.shape[1], nq, m)
    scores[cand < 0] = -np.inf
    return top_k(scores, np.where(cand >= 0, cand, 0), k)


def remove_engine_file(root: Path) -> None:
    try:
        os.unlink(root / ENGINE_FILE)
    except FileNotFoundError:
        pass

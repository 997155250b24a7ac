"""The numeric ground floor of search, shared by every engine kind: the lazy FAISS import, exact top-k over the
memory-mapped vectors, and the exact rerank of approximate candidates. Nothing here knows about engine kinds."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import missing_dependency


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


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


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

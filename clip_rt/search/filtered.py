"""Search restricted to the items a filter allows, with the same top-k as an exact search over just those items.

    scores, ids = filtered_search(engine, queries, k, vectors, live, allowed)   # allowed: vector ids, int64 [n]

Two ways, chosen by how many items the filter leaves:
  - few (at most EXACT_ROWS): the allowed rows are scanned exactly (a gather from the memory-mapped vectors and one
    matrix product). This is exact filtered search itself, and at the sizes a filter usually leaves (a folder, a
    month, a camera) the cheapest way too: 65,536 x 512 rows take ~10 ms, the exact engine's own limit (plan.py).
  - many: the index's own engine searches with its live mask narrowed to the allowed rows, so candidates outside the
    filter are dropped before the exact rerank; when that leaves fewer than k, the search is asked again for more
    (deeper by the share the filter removed, then doubling) until it yields k, or until it would rerank more rows
    than the filter allows, when the allowed rows are scanned exactly instead. So a result is never silently short:
    it has min(k, allowed) items, and its recall is the engine's unfiltered recall.
Ties are broken by vector id, as the engines do, so the exact path and an exact engine agree row for row.
"""

from __future__ import annotations

from typing import Any

import numpy as np

EXACT_ROWS = 65536  # allowed items scanned exactly at or below this (the exact engine's limit at D = 512)
GATHER_BLOCK = 16384  # rows copied from the memory map and scored at a time (bounded memory)


def exact_subset(queries: np.ndarray, k: int, vectors: np.ndarray,
                 allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (scores, vector ids) [nq, k'] over the rows `allowed` (ascending int64), k' = min(k, rows),
    best first, ties by id."""
    q = np.ascontiguousarray(queries, dtype=np.float32)  # [nq, D]
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.full((len(q), 0), -1, np.int64)
    for start in range(0, len(allowed), GATHER_BLOCK):
        ids = allowed[start:start + GATHER_BLOCK]  # [b]
        s = q @ np.asarray(vectors[ids], dtype=np.float32).T  # [nq, b]
        best_s, best_i = _best(np.concatenate([best_s, s], 1),
                               np.concatenate([best_i, np.broadcast_to(ids, s.shape)], 1), k)
    return best_s, best_i


def _best(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best columns per row of scores [nq, m] with their ids, by score descending then id ascending."""
    k_eff = min(k, scores.shape[1])
    if k_eff < scores.shape[1]:
        part = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
        # argpartition may cut through a run of equal scores; widen to every column tied with the k-th best so the
        # id tie-break below sees all of them.
        kth = np.take_along_axis(scores, part, axis=1).min(axis=1, keepdims=True)  # [nq, 1]
        if np.any((scores == kth).sum(axis=1) > 1):
            part = np.argsort(-scores, axis=1, kind="stable")
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    s = np.take_along_axis(scores, part, axis=1)
    i = np.take_along_axis(ids, part, axis=1)
    order = np.lexsort((i, -s), axis=1)[:, :k_eff]
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)


def filtered_search(engine: Any, queries: np.ndarray, k: int, vectors: np.ndarray, live: np.ndarray,
                    allowed: np.ndarray, exact_rows: int = EXACT_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, vector ids) [nq, k] of normalized queries [nq, D] among the live rows in `allowed` (vector ids,
    int64 [n]). engine: the index's engine (anything with search(queries, k, vectors, live)). Rows with fewer
    results than k (the filter allows fewer) end in score -inf and id -1, as the engines pad."""
    allowed = np.asarray(allowed, dtype=np.int64)
    allowed = allowed[(allowed >= 0) & (allowed < len(live))]
    allowed = allowed[live[allowed]]
    if len(allowed) <= exact_rows or getattr(engine, "kind", "flat") == "flat":
        s, i = exact_subset(queries, k, vectors, allowed)
        return _pad(s, i, k)
    mask = np.zeros_like(live)  # [rows] bool: the engine skips every row outside the filter
    mask[allowed] = True
    want = min(k, len(allowed))
    depth = int(np.ceil(k * len(live) / len(allowed)))  # as many candidates as k among the allowed share
    per_depth = int(engine.meta.get("k_factor", 8)) * int(engine.meta.get("shards", 1))  # rows reranked per unit
    while depth * per_depth < len(allowed):  # reranking more rows than that costs more than the exact scan
        s, i = engine.search(queries, depth, vectors, mask)  # [nq, depth]
        s, i = s[:, :k], i[:, :k]
        if np.all((i >= 0).sum(axis=1) >= want):
            return _pad(s, i, k)
        depth *= 2
    s, i = exact_subset(queries, k, vectors, allowed)  # the engine keeps missing: the allowed rows, exactly
    return _pad(s, i, k)


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if scores.shape[1] >= k:
        return scores[:, :k], ids[:, :k]
    extra = k - scores.shape[1]
    return (np.concatenate([scores, np.full((len(scores), extra), -np.inf, np.float32)], 1),
            np.concatenate([ids, np.full((len(ids), extra), -1, np.int64)], 1))

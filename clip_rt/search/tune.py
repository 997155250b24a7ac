"""Build-time tuning of an approximate engine: recall@10 against exact search on held-back queries.

The queries are indexed vectors held back from training (the kind's build leaves them out of the k-means and PQ
sample); each query's own row is excluded from both result lists, so recall is measured on its other neighbours.
An image index built with a model is also tuned with text queries (queries.txt: everyday photo searches, embedded
with the index's text encoder): text embeddings sit apart from image embeddings (CLIP's modality gap), so their
neighbours can need deeper probing than an image's. A setting must reach the target on both sets.
What is tried is the engine kind's (clip_rt.search.kinds): its breadth settings, cheapest first (nprobe 1, 2, 3,
4, 6, ... nlist for the IVF kinds, efSearch for HNSW, a single one for the fast-scan PQ), and at each one its rerank
depths, all measured from one candidate search at the deepest (each shard's prefix). The cheapest (setting,
k_factor) whose recall reaches the target on every set wins: its mean at least the target, and its mean less
CONFIDENCE_Z standard errors at least PROMISED_RECALL (a small or uneven set gets a wider margin). Cost is the
kind's estimate (code bytes scanned plus vectors gathered for reranking). If no setting reaches the target, the
most accurate one wins, and the header says what it reached.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np

from .kinds.base import K
from .ops import exact_search, rerank

if TYPE_CHECKING:
    from .engine import FaissEngine

log = logging.getLogger("clip_rt.search")

TARGET_RECALL = 0.96  # recall@10 against exact that tuning aims for on held-back queries: 0.95 is the promise, plus a
# margin for 256 tuning queries (their recall's standard error is ~0.004)
PROMISED_RECALL = 0.95  # ... and each tuning set's mean minus CONFIDENCE_Z standard errors must stay above this: a
CONFIDENCE_Z = 2.0  # small or uneven set (119 text phrases) needs more than the fixed margin (measured at 1M photos:
# text tuning 0.961 at nprobe 64, held-out captions 0.948)
QUERIES = 256  # held-back queries (fewer for small collections: a twentieth of them, but at least MIN_QUERIES)
MIN_QUERIES = 64  # below this a tuned recall moves by whole percents with one missed neighbour


def pick_queries(live_ids: np.ndarray, seed: int = 0) -> np.ndarray:
    n = min(QUERIES, len(live_ids), max(1, len(live_ids) // 20, min(MIN_QUERIES, len(live_ids) // 2)))
    return np.sort(np.random.default_rng(seed + 1).choice(live_ids, n, replace=False))


def exact_neighbours(vectors: np.ndarray, live: np.ndarray, query_ids: np.ndarray, k: int = K) -> np.ndarray:
    """Exact top-k vector ids [nq, k] of each query row among the live rows other than itself."""
    queries = np.ascontiguousarray(vectors[query_ids], dtype=np.float32)  # [nq, D]
    top = exact_top(vectors, live, queries, k + 1)  # [nq, k + 1]: itself is among them (a score of 1)
    return np.array([[i for i in row if i != q][:k] for row, q in zip(top, query_ids)], dtype=np.int64)


def recall_per_query(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """|found_q & truth_q| / |truth_q| for every query q (ids -1 ignored)."""
    return np.array([len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) / max(1, int((t >= 0).sum()))
                     for f, t in zip(found, truth)], dtype=np.float64)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found_q & truth_q| / |truth_q| (ids -1 ignored)."""
    hits = recall_per_query(found, truth)
    return float(hits.mean()) if len(hits) else 1.0


def lower_bound(hits: np.ndarray) -> float:
    """Mean recall less CONFIDENCE_Z standard errors of the mean (per-query recalls [nq])."""
    if len(hits) < 2:
        return float(hits.mean()) if len(hits) else 1.0
    return float(hits.mean() - CONFIDENCE_Z * hits.std(ddof=1) / np.sqrt(len(hits)))


def _reaches(hits: list[np.ndarray], target: float) -> bool:
    return all(float(h.mean()) >= target and lower_bound(h) >= min(target, PROMISED_RECALL) for h in hits)


@dataclass
class _Tried:
    """One search setting tried: its cost, and the per-query recalls of every tuning set."""

    cost: float
    setting: dict[str, int]
    hits: list[np.ndarray]  # per set: recall@10 of each query [nq]
    target: float

    @property
    def means(self) -> list[float]:
        return [float(h.mean()) if len(h) else 1.0 for h in self.hits]

    @property
    def worst(self) -> float:
        return min(self.means)

    @property
    def ok(self) -> bool:
        return _reaches(self.hits, self.target)


def tuning_texts() -> list[str]:
    """The text queries an image index is tuned with (queries.txt)."""
    text = (resources.files("clip_rt.search") / "queries.txt").read_text(encoding="utf-8")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def tune(engine: "FaissEngine", vectors: np.ndarray, live: np.ndarray, query_ids: np.ndarray,
         target: float, text_queries: np.ndarray | None = None, max_nprobe: int | None = None) -> dict[str, Any]:
    """Set the engine's search parameters for `target` recall@10 on the held-back items (and on `text_queries`
    [m, D], if given) and return what was measured (for the header). max_nprobe: probe no more lists than this
    (the auto build's limit before it tries an engine without IVF)."""
    t0 = time.perf_counter()
    truth = exact_neighbours(vectors, live, query_ids)
    queries = np.ascontiguousarray(vectors[query_ids], dtype=np.float32)
    sets = [(queries, truth, query_ids)]
    if text_queries is not None and len(text_queries):
        tq = np.ascontiguousarray(text_queries, dtype=np.float32)
        sets.append((tq, exact_top(vectors, live, tq), np.full(len(tq), -1, np.int64)))
    dim, spec, shards = vectors.shape[1], engine.spec, len(engine.shards)
    results: list[_Tried] = []
    settings = spec.probe_settings(engine, max_nprobe)  # cheapest first: nprobe, efSearch, ... (the kind's)
    for i, setting in enumerate(settings):
        engine.configure(setting)
        depths = spec.depths(setting)  # [(k_factor, candidates per shard)]
        deepest = spec.candidate_depth(setting)  # >= every depth: one search, each depth its prefix
        cands = [engine.candidates(q, deepest).reshape(len(q), shards, deepest)  # [nq, shards, deepest] per set
                 for q, _, _ in sets]
        for kf, depth in depths:  # each shard's best `depth`: what a search at that k_factor gets
            hits = [recall_per_query(_without_self(q, c[:, :, :depth].reshape(len(q), -1), vectors, live, own), t)
                    for (q, t, own), c in zip(sets, cands)]
            results.append(_Tried(spec.cost(engine, setting, kf, dim), {**setting, "k_factor": kf}, hits, target))
        if min(x.worst for x in results[-len(depths):]) >= 0.999:
            break  # a broader search cannot do better
        reaching = [x.cost for x in results if x.ok]  # costs of the settings that reach the target
        if reaching and (i + 1 == len(settings) or spec.cost(engine, settings[i + 1], spec.depths(settings[i + 1])[0][0],
                                                             dim) >= min(reaching)):
            break  # every broader search costs more than a setting that already reaches the target
    good = [x for x in results if x.ok]
    best = min(good, key=lambda x: x.cost) if good else max(results, key=lambda x: (x.worst, -x.cost))
    if not good:
        log.warning("search: tuning reached recall@10 %.3f, below the target %.2f: the memory budget leaves too "
                    "coarse codes; raise --memory-budget", best.worst, target)
    engine.meta.update(best.setting)
    engine.configure(engine.meta)
    tried = [{"recall": [round(r, 4) for r in x.means], **x.setting} for x in results]
    out = {"recall_at_10": round(best.means[0], 4), "target_recall": target, "tuning_queries": int(len(query_ids)),
           "recall_lower_bound": [round(lower_bound(h), 4) for h in best.hits], "promised_recall": PROMISED_RECALL,
           "reached_target": bool(good), "tuned_cost_bytes": int(best.cost),
           "tuning_method": "indexed vectors held back from training; each query's own row excluded",
           "tuning_s": round(time.perf_counter() - t0, 2), "tried": tried, **best.setting}
    if len(sets) > 1:
        out.update({"recall_at_10_text": round(best.means[1], 4), "tuning_text_queries": int(len(sets[1][0]))})
    return out


def exact_top(vectors: np.ndarray, live: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    """Exact top-k vector ids [nq, k] of free queries [nq, D] among the live rows."""
    return exact_search(np.ascontiguousarray(queries, dtype=np.float32), k, vectors, live)[1]


def _without_self(queries: np.ndarray, cand: np.ndarray, vectors: np.ndarray, live: np.ndarray,
                  own: np.ndarray) -> np.ndarray:
    cand = np.where(cand == own[:, None], -1, cand)
    return rerank(queries, cand, K, vectors, live)[1]

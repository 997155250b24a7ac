"""What an engine kind is: one object holding everything that differs between kinds (its sizing under a memory
budget, how it is built, its search parameters and their tuning space, what it gives way to), so that the planner
(clip_rt.search.plan), the tuner (clip_rt.search.tune) and the maintenance code (clip_rt.search.maintain) iterate
over the table in clip_rt.search.kinds instead of branching on kind names.

    EngineKind   the contract: plan() sizes the kind for N x D under a budget, build() and open() give an engine
    FaissKind    a FAISS structure in shards (engine.FaissEngine) trained on a sample, tuned for recall, saved
    IvfKind      a FaissKind with inverted lists: k-means first, nprobe to tune, ids removable, a fallback kind

A new kind is one module with a subclass (its factory string, sizing and costs) plus one row in the table.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..engine import ExactEngine, FaissEngine, read_engine_file
from ..ops import faiss, usable_cores

Engine = ExactEngine | FaissEngine

K = 10  # recall@K is what tuning measures; a search proposes K * k_factor candidates per shard
K_FACTORS = (2, 4, 8, 16, 32, 64)  # rerank depths tuning tries (kinds may override)
GATHER_COST = 4  # relative cost per byte of a reranked vector read at random from the memory map (see SCAN_COST
# on each kind: a fast-scan PQ code byte 1, an SQ8 code byte ~1.4; measured at 1M x 512 on one Zen 3 core)
TRAIN_PER_LIST = 40  # k-means training points per inverted list (FAISS asks for at least 39; plan keeps 48 per list)
MIN_IVF_TRAIN = 48  # training points per list (FAISS's k-means asks for 39; the held-back tuning queries leave room)
PQ_TRAIN = 65536  # training vectors for SQ ranges and PQ codebooks (at least; an IVF samples TRAIN_PER_LIST per list)
KMEANS_ITERATIONS = 10  # IVF coarse quantizer: 10 rounds reach a usable partition at a fraction of 25's cost
MAX_SHARDS = 4  # shards: one per usable core, at most this many


@dataclass(frozen=True)
class EnginePlan:
    """What to build for a collection, and why."""

    kind: str  # a name in the kinds table: "flat" | "ivfsq" | "pqfs" | "ivfpq" | "hnsw" | ...
    factory: str | None  # FAISS index_factory string (None for flat)
    resident_bytes: int  # estimated memory the engine keeps (codes, ids, centroids or links; flat: the vectors)
    budget_bytes: int  # the memory budget it was planned under
    reason: str  # one line for the header and logs
    nlist: int = 0  # IVF kinds: inverted lists
    pq_m: int = 0  # pqfs, ivfpq: 4-bit sub-quantizers per vector (code bytes = pq_m / 2)
    code_bytes: int = 0  # bytes of one vector's code (ivfsq: D; pqfs, ivfpq: pq_m / 2; hnsw: 4 D)


def mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n >= 1 << 20 else f"{n / 1024:.0f} KiB"


class EngineKind:
    """One engine kind. Subclasses set the class attributes and implement plan, smallest_bytes, build and open."""

    name = ""  # the --index-type value and the engine's recorded kind
    needs_faiss = True  # without FAISS installed an index of this kind is searched exactly (with a warning)
    stored = True  # a structure saved beside the vectors (engine.npz), synced, tuned and rebuilt by maintain
    auto = False  # --index-type auto considers it (in table order; the first that fits wins)
    fallback: str | None = None  # auto: the kind tried when this one cannot reach the target cheaply (gives_way)

    def plan(self, n: int, dim: int, budget: int, why: str, asked: bool) -> EnginePlan | None:
        """The plan for n x dim under `budget` bytes; why: the reason an approximate kind is used at all. When it
        does not fit: None, or (asked: the user named this kind) an InputError saying what it needs."""
        raise NotImplementedError

    def smallest_bytes(self, n: int, dim: int) -> int:
        """The least memory this kind can plan n x dim in (for the error when nothing fits)."""
        raise NotImplementedError

    def declined(self, n: int, dim: int, budget: int) -> str:
        """Why auto passed this kind over (the reason given to the kinds after it)."""
        return f"{self.name} does not fit the memory budget {mib(budget)}"

    def describe(self, plan: EnginePlan) -> str:
        """What an update reports when it keeps (or makes) an engine that needs no building."""
        return f"{plan.factory or plan.kind} ({plan.reason})"

    def build(self, plan: EnginePlan, vectors: np.ndarray, live_ids: np.ndarray, exclude: np.ndarray | None = None,
              seed: int = 0, progress: Callable[[str], None] | None = None) -> Engine:
        raise NotImplementedError

    def open(self, root: Path, meta: dict[str, Any]) -> Engine | None:
        """The engine recorded in the header (`meta`), or None when its saved structure is missing or unreadable."""
        raise NotImplementedError

    # -- the auto fallback (see maintain.refresh) ----------------------------------------------------------------
    def tuning_limit(self, plan: EnginePlan) -> int | None:
        """The most nprobe an auto build may tune up to before it tries `fallback` (None: no limit)."""
        return None

    def gives_way(self, engine: FaissEngine, limit: int) -> str | None:
        """Why the tuned engine should give way to `fallback` (None: it should not)."""
        return None


class FaissKind(EngineKind):
    """A FAISS index_factory structure in shards, trained on a sample of the live vectors (leaving out the tuning
    queries), then searched for K * k_factor candidates per shard that are reranked exactly."""

    scan_cost = 1.0  # relative cost per code byte scanned (see GATHER_COST)
    k_factors: tuple[int, ...] = K_FACTORS  # rerank depths tuning tries
    default_k_factor = 8  # the depth before tuning
    can_remove = False  # FAISS can remove ids from it (else removed items are tombstoned)
    trains = True  # the structure is trained (codes, lists) before vectors are added
    max_shards = MAX_SHARDS  # shards the vectors are split into (one per usable core, at most this many)

    # -- what the engine asks (engine.ShardRules) ---------------------------------------------------------------
    def nlist(self, shard: Any) -> int:
        return 0

    def configure(self, shard: Any, params: Mapping[str, Any]) -> None:
        """Set this kind's search parameters on one shard (nothing to set by default)."""

    # -- building -------------------------------------------------------------------------------------------------
    def train(self, index: Any, x: np.ndarray, plan: EnginePlan, rng: np.random.Generator, seed: int) -> None:
        """Train the codes on the sample x [m, D]. The PQ step runs one tiny k-means per sub-quantizer (hundreds of
        them, 16 centroids each): with OpenMP every iteration ends in a barrier, which on a busy machine costs more
        than the arithmetic. So one thread."""
        fa = faiss()
        threads = fa.omp_get_max_threads()
        fa.omp_set_num_threads(1)
        try:
            index.train(x)
        finally:
            fa.omp_set_num_threads(threads)

    def build(self, plan: EnginePlan, vectors: np.ndarray, live_ids: np.ndarray, exclude: np.ndarray | None = None,
              seed: int = 0, progress: Callable[[str], None] | None = None) -> FaissEngine:
        """Train on a sample of live vectors that leaves out `exclude`, the tuning queries, and add every live vector
        under its vector id."""
        fa = faiss()
        t0 = time.perf_counter()
        dim = vectors.shape[1]
        index = fa.index_factory(dim, plan.factory, fa.METRIC_INNER_PRODUCT)
        trained_on = 0
        if self.trains:
            pool = np.setdiff1d(live_ids, exclude) if exclude is not None and len(exclude) else live_ids
            rng = np.random.default_rng(seed)
            sample = np.sort(rng.choice(pool, min(len(pool), max(TRAIN_PER_LIST * plan.nlist, PQ_TRAIN)), replace=False))
            trained_on = len(sample)
            if progress:
                progress(f"training {plan.factory} on {trained_on} vectors")
            self.train(index, np.ascontiguousarray(vectors[sample], dtype=np.float32), plan, rng, seed)
        t_train = time.perf_counter() - t0
        n_shards = min(self.max_shards, usable_cores())
        shards = [index] + [fa.clone_index(index) for _ in range(n_shards - 1)]  # trained, empty
        engine = FaissEngine(self, shards, np.zeros(0, np.int64),
                             {"kind": plan.kind, "factory": plan.factory, "reason": plan.reason,
                              "resident_bytes": plan.resident_bytes, "shards": n_shards,
                              "budget_bytes": plan.budget_bytes, "trained_on": trained_on,
                              "code_bytes": plan.code_bytes, "nprobe": max(1, plan.nlist // 16),
                              "k_factor": self.default_k_factor})
        engine.add(vectors, live_ids, progress)
        engine.meta.update({"train_s": round(t_train, 2), "build_s": round(time.perf_counter() - t0, 2),
                            "built_n": int(len(live_ids))})
        return engine

    def open(self, root: Path, meta: dict[str, Any]) -> FaissEngine | None:
        saved = read_engine_file(root)
        if saved is None or saved[2].get("kind") != self.name:
            return None
        return FaissEngine(self, *saved)

    # -- tuning (clip_rt.search.tune) -------------------------------------------------------------------------------
    def probe_settings(self, engine: FaissEngine, max_nprobe: int | None = None) -> list[dict[str, int]]:
        """The search-breadth settings tuning tries, cheapest first (each is tried at every depth)."""
        return [{"nprobe": 1}]

    def depths(self, setting: Mapping[str, int]) -> list[tuple[int, int]]:
        """(k_factor, candidates per shard) tuning measures at one setting; +1: the query's own row takes a slot."""
        return [(kf, K * kf + 1) for kf in self.k_factors]

    def candidate_depth(self, setting: Mapping[str, int]) -> int:
        """Candidates per shard of the one search whose prefixes give every depth's recall at this setting."""
        return K * (self.k_factors[-1] + 1)

    def cost(self, engine: FaissEngine, setting: Mapping[str, int], k_factor: int, dim: int) -> float:
        """Relative cost of a search: the code bytes scanned plus the vectors gathered for reranking."""
        return (self.scan_cost * setting.get("nprobe", 1) / max(1, engine.nlist) * len(engine.ids)
                * code_size(engine.meta, dim) + GATHER_COST * len(engine.shards) * K * k_factor * 4 * dim)


class IvfKind(FaissKind):
    """A FaissKind with ~4 sqrt(N) inverted lists: the coarse k-means is trained first (on every thread), nprobe
    is tuned, removed ids leave the lists."""

    can_remove = True
    useful_fraction = 0.25  # auto: with a fallback, an IVF that needs more of its lists than this gives way to it

    def nlist(self, shard: Any) -> int:
        return int(faiss().extract_index_ivf(shard).nlist)

    def configure(self, shard: Any, params: Mapping[str, Any]) -> None:
        faiss().extract_index_ivf(shard).nprobe = int(params.get("nprobe", 1))

    def train(self, index: Any, x: np.ndarray, plan: EnginePlan, rng: np.random.Generator, seed: int) -> None:
        fa = faiss()
        ivf = fa.extract_index_ivf(index)
        ivf.cp.niter = KMEANS_ITERATIONS
        ivf.cp.seed = seed
        km = x if len(x) <= TRAIN_PER_LIST * plan.nlist else \
            x[np.sort(rng.choice(len(x), TRAIN_PER_LIST * plan.nlist, replace=False))]
        fa.Clustering(x.shape[1], plan.nlist, ivf.cp).train(km, ivf.quantizer)  # the coarse k-means, every thread
        super().train(index, x, plan, rng, seed)  # the codes, on the residuals

    def probe_settings(self, engine: FaissEngine, max_nprobe: int | None = None) -> list[dict[str, int]]:
        steps = nprobe_steps(max(1, engine.nlist))
        if max_nprobe is not None:
            steps = [p for p in steps if p <= max_nprobe] or steps[:1]
        return [{"nprobe": p} for p in steps]

    def tuning_limit(self, plan: EnginePlan) -> int | None:
        return int(self.useful_fraction * plan.nlist) if self.fallback else None

    def gives_way(self, engine: FaissEngine, limit: int) -> str | None:
        """No cluster structure to speak of: the target needs more than useful_fraction of the lists (tiny nlist:
        one list is more than that)."""
        if engine.meta["reached_target"] and int(engine.meta["nprobe"]) <= limit:
            return None
        return (f"{engine.meta['factory']} reached recall@10 {engine.meta['recall_at_10']:.3f} at nprobe "
                f"{engine.meta.get('nprobe')} of {engine.nlist} lists: no cluster structure to use")


def nlist_for(n: int) -> int:
    """~4 sqrt(N) inverted lists, a power of two, with at least MIN_IVF_TRAIN vectors each."""
    want = 4 * math.sqrt(max(n, 1))
    nlist = 2 ** max(0, round(math.log2(want)))
    while nlist > 1 and nlist * MIN_IVF_TRAIN > n:
        nlist //= 2
    return nlist


def nprobe_steps(nlist: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, 16, ... nlist: powers of two and the halfway steps between (a factor of 2 in nprobe is
    a factor of 2 in latency, too coarse a choice at the depths text queries need)."""
    steps = {min(nlist, 2 ** i) for i in range(int(np.log2(max(1, nlist))) + 1)}
    steps |= {3 * 2 ** i for i in range(int(np.log2(max(1, nlist)))) if 3 * 2 ** i < nlist}
    return sorted(steps | {nlist})


def code_size(meta: dict[str, Any], dim: int) -> int:
    """Bytes of one vector's code (engines saved before code_bytes was recorded were all IVF-PQ)."""
    if meta.get("code_bytes"):
        return int(meta["code_bytes"])
    return int(str(meta["factory"]).split("PQ")[1].split("x")[0]) // 2

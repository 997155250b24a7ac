"""Which vector engine a collection gets: exact below a size threshold, an approximate FAISS index above it,
chosen from the collection size and a memory budget (autofaiss-style); --index-type overrides the choice.

The kinds and what each costs live in clip_rt.search.kinds, one module each (flat, ivfsq, pqfs, ivfpq, hnsw). The
rule: a named kind is sized under the budget or refused with what it needs; auto takes the first kind of the table
marked `auto` that fits (flat while the vectors fit the exact-scan limit, then IVF-SQ8, then IVF-PQ), and refuses a
budget nothing fits, naming the smallest need. Search depth (nprobe, rerank depth, efSearch) is tuned at build time
on held-back queries (clip_rt.search.tune).

Memory: the budget bounds what the engine keeps resident (codes, ids, centroids, HNSW links). The float vectors
stay in the index's vectors file and are read through the page cache: all of them per query for flat, only the
reranked candidates otherwise.
"""

from __future__ import annotations

import re

from ..errors import InputError
from .kinds import KINDS, EnginePlan
from .kinds.base import mib

DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes the engine may keep resident, unless --memory-budget says otherwise


def index_types() -> tuple[str, ...]:
    """The --index-type choices: auto and every kind in the table (kinds registered later included)."""
    return ("auto", *KINDS)


INDEX_TYPES = index_types()  # the built-in choices: auto, flat, ivfsq, pqfs, ivfpq, hnsw


def parse_memory(text: str | int) -> int:
    """'512M', '2G', '1.5GiB', '1073741824' -> bytes (K, M, G, T are powers of 1024)."""
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(text), re.I)
        if not m:
            raise InputError(f"--memory-budget {text!r} is not a size like 512M, 2G or 1.5GiB")
        value = int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " "))
    if value <= 0:
        raise InputError(f"--memory-budget must be positive, got {text!r}")
    return value


def plan(n: int, dim: int, index_type: str = "auto", memory_budget: int | None = None,
         why: str | None = None) -> EnginePlan:
    """The engine for n vectors of dim dimensions under memory_budget bytes (default DEFAULT_MEMORY_BUDGET).
    why: the reason an approximate index_type was chosen, for the plan's reason (default: "asked for")."""
    if index_type not in index_types():
        raise InputError(f"--index-type must be one of {', '.join(index_types())}, got {index_type!r}")
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    if index_type != "auto":
        chosen = KINDS[index_type].plan(n, dim, budget, why or "asked for", asked=True)
        if chosen is None:  # a kind asked for either fits or says what it needs; this is a kind's own bug
            raise InputError(f"--index-type {index_type} cannot be planned for {n} x {dim}")
        return chosen
    for kind in (k for k in KINDS.values() if k.auto):
        chosen = kind.plan(n, dim, budget, why or "", asked=False)
        if chosen is not None:
            return chosen
        why = why or kind.declined(n, dim, budget)  # the first kind passed over says why the next is approximate
    smallest = min(k.smallest_bytes(n, dim) for k in KINDS.values() if k.auto)
    raise InputError(f"--memory-budget {mib(budget)} is too small for {n} vectors of {dim} dims: the most compact "
                     f"approximate index needs ~{mib(smallest)}")

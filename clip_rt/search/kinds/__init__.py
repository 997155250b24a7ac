"""The table of engine kinds: every place that needs to know the kinds (the --index-type choices, the planner,
the tuner, opening and maintaining an index) reads it, so a new kind is one new module plus one row here, or one
register() call from outside.

    KINDS["ivfsq"].plan(n, dim, budget, why, asked)   # sizing under a memory budget -> EnginePlan
    KINDS["ivfsq"].build(plan, vectors, live_ids)     # -> an engine; .open(root, header_meta) -> the saved one
    register(MyKind())                                # a kind defined elsewhere (see kinds/base.py)

Row order is --index-type's order, and auto's: the first `auto` kind that fits the budget wins.
"""

from __future__ import annotations

from .base import EngineKind, EnginePlan, FaissKind, IvfKind
from .flat import Flat
from .hnsw import Hnsw
from .ivfpq import IvfPq
from .ivfsq import IvfSq
from .pqfs import PqFastScan

KINDS: dict[str, EngineKind] = {kind.name: kind for kind in (
    Flat(),  # exact numpy scan while the vectors are small
    IvfSq(),  # IVF + SQ8 codes: auto's approximate first choice
    PqFastScan(),  # fast-scan PQ of every vector: ivfsq's fallback where the data has no cluster structure
    IvfPq(),  # IVF + fast-scan PQ codes: for budgets too small for SQ8
    Hnsw(),  # HNSW graph, only when asked for
)}


def register(kind: EngineKind) -> EngineKind:
    """Add a kind to the table (its name becomes an --index-type value). Returns it."""
    if not kind.name or kind.name == "auto" or kind.name in KINDS:
        raise ValueError(f"an engine kind needs a new name other than 'auto', got {kind.name!r}")
    KINDS[kind.name] = kind
    return kind


__all__ = ["KINDS", "EngineKind", "EnginePlan", "FaissKind", "IvfKind", "register"]

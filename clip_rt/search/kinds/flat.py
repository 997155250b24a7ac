"""flat: exact inner product, numpy over the memory-mapped vectors (FAISS not needed).

auto keeps it while the vectors, N x D float32, fit in EXACT_MAX_BYTES and in the memory budget. One query reads
them all: 128 MiB is ~10 ms on two cores, the slowest scan this rule accepts. Nothing is built or saved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..engine import ExactEngine
from .base import EngineKind, EnginePlan, mib

EXACT_MAX_BYTES = 128 << 20  # flat while N x D x 4 bytes stay under this (see the module doc)


class Flat(EngineKind):
    name = "flat"
    needs_faiss = False
    stored = False
    auto = True

    def plan(self, n: int, dim: int, budget: int, why: str, asked: bool) -> EnginePlan | None:
        need = 4 * n * dim
        if not asked and need > min(EXACT_MAX_BYTES, budget):
            return None
        why = "asked for" if asked else \
            f"{n} x {dim} float32 = {mib(need)} fits the exact-scan limit {mib(EXACT_MAX_BYTES)}"
        return EnginePlan("flat", None, need, budget, f"exact inner product ({why})")

    def smallest_bytes(self, n: int, dim: int) -> int:
        return 4 * n * dim

    def declined(self, n: int, dim: int, budget: int) -> str:
        return f"{mib(4 * n * dim)} of vectors is over the exact-scan limit"

    def describe(self, plan: EnginePlan) -> str:
        return f"exact ({plan.reason})"

    def build(self, plan: EnginePlan, vectors: np.ndarray, live_ids: np.ndarray, exclude: np.ndarray | None = None,
              seed: int = 0, progress: Callable[[str], None] | None = None) -> ExactEngine:
        return ExactEngine({"kind": "flat", "reason": plan.reason})

    def open(self, root: Path, meta: dict[str, Any]) -> ExactEngine:
        return ExactEngine(meta)

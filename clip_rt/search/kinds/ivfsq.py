"""ivfsq: IVF (nlist ~ 4 sqrt(N) lists, a power of two) over 8-bit scalar-quantized residuals (SQ8, one byte per
dimension), then the few best candidates reranked exactly from the memory-mapped vectors.

auto's first approximate choice when its codes fit the memory budget: SQ8 estimates are close enough to exact that
a shallow rerank suffices, even where neighbours differ by less than a coarse code can resolve (measured at 1M:
photo-like embeddings queried by text need SQ8; 4-bit PQ codes left recall under 0.75 however deep the rerank).
4 sqrt(N) lists rather than sqrt(N): those text queries reached 0.96 scanning 4.7% of 4096 lists, ~10% of 1024
(one core: 8 vs ~13 ms). When tuning finds it needs more than a quarter of its lists (no cluster structure, random
vectors the extreme), an auto build tries pqfs instead and keeps the better of the two.
"""

from __future__ import annotations

from ...errors import InputError
from .base import EnginePlan, IvfKind, mib, nlist_for


def ivfsq_bytes(n: int, dim: int, nlist: int) -> int:
    """Resident bytes of IVF{nlist},SQ8: one byte per dimension, 8-byte ids, float32 centroids, the SQ ranges."""
    return n * dim + 8 * n + 4 * nlist * dim + 8 * dim


class IvfSq(IvfKind):
    name = "ivfsq"
    auto = True
    fallback = "pqfs"
    scan_cost = 1.4  # an SQ8 code byte: IVF1024,SQ8 at nprobe 128 scans 64 MB in ~13 ms (one Zen 3 core)
    default_k_factor = 4

    def plan(self, n: int, dim: int, budget: int, why: str, asked: bool) -> EnginePlan | None:
        nlist = nlist_for(n)
        need = ivfsq_bytes(n, dim, nlist)
        if need <= budget:
            return EnginePlan("ivfsq", f"IVF{nlist},SQ8", need, budget,
                              f"IVF{nlist} + SQ8 codes ({mib(need)} resident, budget {mib(budget)}), exact rerank "
                              f"from the vectors file ({why})", nlist=nlist, code_bytes=dim)
        if asked:
            raise InputError(f"an IVF-SQ8 index of {n} x {dim} needs ~{mib(need)}, over --memory-budget "
                             f"{mib(budget)}; raise the budget or use --index-type ivfpq")
        return None

    def smallest_bytes(self, n: int, dim: int) -> int:
        return ivfsq_bytes(n, dim, nlist_for(n))

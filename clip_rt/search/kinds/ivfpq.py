"""ivfpq: IVF (nlist ~ 4 sqrt(N)) over 4-bit fast-scan PQ codes (PQ{M}x4fs), M the largest of D/2 ... D/16 that
fits the memory budget, then an exact rerank from the memory-mapped vectors. auto's choice for budgets too small
for ivfsq's SQ8 codes.
"""

from __future__ import annotations

from ...errors import InputError
from .base import EnginePlan, IvfKind, mib, nlist_for


def ivfpq_bytes(n: int, dim: int, nlist: int, pq_m: int) -> int:
    """Resident bytes of IVF{nlist},PQ{pq_m}x4fs: codes (fast-scan blocks of 32, rounded up per list), 8-byte ids,
    float32 centroids, and the PQ codebooks."""
    codes = (n + 32 * nlist) * pq_m // 2
    return codes + 8 * n + 4 * nlist * dim + 4 * 16 * dim


class IvfPq(IvfKind):
    name = "ivfpq"
    auto = True
    scan_cost = 1.0  # a fast-scan PQ code byte (see pqfs)
    default_k_factor = 8

    def plan(self, n: int, dim: int, budget: int, why: str, asked: bool) -> EnginePlan | None:
        nlist = nlist_for(n)
        for pq_m in (dim // 2, dim // 4, dim // 8, dim // 16):
            if pq_m < 1 or dim % pq_m:
                continue
            need = ivfpq_bytes(n, dim, nlist, pq_m)
            if need <= budget:
                return EnginePlan("ivfpq", f"IVF{nlist},PQ{pq_m}x4fs", need, budget,
                                  f"IVF{nlist} + PQ{pq_m}x4 fast-scan codes ({mib(need)} resident, budget "
                                  f"{mib(budget)}), exact rerank from the vectors file ({why})", nlist=nlist,
                                  pq_m=pq_m, code_bytes=pq_m // 2)
        if asked:
            raise InputError(f"--memory-budget {mib(budget)} is too small for {n} vectors of {dim} dims: the most "
                             f"compact approximate index needs ~{mib(self.smallest_bytes(n, dim))}")
        return None

    def smallest_bytes(self, n: int, dim: int) -> int:
        return ivfpq_bytes(n, dim, nlist_for(n), max(1, dim // 16))

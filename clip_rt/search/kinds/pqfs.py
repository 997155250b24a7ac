"""pqfs: no IVF; every vector's 4-bit product-quantization code (PQ{D/4}x4fs, D/8 bytes) scanned with FAISS's
fast-scan kernels, then a deep exact rerank.

For collections without cluster structure (random vectors are the extreme), where an IVF must probe most lists:
the whole collection's codes are smaller than most of its SQ8 lists. auto does not plan it up front; an auto build
switches to it when tuning finds ivfsq needs more than a quarter of its lists (ivfsq's fallback). FAISS cannot
remove ids from it: removed items are tombstoned and skipped by the live mask until the next rebuild.
"""

from __future__ import annotations

from ...errors import InputError
from .base import EnginePlan, FaissKind, mib

K_FACTORS_PQFS = (16, 32, 64, 128, 192, 256, 384, 512, 768, 1024)  # coarse codes of every vector: a deep rerank


def pqfs_bytes(n: int, dim: int, pq_m: int) -> int:
    """Resident bytes of IDMap,PQ{pq_m}x4fs: codes in blocks of 32, 8-byte ids, the PQ codebooks."""
    return (n + 31) // 32 * 32 * pq_m // 2 + 8 * n + 4 * 16 * dim


class PqFastScan(FaissKind):
    name = "pqfs"
    scan_cost = 1.0  # a fast-scan PQ code byte: 64 MB of PQ128x4fs codes in ~9 ms (one Zen 3 core)
    k_factors = K_FACTORS_PQFS
    default_k_factor = 64

    def plan(self, n: int, dim: int, budget: int, why: str, asked: bool) -> EnginePlan | None:
        for pq_m in (dim // 4, dim // 8, dim // 16):
            if pq_m >= 1 and dim % pq_m == 0 and pqfs_bytes(n, dim, pq_m) <= budget:
                need = pqfs_bytes(n, dim, pq_m)
                return EnginePlan("pqfs", f"IDMap,PQ{pq_m}x4fs", need, budget,
                                  f"PQ{pq_m}x4 fast-scan codes of every vector ({mib(need)} resident, budget "
                                  f"{mib(budget)}), deep exact rerank from the vectors file ({why})",
                                  pq_m=pq_m, code_bytes=pq_m // 2)
        if asked:
            raise InputError(f"--memory-budget {mib(budget)} is too small for a fast-scan PQ index of {n} x {dim}: "
                             f"it needs ~{mib(self.smallest_bytes(n, dim))}")
        return None

    def smallest_bytes(self, n: int, dim: int) -> int:
        return pqfs_bytes(n, dim, max(1, dim // 16))

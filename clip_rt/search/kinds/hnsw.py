"""hnsw: HNSW32 over the float vectors, only when asked for. Its build costs far more than the others' on two cores
(a 200k x 512 build did not finish in 11 minutes here), and it holds N x (4 D + 256) bytes. One shard (the graph is
not split), nothing trained, efSearch tuned; FAISS cannot remove from it, so removed items are tombstoned.
"""

from __future__ import annotations

from typing import Any, Mapping

from ...errors import InputError
from ..engine import FaissEngine
from ..ops import faiss
from .base import K, EnginePlan, FaissKind, mib

HNSW_M = 32  # HNSW links per node (level 0 has 2 M)
EF_SEARCH = (16, 32, 64, 128, 256, 512, 1024)  # efSearch values tuning tries


def hnsw_bytes(n: int, dim: int) -> int:
    return n * (4 * dim + 2 * HNSW_M * 4 + 16)


class Hnsw(FaissKind):
    name = "hnsw"
    trains = False
    max_shards = 1

    def plan(self, n: int, dim: int, budget: int, why: str, asked: bool) -> EnginePlan | None:
        need = hnsw_bytes(n, dim)
        if need <= budget:
            return EnginePlan("hnsw", f"IDMap2,HNSW{HNSW_M}", need, budget, f"HNSW{HNSW_M} ({why})",
                              code_bytes=4 * dim)
        if asked:
            raise InputError(f"an HNSW index of {n} x {dim} needs ~{mib(need)}, over --memory-budget {mib(budget)}; "
                             f"raise the budget or use --index-type ivfpq")
        return None

    def smallest_bytes(self, n: int, dim: int) -> int:
        return hnsw_bytes(n, dim)

    def configure(self, shard: Any, params: Mapping[str, Any]) -> None:
        faiss().ParameterSpace().set_index_parameter(shard, "efSearch", int(params.get("ef_search", 64)))

    def probe_settings(self, engine: FaissEngine, max_nprobe: int | None = None) -> list[dict[str, int]]:
        return [{"ef_search": ef} for ef in EF_SEARCH]

    def depths(self, setting: Mapping[str, int]) -> list[tuple[int, int]]:
        depth = self.candidate_depth(setting)
        return [(depth // K, depth)]

    def candidate_depth(self, setting: Mapping[str, int]) -> int:
        return max(setting["ef_search"], K * 4 + 1)  # what the graph search returns at this efSearch

    def cost(self, engine: FaissEngine, setting: Mapping[str, int], k_factor: int, dim: int) -> float:
        return setting["ef_search"] * HNSW_M * 4 * dim  # the vectors visited

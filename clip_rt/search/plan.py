"""Which vector index a collection gets: exact below a size threshold, an approximate FAISS index above it,
chosen from the collection size and a memory budget (autofaiss-style); --index-type overrides the choice.

The rule (`plan`):
  - flat (exact inner product, numpy over the memory-mapped vectors; FAISS not needed): when the vectors, N x D
    float32, fit in EXACT_MAX_BYTES and in the memory budget. One query reads them all: 128 MiB is ~10 ms on two
    cores, the slowest scan this rule accepts.
  - ivfsq: IVF (nlist ~ 4 sqrt(N) lists, a power of two) over 8-bit scalar-quantized residuals (SQ8, one byte per
    dimension), then the few best candidates reranked exactly from the memory-mapped vectors. The first choice
    when its codes fit the memory budget: SQ8 estimates are close enough to exact that a shallow rerank suffices,
    even where neighbours differ by less than a coarse code can resolve (measured at 1M: photo-like embeddings
    queried by text need SQ8; 4-bit PQ codes left recall under 0.75 however deep the rerank). 4 sqrt(N) lists rather
    than sqrt(N): those text queries reached 0.96 scanning 4.7% of 4096 lists, ~10% of 1024 (one core: 8 vs ~13 ms).
  - pqfs: no IVF; every vector's 4-bit product-quantization code (PQ{D/4}x4fs, D/8 bytes) scanned with FAISS's
    fast-scan kernels, then a deep exact rerank. For collections without cluster structure (random vectors are
    the extreme), where IVF must probe most lists: the whole collection's codes are smaller than most of its SQ8
    lists. auto does not plan it up front; the build switches to it when tuning finds ivfsq needs more than
    IVF_USEFUL_FRACTION of its lists (clip_rt.search.maintain).
  - ivfpq: IVF (nlist ~ 4 sqrt(N)) over PQ{M}x4fs codes, M the largest of D/2 ... D/16 that fits the budget: for
    budgets too small for SQ8 codes.
  - hnsw: only when asked for. HNSW32 over the float vectors; its build costs far more than the others' on two
    cores (a 200k x 512 build did not finish in 11 minutes here), and it holds N x (4 D + 256) bytes.
Search depth (nprobe, rerank depth, efSearch) is tuned at build time on held-back queries (clip_rt.search.tune)
for TARGET_RECALL.

Memory: the budget bounds what the engine keeps resident (codes, ids, centroids, HNSW links). The float vectors
stay in the index's vectors file and are read through the page cache: all of them per query for flat, only the
reranked candidates otherwise.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import InputError

INDEX_TYPES = ("auto", "flat", "ivfsq", "pqfs", "ivfpq", "hnsw")
EXACT_MAX_BYTES = 128 << 20  # flat while N x D x 4 bytes stay under this (see the module doc)
DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes the engine may keep resident, unless --memory-budget says otherwise
TARGET_RECALL = 0.96  # recall@10 against exact that tuning aims for on held-back queries: 0.95 is the promise, plus a
# margin for 256 tuning queries (their recall's standard error is ~0.004)
PROMISED_RECALL = 0.95  # ... and each tuning set's mean minus CONFIDENCE_Z standard errors must stay above this: a
CONFIDENCE_Z = 2.0  # small or uneven set (119 text phrases) needs more than the fixed margin (measured at 1M photos:
# text tuning 0.961 at nprobe 64, held-out captions 0.948)
HNSW_M = 32  # HNSW links per node (level 0 has 2 M)
MIN_IVF_TRAIN = 48  # training points per list (FAISS's k-means asks for 39; the held-back tuning queries leave room)
IVF_KINDS = ("ivfsq", "ivfpq")  # engines with inverted lists (nprobe, remove_ids)
IVF_USEFUL_FRACTION = 0.25  # auto: an IVF that needs more of its lists than this for the target gives way to pqfs


@dataclass(frozen=True)
class EnginePlan:
    """What to build for a collection, and why."""

    kind: str  # "flat" | "ivfsq" | "pqfs" | "ivfpq" | "hnsw"
    factory: str | None  # FAISS index_factory string (None for flat)
    resident_bytes: int  # estimated memory the engine keeps (codes, ids, centroids or links; flat: the vectors)
    budget_bytes: int  # the memory budget it was planned under
    reason: str  # one line for the header and logs
    nlist: int = 0  # ivfsq, ivfpq: inverted lists
    pq_m: int = 0  # pqfs, ivfpq: 4-bit sub-quantizers per vector (code bytes = pq_m / 2)
    code_bytes: int = 0  # bytes of one vector's code (ivfsq: D; pqfs, ivfpq: pq_m / 2; hnsw: 4 D)

    @property
    def ivf(self) -> bool:
        return self.kind in IVF_KINDS


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


def nlist_for(n: int) -> int:
    """~4 sqrt(N) inverted lists, a power of two, with at least MIN_IVF_TRAIN vectors each."""
    want = 4 * math.sqrt(max(n, 1))
    nlist = 2 ** max(0, round(math.log2(want)))
    while nlist > 1 and nlist * MIN_IVF_TRAIN > n:
        nlist //= 2
    return nlist


def ivfpq_bytes(n: int, dim: int, nlist: int, pq_m: int) -> int:
    """Resident bytes of IVF{nlist},PQ{pq_m}x4fs: codes (fast-scan blocks of 32, rounded up per list), 8-byte ids,
    float32 centroids, and the PQ codebooks."""
    codes = (n + 32 * nlist) * pq_m // 2
    return codes + 8 * n + 4 * nlist * dim + 4 * 16 * dim


def ivfsq_bytes(n: int, dim: int, nlist: int) -> int:
    """Resident bytes of IVF{nlist},SQ8: one byte per dimension, 8-byte ids, float32 centroids, the SQ ranges."""
    return n * dim + 8 * n + 4 * nlist * dim + 8 * dim


def pqfs_bytes(n: int, dim: int, pq_m: int) -> int:
    """Resident bytes of IDMap,PQ{pq_m}x4fs: codes in blocks of 32, 8-byte ids, the PQ codebooks."""
    return (n + 31) // 32 * 32 * pq_m // 2 + 8 * n + 4 * 16 * dim


def hnsw_bytes(n: int, dim: int) -> int:
    return n * (4 * dim + 2 * HNSW_M * 4 + 16)


def plan(n: int, dim: int, index_type: str = "auto", memory_budget: int | None = None,
         why: str | None = None) -> EnginePlan:
    """The engine for n vectors of dim dimensions under memory_budget bytes (default DEFAULT_MEMORY_BUDGET).
    why: the reason an approximate index_type was chosen, for the plan's reason (default: "asked for")."""
    if index_type not in INDEX_TYPES:
        raise InputError(f"--index-type must be one of {', '.join(INDEX_TYPES)}, got {index_type!r}")
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    flat_bytes = 4 * n * dim
    if index_type == "flat" or (index_type == "auto" and flat_bytes <= min(EXACT_MAX_BYTES, budget)):
        why = "asked for" if index_type == "flat" else \
            f"{n} x {dim} float32 = {_mib(flat_bytes)} fits the exact-scan limit {_mib(EXACT_MAX_BYTES)}"
        return EnginePlan("flat", None, flat_bytes, budget, f"exact inner product ({why})")
    if index_type == "hnsw":
        need = hnsw_bytes(n, dim)
        if need > budget:
            raise InputError(f"an HNSW index of {n} x {dim} needs ~{_mib(need)}, over --memory-budget {_mib(budget)}; "
                             f"raise the budget or use --index-type ivfpq")
        return EnginePlan("hnsw", f"IDMap2,HNSW{HNSW_M}", need, budget, f"HNSW{HNSW_M} (asked for)", code_bytes=4 * dim)
    over = why or ("asked for" if index_type != "auto"
                   else f"{_mib(flat_bytes)} of vectors is over the exact-scan limit")
    if index_type in ("auto", "ivfsq"):
        nlist = nlist_for(n)
        need = ivfsq_bytes(n, dim, nlist)
        if need <= budget:
            return EnginePlan("ivfsq", f"IVF{nlist},SQ8", need, budget,
                              f"IVF{nlist} + SQ8 codes ({_mib(need)} resident, budget {_mib(budget)}), exact rerank "
                              f"from the vectors file ({over})", nlist=nlist, code_bytes=dim)
        if index_type == "ivfsq":
            raise InputError(f"an IVF-SQ8 index of {n} x {dim} needs ~{_mib(need)}, over --memory-budget "
                             f"{_mib(budget)}; raise the budget or use --index-type ivfpq")
    if index_type == "pqfs":
        for pq_m in (dim // 4, dim // 8, dim // 16):
            if pq_m >= 1 and dim % pq_m == 0 and pqfs_bytes(n, dim, pq_m) <= budget:
                need = pqfs_bytes(n, dim, pq_m)
                return EnginePlan("pqfs", f"IDMap,PQ{pq_m}x4fs", need, budget,
                                  f"PQ{pq_m}x4 fast-scan codes of every vector ({_mib(need)} resident, budget "
                                  f"{_mib(budget)}), deep exact rerank from the vectors file ({over})",
                                  pq_m=pq_m, code_bytes=pq_m // 2)
        raise InputError(f"--memory-budget {_mib(budget)} is too small for a fast-scan PQ index of {n} x {dim}: it "
                         f"needs ~{_mib(pqfs_bytes(n, dim, max(1, dim // 16)))}")
    nlist = nlist_for(n)
    for pq_m in (dim // 2, dim // 4, dim // 8, dim // 16):
        if pq_m < 1 or dim % pq_m:
            continue
        need = ivfpq_bytes(n, dim, nlist, pq_m)
        if need <= budget:
            return EnginePlan("ivfpq", f"IVF{nlist},PQ{pq_m}x4fs", need, budget,
                              f"IVF{nlist} + PQ{pq_m}x4 fast-scan codes ({_mib(need)} resident, budget {_mib(budget)}), "
                              f"exact rerank from the vectors file ({over})", nlist=nlist, pq_m=pq_m,
                              code_bytes=pq_m // 2)
    smallest = ivfpq_bytes(n, dim, nlist, max(1, dim // 16))
    raise InputError(f"--memory-budget {_mib(budget)} is too small for {n} vectors of {dim} dims: the most compact "
                     f"approximate index needs ~{_mib(smallest)}")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n >= 1 << 20 else f"{n / 1024:.0f} KiB"

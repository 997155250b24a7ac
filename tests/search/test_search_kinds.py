"""Search engine kinds are objects in one table: a new kind is one class plus one registration line (a tiny IVF-Flat
kind defined here, doing real FAISS work, is chosen by the planner when asked for by name, built, tuned, searched and
kept up to date, with results checked against exact search); the built-in table drives --index-type and auto; and
no two modules of clip_rt.search import each other (import-linter's acyclic_siblings contract)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clip_rt.errors import InputError
from clip_rt.search import Index, import_vectors
from clip_rt.search import kinds
from clip_rt.search.engine import FaissEngine
from clip_rt.search.kinds.base import EnginePlan, IvfKind, mib, nlist_for
from clip_rt.search.maintain import refresh_engine
from clip_rt.search.plan import index_types, plan
from clip_rt.search.store import Store
from clip_rt.search.tune import recall

ROOT = Path(__file__).resolve().parents[2]


class IvfFlat(IvfKind):
    """IVF over the float vectors themselves (no codes): FAISS's IVF{nlist},Flat."""

    name = "ivfflat"
    scan_cost = 1.0
    default_k_factor = 2

    def plan(self, n: int, dim: int, budget: int, why: str, asked: bool) -> EnginePlan | None:
        nlist = nlist_for(n)
        need = self.smallest_bytes(n, dim)
        if need > budget:
            if asked:
                raise InputError(f"an IVF-Flat index of {n} x {dim} needs ~{mib(need)}, over --memory-budget")
            return None
        return EnginePlan(self.name, f"IVF{nlist},Flat", need, budget, f"IVF{nlist} over float vectors ({why})",
                          nlist=nlist, code_bytes=4 * dim)

    def smallest_bytes(self, n: int, dim: int) -> int:
        return 4 * n * dim + 8 * n + 4 * nlist_for(n) * dim


@pytest.fixture
def ivfflat():
    faiss = pytest.importorskip("faiss")
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # OpenMP spin-waits: one thread is faster on a shared 2-core machine
    kind = kinds.register(IvfFlat())  # the one registration line a new kind needs
    yield kind
    del kinds.KINDS[kind.name]
    faiss.omp_set_num_threads(before)


def unit(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_a_new_kind_is_one_class_and_one_registration(ivfflat, tmp_path):
    n, dim = 6000, 32
    assert index_types()[-1] == "ivfflat" and plan(n, dim).kind == "flat"  # a choice now; auto does not take it
    chosen = plan(n, dim, "ivfflat")
    assert (chosen.kind, chosen.factory, chosen.nlist) == ("ivfflat", "IVF64,Flat", 64)
    with pytest.raises(InputError, match="IVF-Flat .* over --memory-budget"):
        plan(n, dim, "ivfflat", memory_budget=256 << 10)
    vectors = unit(n, dim, 0)
    report = import_vectors(tmp_path / "i", [f"v{i}" for i in range(n)], vectors, {}, index_type="ivfflat")
    assert "IVF64,Flat built" in report.engine
    index = Index.open(tmp_path / "i")
    engine = index.engine
    assert isinstance(engine, FaissEngine) and engine.spec is ivfflat and engine.kind == "ivfflat"
    assert engine.nlist == 64 and engine.meta["reached_target"] and engine.meta["recall_at_10"] >= 0.96
    assert [t["nprobe"] for t in engine.meta["tried"]][0] == 1  # the tuner walked the kind's own nprobe steps
    # Fresh queries against exact search over the same vectors; scores are the exact inner products.
    queries = unit(100, dim, 1)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    hits = index.search_vectors(queries, top_k=10)
    found = np.array([[int(h.item[1:]) for h in row] for row in hits])
    assert recall(found, truth) >= 0.95
    np.testing.assert_allclose([h.score for h in hits[0]], vectors[found[0]] @ queries[0], atol=1e-6)
    # Kept up to date by id (an IVF kind removes from its lists): removed items never come back, not rebuilt.
    gone = {f"v{i}" for i in truth[0][:4]}
    store = Store.open(tmp_path / "i", writable=True)
    store.commit(remove=sorted(gone))
    assert "updated (+0, -4 vectors" in refresh_engine(store)
    store.close()
    again = Index.open(tmp_path / "i")
    assert isinstance(again.engine, FaissEngine) and len(again.engine.ids) == n - 4
    top = again.search_vector(queries[0], top_k=10)
    assert {h.item for h in top}.isdisjoint(gone) and len(top) == 10


def test_the_table_drives_the_choices():
    assert index_types() == ("auto", "flat", "ivfsq", "pqfs", "ivfpq", "hnsw")
    assert [k.name for k in kinds.KINDS.values() if k.auto] == ["flat", "ivfsq", "ivfpq"]  # auto's order
    assert kinds.KINDS["ivfsq"].fallback == "pqfs" and kinds.KINDS["pqfs"].fallback is None
    with pytest.raises(ValueError, match="new name"):
        kinds.register(kinds.KINDS["hnsw"])
    with pytest.raises(InputError, match="--index-type must be one of auto, flat, ivfsq, pqfs, ivfpq, hnsw"):
        plan(10, 8, "ivfflat")  # not registered outside the fixture above


def test_no_import_circles_in_search(tmp_path):
    """Every import statement between two modules of clip_rt.search (inside functions too) points one way."""
    pytest.importorskip("importlinter")
    config = tmp_path / "contracts.ini"
    config.write_text("[importlinter]\nroot_package = clip_rt\n\n"
                      "[importlinter:contract:search]\nname = no circles in clip_rt.search\n"
                      "type = acyclic_siblings\nancestors =\n    clip_rt.search\n", encoding="utf-8")
    proc = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), str(config), "--no-cache"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0 and "1 kept, 0 broken" in proc.stdout, proc.stdout + proc.stderr

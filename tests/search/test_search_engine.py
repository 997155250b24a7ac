"""The engine behind an index: the selection rule (size and memory budget), the FAISS IVF-PQ path on 10k random unit
vectors (the hard case: no cluster structure) with its build-time recall against exact search, HNSW on request,
a missing or stale engine file, and exact search without FAISS installed."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from clip_rt.errors import BackendUnavailable, InputError
from clip_rt.search import Index
from clip_rt.search.engine import ENGINE_FILE, ExactEngine, FaissEngine, read_engine_file
from clip_rt.search.kinds.base import nlist_for
from clip_rt.search.kinds.flat import EXACT_MAX_BYTES
from clip_rt.search.kinds.ivfpq import ivfpq_bytes
from clip_rt.search.kinds.ivfsq import ivfsq_bytes
from clip_rt.search.kinds.pqfs import pqfs_bytes
from clip_rt.search.maintain import import_vectors, refresh_engine
from clip_rt.search.ops import usable_cores
from clip_rt.search.plan import parse_memory, plan
from clip_rt.search.store import Store
from clip_rt.search.tune import _reaches, exact_neighbours, lower_bound, recall
from runtime_reference import run_lean

N, DIM = 10_000, 64


@pytest.fixture(autouse=True)
def one_faiss_thread():
    faiss = pytest.importorskip("faiss")
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # OpenMP spin-waits: one thread is faster on a shared 2-core machine
    yield
    faiss.omp_set_num_threads(before)


def unit(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def ann(tmp_path_factory):
    """An IVF-PQ index of 10k random unit vectors (ivfpq asked for: auto would search 10k exactly)."""
    root = tmp_path_factory.mktemp("ann") / "random.index"
    vectors = unit(N, DIM, 0)
    import faiss

    faiss.omp_set_num_threads(1)
    report = import_vectors(root, [f"v{i}" for i in range(N)], vectors, {}, index_type="ivfpq")
    return root, vectors, report


def test_selection_rule():
    # Exact while the vectors fit the scan limit: 65,536 x 512 float32 is 128 MiB.
    assert plan(65_536, 512).kind == "flat" and plan(65_537, 512).kind == "ivfsq"
    assert EXACT_MAX_BYTES == 128 << 20
    # Above it, IVF over SQ8 codes (one byte a dimension) while they fit the budget: ~4 sqrt(N) lists.
    one_m = plan(1_000_000, 512)
    assert (one_m.kind, one_m.nlist, one_m.code_bytes, one_m.factory) == ("ivfsq", 4096, 512, "IVF4096,SQ8")
    assert one_m.resident_bytes == ivfsq_bytes(1_000_000, 512, 4096) < 540 << 20
    # A budget too small for SQ8 codes takes IVF-PQ, coarser as it shrinks; one nothing fits is refused with the size.
    tight = plan(1_000_000, 512, memory_budget=400 << 20)
    assert (tight.kind, tight.nlist, tight.pq_m, tight.factory) == ("ivfpq", 4096, 256, "IVF4096,PQ256x4fs")
    assert tight.resident_bytes == ivfpq_bytes(1_000_000, 512, 4096, 256) < 160 << 20
    assert plan(1_000_000, 512, memory_budget=100 << 20).pq_m == 128
    assert plan(1_000_000, 512, memory_budget=40 << 20).pq_m == 32
    with pytest.raises(InputError, match=r"too small .* needs ~\d+ MiB"):
        plan(1_000_000, 512, memory_budget=10 << 20)
    with pytest.raises(InputError, match="IVF-SQ8 .* over --memory-budget"):
        plan(1_000_000, 512, "ivfsq", memory_budget=400 << 20)
    # The fast-scan PQ of every vector (auto switches to it when the IVF finds no cluster structure, see below).
    pqfs = plan(1_000_000, 512, "pqfs")
    assert (pqfs.factory, pqfs.code_bytes, pqfs.nlist) == ("IDMap,PQ128x4fs", 64, 0)
    assert pqfs.resident_bytes == pqfs_bytes(1_000_000, 512, 128) < 80 << 20
    # A budget under the exact scan's size makes even a small collection approximate.
    assert plan(50_000, 512, memory_budget=64 << 20).kind == "ivfsq"
    assert plan(10, 512, "ivfpq").nlist == 1 and nlist_for(20_000) == 256
    assert plan(10, 512, "hnsw").factory == "IDMap2,HNSW32"
    with pytest.raises(InputError, match="over --memory-budget"):
        plan(1_000_000, 512, "hnsw", memory_budget=1 << 30)
    assert parse_memory("512M") == 512 << 20 and parse_memory("1.5GiB") == 3 << 29 and parse_memory(4096) == 4096
    with pytest.raises(InputError, match="--memory-budget"):
        parse_memory("lots")


def test_ivfpq_reaches_its_recall_on_random_vectors(ann):
    root, vectors, report = ann
    index = Index.open(root)
    meta = index.engine.meta
    assert isinstance(index.engine, FaissEngine) and meta["factory"] == "IVF128,PQ32x4fs"
    assert "recall@10" in report.engine and meta["recall_at_10"] >= meta["target_recall"] == 0.96
    assert meta["tuning_queries"] == 256 and meta["generation"] == index.store.meta["generation"]
    assert meta["recall_lower_bound"][0] >= meta["promised_recall"] == 0.95
    shards = index.engine.shards  # one per usable core, vector id i in shard i % shards
    assert meta["shards"] == len(shards) == min(4, usable_cores()) and sum(x.ntotal for x in shards) == N
    # Fresh queries (not in the collection) against exact search over the same vectors.
    queries = unit(200, DIM, 1)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    found = [[int(h.item[1:]) for h in hits] for hits in index.search_vectors(queries, top_k=10)]
    got = recall(np.array(found), truth)
    print(f"\n10k x {DIM} random: build-time recall@10 {meta['recall_at_10']:.3f}, fresh queries {got:.3f} "
          f"(nprobe {meta['nprobe']}/128, rerank {meta['k_factor']} x 10)")
    assert got >= 0.95
    # Scores are exact (reranked from the vectors), best first.
    hits = index.search_vector(queries[0], top_k=10)
    np.testing.assert_allclose([h.score for h in hits], vectors[[int(h.item[1:]) for h in hits]] @ queries[0], atol=1e-6)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_concurrent_searches_match_serial_ones(ann):
    """One opened index serves several threads at once (the serve deployment shares it)."""
    import faults

    root, _, _ = ann
    index = Index.open(root)
    queries = unit(24, DIM, 9)
    serial = [index.search_vector(q, top_k=10) for q in queries]
    parallel = faults.run_in_threads(6, lambda t: [index.search_vector(q, top_k=10) for q in queries[t::6]])
    assert [parallel[i % 6][i // 6] for i in range(24)] == serial
    # Each shard's FAISS call runs on one OpenMP thread; the caller's own setting is given back after a search.
    faiss = pytest.importorskip("faiss")
    faiss.omp_set_num_threads(3)
    assert index.search_vector(queries[0], top_k=10) == serial[0] and faiss.omp_get_max_threads() == 3


def test_tuning_margin_grows_for_small_uneven_sets():
    """A setting reaches the target when each tuning set's mean is >= 0.96 and its mean less two standard errors is
    >= 0.95. The numbers of the 1M photo-like build: 119 text phrases at a mean of 0.961, most perfect and a few at
    ~0.76, did not hold on held-out captions (0.948); the rule asks for more there, not for 256 even queries."""
    even = np.full(256, 0.97)
    uneven = np.array([1.0] * 100 + [0.757] * 19)  # mean 0.9613, per-query spread 0.09
    assert abs(uneven.mean() - 0.9613) < 1e-3 and lower_bound(uneven) < 0.95 < lower_bound(even)
    assert _reaches([even], 0.96) and not _reaches([uneven], 0.96) and not _reaches([even, uneven], 0.96)
    assert not _reaches([np.full(256, 0.955)], 0.96)  # a tight set under the target still misses it
    assert _reaches([np.array([1.0] * 110 + [0.7] * 9)], 0.96)  # mean 0.977, lower bound 0.95 or more


def test_tuning_ground_truth_excludes_the_query():
    vectors = unit(500, 16, 2)
    live = np.ones(500, bool)
    live[7] = False
    truth = exact_neighbours(vectors, live, np.array([3, 10]), k=5)
    for q, row in zip((3, 10), truth):
        scores = vectors @ vectors[q]
        scores[[q, 7]] = -np.inf
        assert list(row) == list(np.argsort(-scores, kind="stable")[:5])


def test_stale_missing_and_damaged_engine(ann, tmp_path, caplog):
    import shutil

    root, vectors, _ = ann
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    # Items committed after the engine was saved (a crash before its save): synced on open, by id.
    store = Store.open(copy, writable=True)
    from clip_rt.search.store import Item

    extra = unit(3, DIM, 5)
    store.commit([Item(f"new{i}", "", "imported") for i in range(3)], extra, remove=["v0", "v1"])
    store.close()
    index = Index.open(copy)
    assert isinstance(index.engine, FaissEngine) and len(index) == N + 1
    assert index.search_vector(extra[1], top_k=1)[0].item == "new1"
    assert all(h.item not in ("v0", "v1") for h in index.search_vector(vectors[0], top_k=10))
    # No engine file: exact search, with a warning naming the command that rebuilds it.
    (copy / ENGINE_FILE).unlink()
    with caplog.at_level(logging.WARNING, logger="clip_rt.search"):
        index = Index.open(copy)
    assert isinstance(index.engine, ExactEngine) and "--update" in caplog.text
    assert index.search_vector(extra[2], top_k=1)[0].item == "new2"
    # A damaged engine file is never trusted: rebuilt by the next refresh.
    (copy / ENGINE_FILE).write_bytes(b"PK\x03\x04 not a zip")
    assert read_engine_file(copy) is None
    store = Store.open(copy, writable=True)
    what = refresh_engine(store)
    store.close()
    assert "built" in what and isinstance(Index.open(copy).engine, FaissEngine)


def test_hnsw_on_request(tmp_path):
    vectors = unit(2000, 32, 3)
    import_vectors(tmp_path / "h", [f"v{i}" for i in range(2000)], vectors, {}, index_type="hnsw")
    index = Index.open(tmp_path / "h")
    assert index.engine.kind == "hnsw" and index.engine.meta["recall_at_10"] >= index.engine.meta["target_recall"] == 0.96
    queries = unit(50, 32, 4)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    found = np.array([[int(h.item[1:]) for h in hits] for hits in index.search_vectors(queries, 10)])
    assert recall(found, truth) >= 0.95
    # HNSW cannot remove: deleted items stay in the graph and are skipped by the live mask.
    store = Store.open(tmp_path / "h", writable=True)
    store.commit(remove=[f"v{i}" for i in truth[0][:3]])
    refresh_engine(store)
    store.close()
    hits = Index.open(tmp_path / "h").search_vector(queries[0], 10)
    assert {h.item for h in hits}.isdisjoint({f"v{i}" for i in truth[0][:3]}) and len(hits) == 10


def test_exact_search_without_faiss(ann):
    """FAISS is optional: an IVF-PQ index opens and searches exactly (with a warning) where it cannot be imported,
    and asking for an approximate build there names the extra."""
    root, vectors, _ = ann
    queries = unit(3, DIM, 6)
    code = f"""
import json, numpy as np
from clip_rt.search import Index
index = Index.open({str(root)!r})
q = np.array({queries.tolist()!r}, dtype=np.float32)
hits = index.search_vectors(q, top_k=10)
try:
    from clip_rt.search.maintain import import_vectors
    import_vectors({str(root.parent / "other")!r}, ["a", "b"], q[:2], {{}}, index_type="ivfpq")
    error = None
except Exception as e:
    error = f"{{type(e).__name__}}: {{e}}"
print(json.dumps({{"kind": index.engine.kind, "hits": [[h.item for h in r] for r in hits], "error": error}}))
"""
    proc = run_lean(code)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["kind"] == "flat" and "FAISS is not installed" in proc.stderr and "clip-rt[search]" in proc.stderr
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    assert out["hits"] == [[f"v{i}" for i in row] for row in truth]
    assert out["error"].startswith(BackendUnavailable.__name__) and "pip install 'clip-rt[search]'" in out["error"]


def clustered(n: int, dim: int, centres: int, seed: int) -> np.ndarray:
    """Unit vectors around `centres` directions: the structure real embeddings have and random vectors lack."""
    rng = np.random.default_rng(seed)
    c = unit(centres, dim, seed + 100)
    x = c[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("data", ["clustered", "random"])
def test_auto_engine_follows_the_data(tmp_path, data):
    """auto above the exact limit (forced here by a budget under the vectors' size): IVF-SQ8 where the vectors
    cluster; on random vectors the IVF would need most of its lists, so the build tries the fast-scan PQ of every
    vector and keeps it. Either way recall@10 on fresh queries against exact search holds."""
    n, dim = 50_000, 128
    vectors = clustered(n, dim, 300, 11) if data == "clustered" else unit(n, dim, 12)
    report = import_vectors(tmp_path / "i", [f"v{i}" for i in range(n)], vectors, {}, memory_budget=8 << 20)
    index = Index.open(tmp_path / "i")
    meta = index.engine.meta
    if data == "clustered":
        assert meta["factory"] == "IVF1024,SQ8" and meta["nprobe"] <= 256 and "no cluster structure" not in meta["reason"]
    else:
        assert meta["factory"] == "IDMap,PQ32x4fs" and "no cluster structure" in meta["reason"]
        assert "nprobe" in meta["reason"] and meta["k_factor"] >= 16
    assert meta["reached_target"] and meta["recall_at_10"] >= 0.96 and "recall@10" in report.engine
    queries = clustered(200, dim, 300, 11)[::-1] if data == "clustered" else unit(200, dim, 13)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    found = np.array([[int(h.item[1:]) for h in hits] for hits in index.search_vectors(queries, 10)])
    assert recall(found, truth) >= 0.95
    # Removed items never come back (IVF: removed from the lists; pqfs: tombstoned, skipped by the live mask).
    gone = {f"v{i}" for i in truth[0][:5]}
    store = Store.open(tmp_path / "i", writable=True)
    store.commit(remove=sorted(gone))
    assert "updated" in refresh_engine(store)  # the same engine, brought up to date, not rebuilt
    store.close()
    hits = Index.open(tmp_path / "i").search_vector(queries[0], 10)
    assert {h.item for h in hits}.isdisjoint(gone) and len(hits) == 10

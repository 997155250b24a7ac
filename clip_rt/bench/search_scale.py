"""The search scale bench: for 100k and 1M vectors, build time, memory, single-query latency p50/p99 and recall@10
against exact search, for random unit vectors and for photo-like embeddings queried by text and by image.

    doc = run_scale(ScaleConfig(sizes=(100_000, 1_000_000), package="pkg", data="../shared/data"))

Collections:
  random   unit vectors drawn uniformly on the sphere (the hard case: no structure for an index to use); the
           queries are fresh random unit vectors.
  photos   the shared photos (cifar10, caltech101, flickr8k and their mirror images) embedded with the package,
           then grown to N by drawing around them: each vector is a real embedding plus Gaussian noise shaped like
           the real embeddings' covariance, scaled so that its expected squared distance from its parent equals
           the one measured between a photo and two random crops of it; then normalized. The queries are real:
           text queries are the Flickr8k captions and "a photo of a {class}." for the ImageNet, Caltech101 and
           CIFAR-10 classes, image queries the 300 ImageNet-sample photos and their mirror images, which are left
           out of the parents. (There are not a million real photos here; this keeps the real embeddings'
           anisotropy and local spread, not their long-range cluster structure.)
Each row builds a fresh index with clip_rt.search's own rules (import_vectors: vectors file, SQLite, engine chosen
by plan, trained, tuned), opens it as a searcher would, and times Index.search_vector one query at a time.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .memory import peak_rss_mb, reset_peak
from .report import latency_stats, machine_info

if TYPE_CHECKING:
    from ..model import ClipModel

COLLECTIONS = ("random", "photos")
CHUNK = 65536  # vectors generated and normalized at a time


@dataclass(frozen=True)
class ScaleConfig:
    """One scale bench run."""

    work: str  # folder for the generated vectors, cached photo embeddings and the indexes built
    sizes: tuple[int, ...] = (100_000, 1_000_000)  # collection sizes
    collections: tuple[str, ...] = COLLECTIONS
    dim: int = 512  # dimension of the random collection (photos: the package's)
    package: str | None = None  # model package for the photos collection (ViT-B/32-sized for realistic numbers)
    data: str | None = None  # the shared data folder (cifar10/, caltech101/, flickr8k/, imagenet_sample/)
    queries: int = 1000  # timed single queries per row (drawn, with repeats, from the query set)
    warmup: int = 20  # untimed queries before timing
    index_type: str = "auto"  # passed to the index build (auto: the library's own choice)
    memory_budget: int | None = None  # bytes; None: the library's default
    threads: int | None = None  # FAISS OpenMP threads; None: FAISS's default (the usable cores)
    seed: int = 0
    keep: bool = False  # keep the indexes built (else each is deleted after its row)


def _log(message: str) -> None:
    print(f"bench-search: {message}", file=sys.stderr, flush=True)


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_vectors(path: Path, n: int, dim: int, make: Any) -> np.ndarray:
    """make(start, count) -> float32 [count, dim], written chunk by chunk into a memory-mapped file [n, dim]."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for start in range(0, n, CHUNK):
        out[start:start + CHUNK] = make(start, min(CHUNK, n - start))
    out.flush()
    return np.load(path, mmap_mode="r")


# -- the photo collection ---------------------------------------------------------------------------------------
def _flip(path: str) -> Any:
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def _crops(path: str, rng: np.random.Generator, n: int) -> list[Any]:
    """n random crops covering 50-90% of the photo's area, anywhere in it."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        out = []
        for _ in range(n):
            s = float(np.sqrt(rng.uniform(0.5, 0.9)))
            w, h = max(1, int(im.width * s)), max(1, int(im.height * s))
            x, y = int(rng.integers(0, im.width - w + 1)), int(rng.integers(0, im.height - h + 1))
            out.append(im.crop((x, y, x + w, y + h)))
        return out


def photo_embeddings(model: "ClipModel", data: Path, cache: Path, seed: int) -> dict[str, np.ndarray]:
    """The real embeddings the photo collection grows from (cached per package encoder in `cache`)."""
    from ..search.texts import read_texts

    key = model.package.embedding_key("image", model.backend.precision, model.backend.name)
    path = cache / f"photo-embeddings-{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    rng = np.random.default_rng(seed)
    parents_src = [str(p) for d in ("cifar10", "caltech101", "flickr8k") for p in sorted((data / d / "images").iterdir())]
    held_out = [str(p) for p in sorted((data / "imagenet_sample" / "images").iterdir())]
    _log(f"embedding {len(parents_src)} photos and their mirror images (parents), {len(held_out)} held-out query "
         f"photos, random crops of 300 photos; cached in {path}")
    t0 = time.perf_counter()
    parents = np.concatenate([model.encode_images(parents_src), model.encode_images([_flip(p) for p in parents_src])])
    queries = np.concatenate([model.encode_images(held_out), model.encode_images([_flip(p) for p in held_out])])
    sample = [parents_src[i] for i in rng.choice(len(parents_src), 300, replace=False)]
    originals = model.encode_images(sample)  # [300, D]
    crops = model.encode_images([c for p in sample for c in _crops(p, rng, 2)]).reshape(300, 2, -1)  # [300, 2, D]
    spread = float(np.mean(np.sum((crops - originals[:, None]) ** 2, axis=-1)))
    classes = [c for d in ("imagenet_sample", "caltech101", "cifar10")
               for c in (data / d / "classes.txt").read_text(encoding="utf-8").splitlines() if c.strip()]
    texts = read_texts(data / "flickr8k" / "captions.csv") + [f"a photo of a {c}." for c in dict.fromkeys(classes)]
    text = model.encode_texts(texts)
    _log(f"embedded in {time.perf_counter() - t0:.0f} s")
    out = {"parents": parents, "image_queries": queries, "text_queries": text, "spread": np.array(spread)}
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def grow(parents: np.ndarray, spread: float, rng: np.random.Generator) -> Any:
    """make(start, count) drawing normalize(parent + sigma * L z): L from the parents' covariance, sigma so that
    E|sigma L z|^2 = spread (a photo's squared distance from its crops)."""
    cov = np.cov(parents, rowvar=False)  # [D, D]
    lam, vec = np.linalg.eigh(cov)
    shape = (vec * np.sqrt(np.clip(lam, 0, None))).astype(np.float32)  # [D, D]: z @ shape.T ~ N(0, cov)
    sigma = float(np.sqrt(spread / max(float(lam.sum()), 1e-12)))

    def make(start: int, count: int) -> np.ndarray:
        base = parents[rng.integers(0, len(parents), count)]  # [count, D]
        x = base + sigma * (rng.standard_normal((count, parents.shape[1]), dtype=np.float32) @ shape.T)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return make


# -- one row ----------------------------------------------------------------------------------------------------
def exact_top10(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Exact top-10 row ids [nq, 10] by inner product (the library's exact search: ~64 MiB of scores at a time; the
    bench's own version, 262,144 rows x every query at once, took 19 GB for 2,582 queries and was OOM-killed)."""
    from ..search.ops import exact_search

    return exact_search(np.ascontiguousarray(queries, dtype=np.float32), 10, vectors,
                        np.ones(len(vectors), dtype=bool))[1]


def measure(index: Any, queries: np.ndarray, truth: np.ndarray, cfg: ScaleConfig) -> dict[str, Any]:
    """Single-query latency (search_vector, item names included) and recall@10 against exact."""
    rng = np.random.default_rng(cfg.seed + 7)
    order = rng.integers(0, len(queries), cfg.queries + cfg.warmup)
    reset_peak()
    seconds, found = [], {}
    for j, qi in enumerate(order):
        t0 = time.perf_counter()
        hits = index.search_vector(queries[qi], top_k=10)
        dt = time.perf_counter() - t0
        if j >= cfg.warmup:
            seconds.append(dt)
        found[int(qi)] = {int(h.item[1:]) for h in hits}
    recall = float(np.mean([len(found[q] & set(truth[q].tolist())) / 10 for q in found]))
    return {"queries": int(cfg.queries), "distinct_queries": len(found), "recall_at_10": round(recall, 4),
            **{k: round(v, 3) for k, v in latency_stats(seconds).items()},
            "qps_single": round(1.0 / float(np.mean(seconds)), 1), "peak_rss_mb_search": round(peak_rss_mb(), 1)}


def run_row(cfg: ScaleConfig, collection: str, n: int, vectors: np.ndarray, query_sets: dict[str, np.ndarray],
            tuning: np.ndarray | None) -> list[dict[str, Any]]:
    from ..search import Index
    from ..search.maintain import import_vectors

    root = Path(cfg.work) / f"index-{collection}-{n}"
    shutil.rmtree(root, ignore_errors=True)
    _log(f"{collection} n={n}: building the index")
    reset_peak()
    t0 = time.perf_counter()
    import_vectors(root, [f"v{i}" for i in range(n)], vectors, {"kind": "images"}, index_type=cfg.index_type,
                   memory_budget=cfg.memory_budget, progress=_log, text_queries=tuning)
    build_s = time.perf_counter() - t0
    build_peak = peak_rss_mb()
    t0 = time.perf_counter()
    index = Index.open(root)
    open_s = time.perf_counter() - t0
    engine = index.engine.meta
    engine_file = root / "engine.npz"
    common = {"collection": collection, "n": n, "dim": int(vectors.shape[1]), "engine": engine.get("factory") or "flat",
              "nprobe": engine.get("nprobe"), "k_factor": engine.get("k_factor"),
              "build_s": round(build_s, 1), "engine_build_s": engine.get("total_s"), "train_s": engine.get("train_s"),
              "tuning_recall_at_10": engine.get("recall_at_10"), "open_s": round(open_s, 2),
              "engine_mb": round(engine_file.stat().st_size / 2**20, 1) if engine_file.is_file() else 0.0,
              "engine_resident_mb_planned": round(int(engine.get("resident_bytes", 0)) / 2**20, 1),
              "vectors_mb": round(4 * n * vectors.shape[1] / 2**20, 1), "peak_rss_mb_build": round(build_peak, 1)}
    rows = []
    for kind, queries in query_sets.items():
        _log(f"{collection} n={n}: exact top-10 of {len(queries)} {kind} queries")
        truth = exact_top10(vectors, queries)
        _log(f"{collection} n={n}: {cfg.queries} timed {kind} queries")
        rows.append({**common, "query": kind, **measure(index, queries, truth, cfg)})
        _log(f"  -> recall@10 {rows[-1]['recall_at_10']:.3f}, p50 {rows[-1]['latency_ms_median']:.2f} ms, "
             f"p99 {rows[-1]['latency_ms_p99']:.2f} ms")
    index.close()
    if not cfg.keep:
        shutil.rmtree(root, ignore_errors=True)
    return rows


def run_scale(cfg: ScaleConfig) -> dict[str, Any]:
    """Every (collection, size) row; returns the result document."""
    work = Path(cfg.work)
    work.mkdir(parents=True, exist_ok=True)
    if cfg.threads is not None:
        from ..search.ops import faiss

        faiss().omp_set_num_threads(cfg.threads)
    rows: list[dict[str, Any]] = []
    collections: dict[str, tuple[Any, dict[str, np.ndarray], int, np.ndarray | None]] = {}
    for name in cfg.collections:
        rng = np.random.default_rng(cfg.seed)
        if name == "random":
            queries = unit_rows(np.random.default_rng(cfg.seed + 1), 1000, cfg.dim)
            collections[name] = (lambda start, count, r=rng: unit_rows(r, count, cfg.dim), {"image": queries}, cfg.dim,
                                 None)
        elif name == "photos":
            from ..errors import InputError
            from ..model import load
            from ..search.tune import tuning_texts

            if not cfg.package or not cfg.data:
                raise InputError("the photos collection needs --package and --data")
            model = load(cfg.package)
            real = photo_embeddings(model, Path(cfg.data), work, cfg.seed)
            # Tuned as update_images tunes an image index: with the model's embeddings of the built-in phrases
            # (clip_rt/search/queries.txt), never with the bench's own query sets.
            tuning = model.encode_texts(tuning_texts())
            collections[name] = (grow(real["parents"], float(real["spread"]), rng),
                                 {"text": real["text_queries"], "image": real["image_queries"]},
                                 int(real["parents"].shape[1]), tuning)
        else:
            from ..errors import InputError

            raise InputError(f"unknown collection {name!r}; choose from {', '.join(COLLECTIONS)}")
    for name, (make, query_sets, dim, tuning) in collections.items():
        for n in cfg.sizes:
            vectors = write_vectors(work / f"vectors-{name}-{n}-{cfg.seed}.npy", n, dim, make)
            rows.extend(run_row(cfg, name, n, vectors, query_sets, tuning))
            del vectors
            (work / f"vectors-{name}-{n}-{cfg.seed}.npy").unlink(missing_ok=True)
    from ..search.ops import faiss_available

    threads = None
    if faiss_available():
        from ..search.ops import faiss

        threads = faiss().omp_get_max_threads()
    return {"machine": machine_info(), "config": asdict(cfg), "faiss_threads": threads, "rows": rows,
            "method": __doc__.split("\n\n", 1)[1].strip() if __doc__ else ""}


def markdown(doc: dict[str, Any]) -> str:
    head = ["collection", "N", "queries", "engine", "build s", "recall@10", "p50 ms", "p99 ms", "engine MiB",
            "vectors MiB", "peak RSS MiB (build / search)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in doc["rows"]:
        engine = r["engine"] + (f" nprobe {r['nprobe']} rerank {r['k_factor']}x10" if r.get("nprobe") else "")
        lines.append("| " + " | ".join(str(x) for x in (
            r["collection"], f"{r['n']:,}", r["query"], engine, r["build_s"], f"{r['recall_at_10']:.3f}",
            f"{r['latency_ms_median']:.2f}", f"{r['latency_ms_p99']:.2f}", r["engine_mb"], r["vectors_mb"],
            f"{r['peak_rss_mb_build']:.0f} / {r['peak_rss_mb_search']:.0f}")) + " |")
    return "\n".join(lines)

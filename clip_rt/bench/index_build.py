"""The index build-rate bench: images/s of `clip-rt index` on full-size phone photos, decode="fast" against the
exact-decode path, and how close the fast path's embeddings are.

    doc = run_build(BuildConfig(package="pkg", data="../shared/data", work="/tmp/bench", images=1000))

The photos are made once (cached in `work`): shared photos (caltech101, imagenet_sample, flickr8k) enlarged to
4000 x 3000 (their centred 4:3 box) with Pillow's bicubic filter, light sensor-like noise added (Gaussian, sigma 2 levels,
one field shifted per photo: an enlarged photo is unnaturally smooth, and smooth JPEGs decode faster than camera
ones), saved as JPEG quality 90.
The files are read once before timing so both paths find them in the page cache. Then the set is cut into blocks;
each block is indexed by both paths (update_images into a fresh folder: scan, hash, decode on the thread pool while
the encoder runs, encode, commit), the path that goes first alternating from block to block, so that machine noise
falls on both. Also reported: decode + resize per image on one thread (prepare), each path; the encoder's own rate on
a batch decoded beforehand (the most any decode path could reach on this machine); and how much the fast path changes
retrieval: the overlap of the top-10 photos for each Flickr8k caption between the two indexes.
"""

from __future__ import annotations

import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .memory import peak_rss_mb, reset_peak
from .report import machine_info

SOURCES = ("caltech101", "imagenet_sample", "flickr8k")


@dataclass(frozen=True)
class BuildConfig:
    """One build-rate run."""

    package: str  # model package (ViT-B/32-sized for realistic encoder cost)
    data: str  # the shared data folder
    work: str  # where the full-size photos are made (kept for reruns) and the indexes built
    images: int = 1000  # full-size photos indexed by each path
    width: int = 4000  # 12 megapixels at 4000 x 3000
    height: int = 3000
    block: int = 100  # photos per block; the paths alternate block by block
    precision: str = "fp32"
    backend: str = "onnxruntime"
    threads: int | None = None  # encoder intra-op threads; None: the backend's default
    batch_size: int = 32
    decode_samples: int = 20  # photos timed for decode + resize alone, on one thread
    seed: int = 0


def _log(message: str) -> None:
    print(f"bench-search build: {message}", file=sys.stderr, flush=True)


_NOISE: dict[tuple[int, int], np.ndarray] = {}  # per worker process: one noise field, shifted per photo


def _noise(width: int, height: int, seed: int) -> np.ndarray:
    """Sensor-like noise for a photo: a fixed Gaussian field (sigma 2 levels, int16), rolled by a seeded offset."""
    if (width, height) not in _NOISE:
        _NOISE[(width, height)] = np.round(np.random.default_rng(12345).normal(0.0, 2.0, (height, width, 3)))\
            .astype(np.int16)
    rng = np.random.default_rng(seed)
    return np.roll(_NOISE[(width, height)], (int(rng.integers(height)), int(rng.integers(width))), axis=(0, 1))


def _make_one(job: tuple[str, str, int, int, int]) -> str:
    from PIL import Image, ImageOps

    src, out, width, height, seed = job
    with Image.open(src) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        w = min(im.width, im.height * width // height)  # the largest centred box of the target's aspect
        h = min(im.height, im.width * height // width)
        box = ((im.width - w) // 2, (im.height - h) // 2, (im.width - w) // 2 + w, (im.height - h) // 2 + h)
        big = im.resize((width, height), Image.Resampling.BICUBIC, box=box)  # enlarged to [height, width]
    noisy = np.asarray(big, dtype=np.int16) + _noise(width, height, seed)  # [H, W, 3]
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out


def make_photos(data: Path, folder: Path, n: int, width: int, height: int, seed: int = 0) -> list[Path]:
    """n full-size JPEGs in `folder` (those already there are kept), from the shared photos in turn."""
    sources = [p for d in SOURCES for p in sorted((data / d / "images").iterdir())]
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(sources[i % len(sources)]), str(folder / f"photo_{i:05d}.jpg"), width, height, seed + i)
            for i in range(n)]
    todo = [j for j in jobs if not Path(j[1]).is_file()]
    if todo:
        _log(f"making {len(todo)} {width}x{height} JPEGs in {folder}")
        with ProcessPoolExecutor(max_workers=2) as pool:
            for _ in pool.map(_make_one, todo, chunksize=4):
                pass
    return [Path(j[1]) for j in jobs]


def decode_ms(files: list[Path], cfg: Any, decode: str) -> float:
    """Median ms to decode + resize + crop one photo on one thread."""
    from ..prepare import prepare

    times = []
    for f in files:
        t0 = time.perf_counter()
        prepare(f, cfg, decode=decode)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def encoder_only_rate(model: Any, files: list[Path], batch_size: int, runs: int = 3) -> float:
    """Images/s of the encoder alone on one batch decoded beforehand: what indexing would reach if decoding cost
    nothing, so the most any decode path can give on this machine."""
    from ..prepare import prepare_batch

    batch = np.stack(prepare_batch([str(f) for f in files[:batch_size]], model.preprocess_config, decode="fast"))
    model.backend.encode_images(batch)  # warm-up
    t0 = time.perf_counter()
    for _ in range(runs):
        model.backend.encode_images(batch)
    return runs * len(batch) / (time.perf_counter() - t0)


def run_build(cfg: BuildConfig) -> dict[str, Any]:
    from ..model import load
    from ..search import update_images

    work = Path(cfg.work)
    files = make_photos(Path(cfg.data), work / f"photos-{cfg.width}x{cfg.height}", cfg.images, cfg.width,
                        cfg.height, cfg.seed)
    total_bytes = 0
    for f in files:  # into the page cache, for both paths alike
        total_bytes += len(f.read_bytes())
    model = load(cfg.package, backend=cfg.backend, precision=cfg.precision, threads=cfg.threads)
    per_decode = {d: decode_ms(files[:cfg.decode_samples], model.preprocess_config, d) for d in ("exact", "fast")}
    _log(f"decode + resize on one thread: exact {per_decode['exact']:.0f} ms, fast {per_decode['fast']:.0f} ms")
    encoder_rate = encoder_only_rate(model, files, cfg.batch_size)
    _log(f"encoder alone on decoded batches of {cfg.batch_size}: {encoder_rate:.2f} img/s (the ceiling of any decode)")
    seconds = {"exact": 0.0, "fast": 0.0}
    peaks = {"exact": 0.0, "fast": 0.0}
    emb: dict[str, dict[str, np.ndarray]] = {"exact": {}, "fast": {}}
    blocks = [files[i:i + cfg.block] for i in range(0, len(files), cfg.block)]
    for b, block in enumerate(blocks):
        for decode in (("exact", "fast") if b % 2 == 0 else ("fast", "exact")):
            root = work / f"index-{decode}"
            shutil.rmtree(root, ignore_errors=True)
            reset_peak()
            t0 = time.perf_counter()
            index, report = update_images(root, model, block, decode=decode, batch_size=cfg.batch_size)
            seconds[decode] += time.perf_counter() - t0
            peaks[decode] = max(peaks[decode], peak_rss_mb())
            if report.errors:
                raise RuntimeError(f"{len(report.errors)} photos failed: {report.errors[0]}")
            emb[decode].update(zip(index.items(), index.embeddings()))
            index.close()
        done = sum(len(x) for x in blocks[:b + 1])
        _log(f"{done}/{len(files)}: exact {done / seconds['exact']:.2f} img/s, fast {done / seconds['fast']:.2f} img/s")
    names = sorted(emb["exact"])
    a = np.stack([emb["exact"][k] for k in names]).astype(np.float64)
    f = np.stack([emb["fast"][k] for k in names]).astype(np.float64)
    cos = np.sum(a * f, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(f, axis=1))  # [N]
    rate = {d: len(files) / seconds[d] for d in seconds}
    from ..search.texts import read_texts

    texts = model.encode_texts(read_texts(Path(cfg.data) / "flickr8k" / "captions.csv"))  # [M, D] text queries
    top_a = np.argsort(-(texts @ a.T.astype(np.float32)), axis=1)[:, :10]  # [M, 10] over the exact embeddings
    top_f = np.argsort(-(texts @ f.T.astype(np.float32)), axis=1)[:, :10]
    overlap = float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(top_a, top_f)]))
    return {"machine": machine_info(), "config": asdict(cfg), "method": __doc__.split("\n\n", 1)[1].strip(),
            "images": len(files), "mean_file_mb": round(total_bytes / len(files) / 2**20, 2),
            "rows": [{"decode": d, "seconds": round(seconds[d], 3), "images_per_s": round(rate[d], 2),
                      "decode_resize_ms_one_thread": round(per_decode[d], 1), "peak_rss_mb": round(peaks[d], 1)}
                     for d in ("exact", "fast")],
            "speedup_fast_vs_exact": round(rate["fast"] / rate["exact"], 2),
            "encoder_only_images_per_s": round(encoder_rate, 2),
            "ceiling_speedup_vs_exact": round(encoder_rate / rate["exact"], 2),
            "cosine_fast_vs_exact": {"mean": round(float(cos.mean()), 5), "min": round(float(cos.min()), 5),
                                     "p01": round(float(np.percentile(cos, 1)), 5)},
            "text_top10_overlap_fast_vs_exact": round(overlap, 4), "text_queries": int(len(texts))}


def markdown(doc: dict[str, Any]) -> str:
    lines = ["| decode | images | seconds | images/s | decode+resize ms (1 thread) | peak RSS MiB |",
             "|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['decode']} | {doc['images']} | {r['seconds']} | {r['images_per_s']} | "
                     f"{r['decode_resize_ms_one_thread']} | {r['peak_rss_mb']:.0f} |")
    c = doc["cosine_fast_vs_exact"]
    lines.append(f"| encoder alone (decoded beforehand) | | | {doc['encoder_only_images_per_s']} | 0 | |")
    lines.append(f"\nfast / exact: {doc['speedup_fast_vs_exact']}x images/s (encoder alone / exact: "
                 f"{doc['ceiling_speedup_vs_exact']}x, the ceiling of any decode); embedding cosine fast vs exact: "
                 f"mean {c['mean']}, min {c['min']}, 1st percentile {c['p01']} ({doc['images']} photos, "
                 f"{doc['mean_file_mb']} MiB each on average); top-10 photos per caption, fast index vs exact "
                 f"index: {100 * doc['text_top10_overlap_fast_vs_exact']:.1f}% the same ({doc['text_queries']} "
                 f"Flickr8k captions)")
    return "\n".join(lines)

"""The search page bench (issue 26's numbers): index build time with and without thumbnails, and from pressing Enter
to the first thumbnails painted in a real browser.

    python benchmarks/search_page.py PKG [--precision int8] [--data ../shared/data] [--n 10000]
           [--work build/search-page] [--queries 50] [--repeats 1] [--out benchmarks/results/search-page]

1. Copies the shared photos (flickr8k, imagenet_sample, caltech101, byte for byte) to N files in folders of 500.
2. Builds the index of them with thumbnails and without (update_images(..., thumbnails=False)), --repeats times
   each, alternating which goes first; reports the seconds of each and the ratio of the medians.
3. Starts `clip-rt ui INDEX` (the index with thumbnails), opens the page in Chromium (Playwright, /usr/bin/chromium),
   searches 5 captions to warm up, then --queries flickr8k captions, each typed and sent with Enter; the page
   measures Enter -> first thumbnails painted with the Performance API (performance.measure
   "clip-rt:search-to-thumbs": from the keydown's mark to two animation frames after the first row of thumbnails
   decoded). Reports p50 / p90 / max and the server's own /search time for the same queries.

Writes OUT.json and OUT.md. A shared machine makes both timings noisy: run it alone (flock /work/bench.lock ...).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SETS = ("flickr8k/images/*.jpg", "imagenet_sample/images/*", "caltech101/images/*")
CHROMIUM = "/usr/bin/chromium"


def copy_photos(data: Path, out: Path, n: int) -> list[Path]:
    """n files copied from the shared photos into folders of 500 (reused when already there)."""
    sources = [p for pattern in SETS for p in sorted(data.glob(pattern)) if p.is_file()]
    if not sources:
        raise SystemExit(f"no photos under {data}")
    made = []
    for i in range(n):
        src = sources[i % len(sources)]
        dst = out / f"f{i // 500:03d}" / f"{i:06d}{src.suffix.lower()}"
        if not dst.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        made.append(dst)
    return made


def build(model: Any, photos: Path, index: Path, thumbnails: bool) -> float:
    from clip_rt.search import update_images

    shutil.rmtree(index, ignore_errors=True)
    t0 = time.perf_counter()
    update_images(index, model, [photos], thumbnails=thumbnails)
    return time.perf_counter() - t0


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def browser_timings(index: Path, captions: list[str], queries: int) -> dict[str, Any]:
    import httpx
    from playwright.sync_api import sync_playwright

    from clip_rt.serve.loadgen import free_port

    proc = subprocess.Popen([sys.executable, "-m", "clip_rt.cli", "ui", str(index), "--port", str(free_port())],
                            stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()  # type: ignore[union-attr]
        if not url.startswith("http://"):
            raise SystemExit(f"clip-rt ui did not start ({url!r})")
        with sync_playwright() as p, httpx.Client(timeout=60) as client:  # keep-alive, as the browser
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']")
            page_ms, server_ms = [], []
            for i, text in enumerate(captions[:5] + captions[5:5 + queries]):
                before = page.evaluate("document.body.dataset.seq || ''")
                page.fill("#q", text)
                page.press("#q", "Enter")
                page.wait_for_function(f"document.body.dataset.seq && document.body.dataset.seq !== {before!r} "
                                       f"&& !document.body.dataset.busy", timeout=60000)
                if i >= 5:
                    page_ms.append(float(page.evaluate("window.clipRtLastMs")))
                    t0 = time.perf_counter()
                    r = client.post(url.rstrip("/") + "/search", json={"text": text, "top_k": 60})
                    r.raise_for_status()
                    server_ms.append((time.perf_counter() - t0) * 1000)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(30)

    def stats(xs: list[float]) -> dict[str, float]:
        return {"p50": round(float(np.percentile(xs, 50)), 1), "p90": round(float(np.percentile(xs, 90)), 1),
                "max": round(max(xs), 1), "n": len(xs)}

    return {"enter_to_thumbnails_ms": stats(page_ms), "search_request_ms": stats(server_ms)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("package", help="model package (clip-rt export)")
    ap.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32", help="artifact precision")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="the shared data folder")
    ap.add_argument("--n", type=int, default=10000, help="photos in the index")
    ap.add_argument("--work", default="build/search-page", help="folder for the photo copies and the indexes")
    ap.add_argument("--queries", type=int, default=50, help="timed text queries in the browser")
    ap.add_argument("--repeats", type=int, default=1, help="builds of each kind (alternating which goes first)")
    ap.add_argument("--out", default="benchmarks/results/search-page", help="OUT.json and OUT.md")
    args = ap.parse_args()

    import clip_rt

    work = Path(args.work)
    photos = work / f"photos-{args.n}"
    files = copy_photos(Path(args.data), photos, args.n)
    model = clip_rt.load(args.package, precision=args.precision)
    with_t, without_t = [], []
    for r in range(args.repeats):
        for thumbs in ((False, True) if r % 2 == 0 else (True, False)):
            seconds = build(model, photos, work / ("with.index" if thumbs else "without.index"), thumbs)
            (with_t if thumbs else without_t).append(seconds)
            print(f"build {'with' if thumbs else 'without'} thumbnails: {seconds:.1f} s", file=sys.stderr)
    index = work / "with.index"
    from clip_rt.search import Index
    from clip_rt.search.thumbs import thumb_bytes

    with Index.open(index) as opened:
        n_thumbs, t_bytes = thumb_bytes(opened.store.conn)
    captions = []
    with open(Path(args.data) / "flickr8k" / "captions.csv", newline="") as f:
        captions = [row["caption"] for row in csv.DictReader(f)][::5]
    timings = browser_timings(index, captions, args.queries)
    ratio = statistics.median(with_t) / statistics.median(without_t)
    doc = {"photos": len(files), "package": str(args.package), "precision": args.precision,
           "host": {"cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0))},
           "build_s": {"with_thumbnails": [round(x, 2) for x in with_t],
                       "without_thumbnails": [round(x, 2) for x in without_t], "ratio_of_medians": round(ratio, 3)},
           "index_bytes": {"with_thumbnails": folder_bytes(index),
                           "without_thumbnails": folder_bytes(work / "without.index"),
                           "thumbnails": t_bytes, "thumbnail_count": n_thumbs},
           **timings}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    e, s = doc["enter_to_thumbnails_ms"], doc["search_request_ms"]
    md = [f"# Search page: {len(files)} photos, {Path(args.package).name} {args.precision}", "",
          "| measure | value |", "| --- | --- |",
          f"| index build with thumbnails (s) | {', '.join(f'{x:.1f}' for x in with_t)} |",
          f"| index build without thumbnails (s) | {', '.join(f'{x:.1f}' for x in without_t)} |",
          f"| with / without (medians) | {ratio:.3f} |",
          f"| thumbnails | {n_thumbs} ({t_bytes / 2**20:.1f} MiB of the index's "
          f"{doc['index_bytes']['with_thumbnails'] / 2**20:.1f} MiB) |",
          f"| Enter -> first thumbnails painted, p50 / p90 / max (ms, {e['n']} queries) | {e['p50']} / {e['p90']} / "
          f"{e['max']} |",
          f"| POST /search top_k 60 from Python (httpx), p50 / p90 / max (ms) | {s['p50']} / {s['p90']} / "
          f"{s['max']} |", ""]
    out.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())

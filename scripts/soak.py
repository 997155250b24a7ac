"""Soak: many consecutive encode calls on one loaded model, with resident memory (RSS) sampled along the way.

    python scripts/soak.py PKG [--calls 10000] [--image FILE] [--max-growth-mb 4] [--json]

Two phases on one model, one after the other:
  image  `calls` x model.encode_images([FILE]) at batch 1: decode, EXIF, resize + crop, encode, every call
  text   `calls` x model.encode_texts([TEXT]) with a different prompt each call (from a fixed vocabulary, so the
         tokenizer's bounded word cache is not mistaken for a leak)

RSS is the process's VmRSS (Linux /proc/self/statm), read after loading, after a warm-up (the first 5% of the
calls), at the end of each quarter and at the end; max is the peak (VmHWM) of the process so far. Before each
reading, glibc's malloc_trim(0) hands freed heap pages back to the kernel: without it, memory freed while loading
(tens of MiB for ViT-B/32) stays resident and is reused silently, and a leak hides in it until that pool runs out.
A phase is flat when RSS grows by at most --max-growth-mb from the end of its second quarter to its end:
after warm-up every allocator pool is in use, so growth there means memory kept per call. Exit code 1 when a
phase is not flat. --inject-leak-kb keeps that many KiB per call on purpose, to show the check can fail.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = ROOT.parent / "shared" / "data" / "caltech101" / "images" / "Faces_easy_image_0079.jpg"
ADJECTIVES = ("red", "small", "old", "shiny", "wet", "striped", "wooden", "broken", "happy", "distant")
NOUNS = ("dog", "car", "house", "tree", "boat", "cup", "bird", "chair", "river", "mountain", "guitar", "lamp")
MB = 1 << 20


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's malloc_trim(0) as a call, or None where the C library has none (musl, macOS)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


TRIM = _malloc_trim()


def rss_bytes() -> int:
    """Current resident set size of this process (Linux), in bytes, after freed heap pages are handed back (glibc)."""
    if TRIM is not None:
        TRIM()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak resident set size of this program: VmHWM (Linux). Not ru_maxrss, which keeps the peak of the process
    that forked this one across exec (a test runner's hundreds of MB)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def prompt(i: int) -> str:
    """A different text per call, from a fixed vocabulary (digits are split into single tokens by CLIP's BPE)."""
    return f"a photo of a {ADJECTIVES[i % len(ADJECTIVES)]} {NOUNS[(i // len(ADJECTIVES)) % len(NOUNS)]} number {i}"


def run_phase(name: str, call: Callable[[int], Any], calls: int, max_growth_mb: float, leak_kb: int) -> dict[str, Any]:
    """`calls` consecutive call(i); RSS at warm-up, quarters and end (MiB); flat = last-half growth within bound."""
    kept: list[bytes] = []  # only used by --inject-leak-kb
    warmup = max(1, calls // 20)
    marks = {warmup: "after_warmup", **{calls * q // 4: f"q{q}" for q in (1, 2, 3, 4)}}
    rss: dict[str, float] = {"start": rss_bytes() / MB}
    t0 = time.perf_counter()
    for i in range(1, calls + 1):
        call(i)
        if leak_kb:
            kept.append(bytes([i % 251 + 1]) * (leak_kb * 1024))  # non-zero bytes: the pages are really touched
        if i in marks:
            rss[marks[i]] = rss_bytes() / MB
    seconds = time.perf_counter() - t0
    growth = rss["q4"] - rss["q2"]
    return {"phase": name, "calls": calls, "rss_mb": {k: round(v, 2) for k, v in rss.items()},
            "growth_last_half_mb": round(growth, 2), "max_growth_mb": max_growth_mb, "flat": growth <= max_growth_mb,
            "ms_per_call": round(1000 * seconds / calls, 3), "peak_rss_mb": round(peak_rss_bytes() / MB, 2)}


def default_image(folder: str) -> Path:
    """A real photo from ../shared when present, else a synthetic 320x240 JPEG written to `folder`."""
    if DEFAULT_IMAGE.is_file():
        return DEFAULT_IMAGE
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:240, 0:320]
    pixels = np.stack([x * 255 // 319, y * 255 // 239, (x + y) % 256], -1).astype(np.uint8)  # [240, 320, 3]
    path = Path(folder) / "soak.jpg"
    Image.fromarray(pixels).save(path, quality=90)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("package", help="model package folder")
    p.add_argument("--calls", type=int, default=10_000, help="encode calls per phase")
    p.add_argument("--phases", default="image,text", help="comma-separated: image, text")
    p.add_argument("--image", default=None, help="image file encoded by the image phase (default: a shared photo)")
    p.add_argument("--backend", default="onnxruntime", help="clip_rt.load backend")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the backend's choice)")
    p.add_argument("--max-growth-mb", type=float, default=4.0,
                   help="largest RSS growth (MiB) allowed from the end of the second quarter to the end of a phase")
    p.add_argument("--inject-leak-kb", type=int, default=0, help="keep this many KiB per call (checks the checker)")
    p.add_argument("--json", action=argparse.BooleanOptionalAction, default=False, help="print one JSON document")
    args = p.parse_args(argv)
    if args.calls < 8:
        p.error("--calls must be >= 8 (quarters and a warm-up)")
    phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    if not phases or set(phases) - {"image", "text"}:
        p.error(f"--phases takes image and/or text, got {args.phases!r}")

    import clip_rt

    before_load = rss_bytes() / MB
    model = clip_rt.load(args.package, backend=args.backend, threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="clip-rt-soak-") as tmp:
        image = str(Path(args.image) if args.image else default_image(tmp))
        calls: dict[str, Callable[[int], Any]] = {
            "image": lambda i: model.encode_images([image], batch_size=1),  # [1, D]
            "text": lambda i: model.encode_texts([prompt(i)]),  # [1, D]
        }
        after_load = rss_bytes() / MB
        results = [run_phase(name, calls[name], args.calls, args.max_growth_mb, args.inject_leak_kb) for name in phases]
    doc = {"package": str(args.package), "image": image, "backend": args.backend, "calls_per_phase": args.calls,
           "inject_leak_kb": args.inject_leak_kb, "malloc_trim": TRIM is not None,
           "rss_mb_before_load": round(before_load, 2), "rss_mb_after_load": round(after_load, 2), "phases": results, "peak_rss_mb": round(peak_rss_bytes() / MB, 2),
           "flat": all(r["flat"] for r in results)}
    if args.json:
        print(json.dumps(doc))
    else:
        print(f"package {doc['package']} ({args.backend}), {args.calls} calls per phase; RSS before load "
              f"{doc['rss_mb_before_load']:.1f} MiB, after load {doc['rss_mb_after_load']:.1f} MiB")
        for r in results:
            m = r["rss_mb"]
            print(f"{r['phase']:>5}: RSS start {m['start']:.1f}, after warm-up {m['after_warmup']:.1f}, q1 {m['q1']:.1f}, "
                  f"q2 {m['q2']:.1f}, q3 {m['q3']:.1f}, end {m['q4']:.1f} MiB; growth q2->end "
                  f"{r['growth_last_half_mb']:+.2f} MiB (bound {r['max_growth_mb']}); peak so far {r['peak_rss_mb']:.1f} MiB; "
                  f"{r['ms_per_call']:.2f} ms/call; {'flat' if r['flat'] else 'NOT FLAT'}")
        print(f"peak RSS (VmHWM) {doc['peak_rss_mb']:.1f} MiB; {'flat' if doc['flat'] else 'NOT FLAT'}")
    return 0 if doc["flat"] else 1


if __name__ == "__main__":
    sys.exit(main())

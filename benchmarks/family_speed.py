#!/usr/bin/env python
"""Batch-1 speed of exported packages against each family's own eager model (the README's families table).

    flock /work/bench.lock python benchmarks/family_speed.py build/family-parity/packages/* --json speed.json

Per package, in one process and interleaved (each round runs every backend once, in rotating order, so that a busy
machine slows all of them alike): the eager model (backend="torch": the family's own PyTorch model rebuilt from the
manifest, fp32), ONNX Runtime fp32 (the fused graph where the package has one) and ONNX Runtime int8 (where the
package has it), on the same inputs: one real photo preprocessed by the package's CPU path ([1, S, S, 3] uint8),
and one caption tokenized by the package's tokenizer ([1, L] int32, padded by the package's rule). The backends'
encode_images / encode_texts are timed (preprocessing and tokenizing happen once, outside the clock). Median and
90th percentile per backend, and the eager median over each backend's median; every row carries the cosine of the
measured backend's output against eager's on the same input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT.parent / "shared" / "data" / "imagenet_sample" / "images" / "n01484850_great_white_shark.JPEG"
CAPTION = "a black dog running along a sandy beach next to the ocean"
CAPTION_ZH = "一只黑色的狗沿着海边的沙滩奔跑"


def measure(package: Path, iters: int, warmup: int, threads: int | None) -> dict[str, Any]:
    import clip_rt
    from clip_rt.prepare import prepare
    from clip_rt.preprocess import PreprocessConfig
    from clip_rt.tokenizer import Tokenizer

    backends: dict[str, Any] = {"eager": clip_rt.load(package, backend="torch", threads=threads),
                                "onnxruntime fp32": clip_rt.load(package, threads=threads)}
    pkg = backends["eager"].package
    if pkg.find("image", "int8") and pkg.find("text", "int8"):
        backends["onnxruntime int8"] = clip_rt.load(package, precision="int8", threads=threads)
    pixels = prepare(str(PHOTO), PreprocessConfig.from_manifest(pkg.preprocess))[None]  # [1, S, S, 3] uint8
    caption = CAPTION_ZH if pkg.family == "chinese_clip" else CAPTION
    ids = Tokenizer.from_package(pkg).encode([caption])  # [1, L] int32
    calls: dict[str, dict[str, Callable[[], np.ndarray]]] = {
        "image": {k: (lambda m=m: m.backend.encode_images(pixels)) for k, m in backends.items()},
        "text": {k: (lambda m=m: m.backend.encode_texts(ids)) for k, m in backends.items()},
    }
    row: dict[str, Any] = {"package": str(package), "family": pkg.family, "source": pkg.source.get("model"),
                           "text_length": int(ids.shape[1])}
    for what, fns in calls.items():
        names = list(fns)
        ref = fns["eager"]()
        outs = {k: fns[k]() for k in names}
        for _ in range(warmup):
            for k in names:
                fns[k]()
        times: dict[str, list[float]] = {k: [] for k in names}
        for i in range(iters):
            for k in names[i % len(names):] + names[: i % len(names)]:  # rotate the order every round
                t0 = time.perf_counter()
                fns[k]()
                times[k].append(time.perf_counter() - t0)
        eager_ms = 1000 * float(np.median(times["eager"]))
        for k in names:
            med, p90 = 1000 * float(np.median(times[k])), 1000 * float(np.percentile(times[k], 90))
            cos = float(np.sum(outs[k] * ref) / (np.linalg.norm(outs[k]) * np.linalg.norm(ref)))
            row[f"{what} {k}"] = {"median_ms": round(med, 2), "p90_ms": round(p90, 2),
                                  "speedup": round(eager_ms / med, 2), "cosine_vs_eager": round(cos, 6)}
    for m in backends.values():
        m.close()
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    out = ["| model (family) | batch 1 | eager PyTorch | onnxruntime fp32 | onnxruntime int8 |", "|" + " --- |" * 5]
    for r in rows:
        for what in ("image", "text"):
            cells = []
            for k in ("eager", "onnxruntime fp32", "onnxruntime int8"):
                c = r.get(f"{what} {k}")
                cells.append("-" if c is None else f"{c['median_ms']:.1f} / {c['p90_ms']:.1f} ms"
                             + ("" if k == "eager" else f", **{c['speedup']:.2f}x** (cos {c['cosine_vs_eager']:.5f})"))
            length = f", {r['text_length']} tokens" if what == "text" else ""
            out.append(f"| {r['source']} ({r['family']}) | {what}{length} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("packages", nargs="+", help="exported package folders")
    p.add_argument("--iters", type=int, default=40, help="timed rounds (every backend once per round)")
    p.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads for every backend (default: theirs)")
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args(argv)
    rows = []
    for package in args.packages:
        row = measure(Path(package), args.iters, args.warmup, args.threads)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

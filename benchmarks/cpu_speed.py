"""The CPU-speed check: clip-rt (public API, ONNX Runtime) against eager transformers, interleaved, in one run.

    python benchmarks/cpu_speed.py PKG [--data ../shared/data] [--threads 2] [--iters 30]

PKG: a package exported with --precision int8 (e.g. from a ViT-B/32 folder, see docs/CPU_SPEED.md). Prints:
- image encoder, uint8 crops in, batch 1 and 32: eager fp32 vs clip-rt fp32 (fused graph) and int8;
- text encoder, prompts of <= 16 tokens, batch 1 and 32: eager on 77-padded ids (padding="max_length") and on the
  same lengths, vs clip-rt fp32 and int8 through encode_texts (tokenization included on our side only);
- accuracy: each precision against eager fp32 on real photos (imagenet_sample) and captions that the export's
  calibration never saw (the export's evaluation captions, which calibration drops), mean and min cosine.

Timing: each iteration runs every contender once, in turn (so machine noise hits all of them alike); medians, p90
and the median of per-iteration speed ratios. Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs), q))


def interleaved(contenders: dict[str, Callable[[], object]], iters: int, warmup: int = 2) -> dict[str, list[float]]:
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(iters):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def report(title: str, times: dict[str, list[float]], baselines: list[str]) -> list[str]:
    lines = [f"\n{title}", f"  {'contender':34s} {'median ms':>10s} {'p90 ms':>9s}  " +
             "  ".join(f"{'x vs ' + b:>18s}" for b in baselines)]
    for name, ts in times.items():
        ratios = []
        for b in baselines:
            if name == b:
                ratios.append(f"{'':>18s}")
                continue
            per_iter = [tb / t for tb, t in zip(times[b], ts)]
            ratios.append(f"{statistics.median(times[b]) / statistics.median(ts):8.2f} ({statistics.median(per_iter):5.2f})")
        lines.append(f"  {name:34s} {1000 * statistics.median(ts):10.1f} {1000 * pct(ts, 90):9.1f}  " + "  ".join(ratios))
    return lines


def cos_stats(ref: np.ndarray, got: np.ndarray) -> str:
    r = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    g = got / np.linalg.norm(got, axis=1, keepdims=True)
    c = np.sum(r.astype(np.float64) * g, axis=1)
    return f"mean {c.mean():.6f}  min {c.min():.6f}  (n={len(c)})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("package")
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for both ONNX Runtime and torch")
    p.add_argument("--iters", type=int, default=30, help="timed iterations per table (batch-32 tables use a third)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    p.add_argument("--spinning", action=argparse.BooleanOptionalAction, default=True,
                   help="ONNX Runtime intra-op spinning (off helps on a machine shared with other jobs)")
    args = p.parse_args()

    import torch

    import clip_rt
    from clip_rt.export.load import load_source
    from clip_rt.export.validate import load_eval_texts
    from clip_rt.export.wrappers import reference_image_embeds, reference_text_embeds
    from clip_rt.package import Package
    from clip_rt.preprocess import PreprocessConfig, iter_image_files, prepare_batch

    torch.set_num_threads(args.threads)
    pkg = Package.open(args.package)
    data = Path(args.data)
    clip = load_source(pkg.source).eval()
    pre = pkg.preprocess
    mean = torch.tensor(pre["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(pre["std"]).view(1, 3, 1, 1)
    models = {p: clip_rt.load(pkg, precision=p, threads=args.threads, spinning=args.spinning)
              for p in args.precisions}
    out = [f"package {pkg.root} ({pkg.source['model']}{', RANDOM WEIGHTS' if pkg.source.get('random_init') else ''})",
           f"torch {torch.__version__} threads {torch.get_num_threads()}, onnxruntime threads {args.threads}, "
           f"spinning {args.spinning}; files: " + ", ".join(f"{p}={m.describe()['files']}" for p, m in models.items())]

    # -- inputs: real photos (imagenet_sample), prompts <= 16 tokens from class names -------------------------------
    files, _ = iter_image_files([data / "imagenet_sample" / "images"])
    cfg = PreprocessConfig.from_manifest(pre)
    crops = np.stack([c for c in prepare_batch(files[:96], cfg) if isinstance(c, np.ndarray)])  # [N, S, S, 3] uint8
    classes = (data / "imagenet_sample" / "classes.txt").read_text(encoding="utf-8").splitlines()
    tok = models[args.precisions[0]].tokenizer
    prompts = [f"a photo of a {c}." for c in classes]
    lengths = (tok.encode(prompts) == pkg.manifest["tokenizer"]["eos_id"]).argmax(1) + 1
    prompts = [t for t, n in zip(prompts, lengths) if n <= 16]
    out.append(f"inputs: {len(crops)} photos from imagenet_sample; {len(prompts)} prompts of <= 16 tokens "
               f"('a photo of a {{class}}.', ImageNet classes)")

    def eager_image(x: np.ndarray) -> Callable[[], object]:
        t = torch.from_numpy(x)
        return lambda: reference_image_embeds(clip, t, pre["mean"], pre["std"])  # uint8 -> normalize -> features

    def eager_text(texts: list[str], pad77: bool) -> Callable[[], object]:
        ids = tok.encode(texts)
        if pad77:
            ids = np.pad(ids, ((0, 0), (0, pkg.context_length - ids.shape[1])), constant_values=tok.pad_id)
        t = torch.from_numpy(ids)
        return lambda: reference_text_embeds(clip, t)

    with torch.inference_mode():
        for batch, iters in ((1, args.iters), (32, max(5, args.iters // 3))):
            x = crops[:batch]
            contenders = {"eager fp32 (transformers)": eager_image(x)}
            for prec, m in models.items():
                contenders[f"clip-rt {prec}"] = (lambda m=m: m.encode_images(x, batch_size=batch))
            out += report(f"image encoder, uint8 crops, batch {batch} ({iters} interleaved iterations)",
                          interleaved(contenders, iters), ["eager fp32 (transformers)"])
            print("\n".join(out[-len(contenders) - 2:]), file=sys.stderr, flush=True)
        for batch, iters in ((1, args.iters), (32, max(5, args.iters // 3))):
            texts = prompts[:batch]
            contenders = {"eager fp32, 77-padded": eager_text(texts, True),
                          "eager fp32, same lengths": eager_text(texts, False)}
            for prec, m in models.items():
                contenders[f"clip-rt {prec} (encode_texts)"] = (lambda m=m: m.encode_texts(texts, batch_size=batch))
            out += report(f"text encoder, prompts <= 16 tokens, batch {batch} ({iters} interleaved iterations)",
                          interleaved(contenders, iters), ["eager fp32, 77-padded", "eager fp32, same lengths"])
            print("\n".join(out[-len(contenders) - 2:]), file=sys.stderr, flush=True)

        # -- accuracy against eager fp32, on data calibration never saw ----------------------------------------------
        eval_texts, src = load_eval_texts(data / "flickr8k" / "captions.csv")  # the export's evaluation captions
        acc_crops = np.stack([c for c in prepare_batch(files[96:256], cfg) if isinstance(c, np.ndarray)])
        ref_i = np.concatenate([reference_image_embeds(clip, torch.from_numpy(acc_crops[i:i + 16]), pre["mean"],
                                                       pre["std"]).numpy() for i in range(0, len(acc_crops), 16)])
        ref_t = np.concatenate([reference_text_embeds(clip, torch.from_numpy(tok.encode(eval_texts[i:i + 16]))).numpy()
                                for i in range(0, len(eval_texts), 16)])
    out.append(f"\naccuracy against eager fp32: {len(acc_crops)} imagenet_sample photos, {src} (not calibration data)")
    for prec, m in models.items():
        out.append(f"  {prec:5s} image  {cos_stats(ref_i, m.encode_images(acc_crops, batch_size=16))}")
        out.append(f"  {prec:5s} text   {cos_stats(ref_t, m.encode_texts(eval_texts))}")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

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


Timings = dict[str, tuple[list[float], list[float]]]  # contender -> (wall seconds, process CPU seconds)


def interleaved(contenders: dict[str, Callable[[], object]], iters: int, warmup: int = 2) -> Timings:
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    times: Timings = {k: ([], []) for k in contenders}
    for _ in range(iters):
        for name, fn in contenders.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            times[name][0].append(time.perf_counter() - w)
            times[name][1].append(time.process_time() - c)
    return times


def report(title: str, times: Timings, baselines: list[str]) -> list[str]:
    """Wall median/p90; speed-up = ratio of wall medians (median of per-iteration ratios in brackets); CPU ms and
    the CPU-time ratio, which other processes' load barely moves (exact at --threads 1; with more threads it
    includes spin-waiting)."""
    lines = [f"\n{title}", f"  {'contender':32s} {'median ms':>9s} {'p90 ms':>8s} {'cpu ms':>8s}  " +
             "  ".join(f"{'x vs ' + b + ' (cpu)':>34s}" for b in baselines)]
    for name, (wall, cpu) in times.items():
        ratios = []
        for b in baselines:
            if name == b:
                ratios.append(f"{'':>34s}")
                continue
            bw, bc = times[b]
            per_iter = statistics.median([x / y for x, y in zip(bw, wall)])
            ratios.append(f"{statistics.median(bw) / statistics.median(wall):14.2f} ({per_iter:5.2f}) "
                          f"[{statistics.median(bc) / statistics.median(cpu):5.2f}]")
        lines.append(f"  {name:32s} {1000 * statistics.median(wall):9.1f} {1000 * pct(wall, 90):8.1f} "
                     f"{1000 * statistics.median(cpu):8.1f}  " + "  ".join(ratios))
    return lines


def cos_stats(ref: np.ndarray, got: np.ndarray) -> str:
    """Cosine against the reference, and the same after subtracting the reference's mean embedding ("centered"):
    random-weight CLIPs map every input near one direction, so the raw cosine hides errors in the part that
    tells inputs apart; the centered cosine measures that part."""
    def rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        return np.sum(a.astype(np.float64) * b, axis=1)

    r = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    g = got / np.linalg.norm(got, axis=1, keepdims=True)
    c, cc = rows(r, g), rows(r - r.mean(0), g - r.mean(0))
    spread = float((r @ r.T)[~np.eye(len(r), dtype=bool)].mean())
    return (f"mean {c.mean():.6f}  min {c.min():.6f}  | centered mean {cc.mean():.4f}  min {cc.min():.4f}  "
            f"(n={len(c)}, mean cosine between different inputs {spread:.3f})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("package")
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for both ONNX Runtime and torch")
    p.add_argument("--iters", type=int, default=30, help="timed iterations per table (batch-32 tables use a third)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    p.add_argument("--compare", metavar="PKG2", default=None,
                   help="another package of the same model whose INT8 artifacts run in the same interleaved loops "
                        "(e.g. one exported by an older clip-rt: docs/CPU_SPEED.md, 'CPU tiers')")
    p.add_argument("--spinning", action=argparse.BooleanOptionalAction, default=True,
                   help="ONNX Runtime intra-op spinning (off helps on a machine shared with other jobs)")
    args = p.parse_args()

    import torch

    import clip_rt
    from clip_rt.export.families import load_source
    from clip_rt.export.validate import load_eval_texts
    from clip_rt.export.wrappers import reference_image_embeds, reference_text_embeds
    from clip_rt.package import Package
    from clip_rt.files import iter_image_files
    from clip_rt.prepare import prepare_batch
    from clip_rt.preprocess import PreprocessConfig

    torch.set_num_threads(args.threads)
    pkg = Package.open(args.package)
    data = Path(args.data)
    clip = load_source(pkg.source).eval()
    pre = pkg.preprocess
    mean = torch.tensor(pre["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(pre["std"]).view(1, 3, 1, 1)
    models = {p: clip_rt.load(pkg, precision=p, threads=args.threads, spinning=args.spinning)
              for p in args.precisions}
    if args.compare:
        import warnings

        with warnings.catch_warnings():  # an older package may warn about its CPU tier: that is what is compared
            warnings.simplefilter("ignore")
            models[f"int8 [{Path(args.compare).name}]"] = clip_rt.load(args.compare, precision="int8",
                                                                       threads=args.threads, spinning=args.spinning)
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

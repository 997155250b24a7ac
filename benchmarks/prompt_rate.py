"""How fast the label matrix of a first `classify --templates imagenet` run is built, against the text encoder alone.

    python benchmarks/prompt_rate.py PKG [--labels ../shared/data/imagenet_sample/classes.txt] [--n-labels 100]
        [--templates imagenet] [--precision fp32] [--batch-sizes 32,64,128] [--rounds 3] [--padded]

Prints prompts/s (median over rounds, contenders interleaved within each round; also per process CPU second, and
the median of each round's speed ratio to the encoder) for:
- `encoder`: the backend's encode_texts alone on the same prompts, tokenized beforehand, sorted by length over the
  whole set and cut to each batch's longest (the least padding any batching can have): the model-only text rate;
- `encoder-77` (with --padded): the same ids padded to the full context (77), what a path without length trimming
  pays;
- `classifier bN`: ZeroShotClassifier(..., cache=False) building the label matrix (tokenize, sort, batch, encode,
  average over templates) with text_batch_size N: what a first `classify` run spends before any image.
Also the padding overhead of each: tokens run through the encoder / tokens in the prompts.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np

import clip_rt
from clip_rt.zeroshot import ZeroShotClassifier, resolve_templates


def encoder_only(model: clip_rt.ClipModel, ids: list[np.ndarray], pad_to: int | None) -> Callable[[], None]:
    """encode_texts on prepared batches ([b, l] int32 each), or on the batches padded to `pad_to` tokens."""
    pad = model.tokenizer.pad_id
    if pad_to is not None:
        ids = [np.pad(b, ((0, 0), (0, pad_to - b.shape[1])), constant_values=pad) for b in ids]  # [b, 77] int32

    def run() -> None:
        for batch in ids:
            model.backend.encode_texts(batch)
    return run


def sorted_batches(model: clip_rt.ClipModel, prompts: list[str], batch_size: int) -> tuple[list[np.ndarray], int]:
    """All prompts tokenized, sorted by length over the whole set, in batches cut to their longest; and the total
    number of real tokens (BOS to EOT) in the prompts."""
    ids = model.tokenizer.encode(prompts)  # [N, L] int32
    lengths = (ids == model.tokenizer.eos_id).argmax(axis=1) + 1  # [N]
    order = np.argsort(lengths, kind="stable")
    batches = []
    for start in range(0, len(order), batch_size):
        rows = order[start: start + batch_size]
        batches.append(np.ascontiguousarray(ids[rows, : int(lengths[rows].max())]))  # [b, l] int32
    return batches, int(lengths.sum())


def tokens_fed(model: clip_rt.ClipModel, fn: Callable[[], object]) -> int:
    """Token ids (padding included) that `fn` passes to the backend's encode_texts."""
    real = model.backend.encode_texts
    fed = [0]

    def counting(ids: np.ndarray) -> np.ndarray:
        fed[0] += ids.size
        return real(ids)
    model.backend.encode_texts = counting  # type: ignore[method-assign]
    try:
        fn()
    finally:
        del model.backend.encode_texts  # the class's method again
    return fed[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package")
    ap.add_argument("--labels", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" /
                                            "imagenet_sample" / "classes.txt"))
    ap.add_argument("--n-labels", type=int, default=8, help="first N labels of the file per call (x 80 prompts)")
    ap.add_argument("--templates", default="imagenet")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch-sizes", default="32,64,128")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--padded", action=argparse.BooleanOptionalAction, default=False,
                    help="also time encoder-77 (about 6x the encoder's time for ImageNet prompts)")
    args = ap.parse_args()

    model = clip_rt.load(args.package, precision=args.precision, threads=args.threads)
    labels = Path(args.labels).read_text(encoding="utf-8").splitlines()[: args.n_labels]
    templates = resolve_templates(args.templates)
    prompts = [t.replace("{}", label) for t in templates for label in labels]
    batches, real_tokens = sorted_batches(model, prompts, 64)
    ctx = model.tokenizer.context_length

    contenders: dict[str, Callable[[], object]] = {"encoder": encoder_only(model, batches, None)}
    if args.padded:
        contenders["encoder-77"] = encoder_only(model, batches, ctx)
    for b in (int(x) for x in args.batch_sizes.split(",")):
        contenders[f"classifier b{b}"] = (
            lambda b=b: ZeroShotClassifier(model, labels, templates=templates, cache=False, text_batch_size=b))
    run_tokens = {"encoder": sum(x.size for x in batches), "encoder-77": len(prompts) * ctx}
    for name in contenders:  # one untimed pass of each classifier, counting the token ids the encoder gets
        if name.startswith("classifier"):
            run_tokens[name] = tokens_fed(model, contenders[name])

    t0 = time.perf_counter()
    model.encode_texts(prompts[:256])  # warm-up: sessions, allocator, thread pool
    times: dict[str, list[float]] = {k: [] for k in contenders}  # wall seconds per call
    cpu: dict[str, list[float]] = {k: [] for k in contenders}  # process CPU seconds per call
    ratios: dict[str, list[float]] = {k: [] for k in contenders}  # encoder's wall / this one's, per round
    for r in range(args.rounds):
        # Short calls, many rounds, the order rotating: load from other processes drifts over minutes, so each
        # round's ratio compares calls made seconds apart.
        for name in list(contenders)[r % len(contenders):] + list(contenders)[: r % len(contenders)]:
            w, c = time.perf_counter(), time.process_time()
            contenders[name]()
            times[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
        for name in contenders:
            ratios[name].append(times["encoder"][-1] / times[name][-1])
    print(f"{args.package} {args.precision}, {len(labels)} labels x {len(templates)} templates = {len(prompts)} "
          f"prompts per call, {real_tokens / len(prompts):.1f} tokens per prompt on average; {args.rounds} rounds, "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"{'contender':18s} {'median s':>9s} {'prompts/s':>10s} {'prompts/CPU-s':>14s} {'vs encoder':>11s} "
          f"{'(per-round median)':>19s} {'tokens run / real':>18s}")
    base = statistics.median(times["encoder"])
    for name, ts in times.items():
        med = statistics.median(ts)
        pad = f"{run_tokens[name] / real_tokens:.2f}" if name in run_tokens else ""
        print(f"{name:18s} {med:9.2f} {len(prompts) / med:10.0f} {len(prompts) / statistics.median(cpu[name]):14.0f} "
              f"{base / med:10.2f}x {statistics.median(ratios[name]):18.2f}x {pad:>18s}")


if __name__ == "__main__":
    main()

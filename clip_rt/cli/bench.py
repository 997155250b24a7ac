"""`clip-rt bench`: the benchmark matrix against eager PyTorch (see clip_rt.bench)."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from .common import HELP, positive_int


def _csv(cast: Callable[[str], object], choices: tuple[str, ...] | None = None) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        if choices is not None:
            bad = [t for t in items if t not in choices]
            if bad:
                raise argparse.ArgumentTypeError(f"invalid choice(s) {', '.join(bad)} (choose from {', '.join(choices)})")
        try:
            return tuple(cast(t) for t in items)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def _iters(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--iters takes a number or 'auto', not {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError("--iters must be >= 1")
    return n


def register(sub: argparse._SubParsersAction) -> None:
    from ..bench import ENCODERS, MODES, bench_backends
    from ..contract import PRECISIONS

    p = sub.add_parser(
        "bench", formatter_class=HELP, help="benchmark backends and precisions against eager PyTorch",
        description="Latency, throughput, peak memory and parity against eager PyTorch, in one table. 'model' mode "
                    "times the encoders on prepared inputs (uint8 crops, int32 ids); 'end-to-end' mode times image "
                    "files -> decode -> preprocess -> encode -> zero-shot probabilities over the classes of --data, "
                    "against transformers' CLIPProcessor + CLIPModel used as the tutorials do. Backends are "
                    "interleaved block by block. The defaults finish in about 6 minutes for ViT-B/32 with fp32 and "
                    "int8 artifacts on 2 CPU cores (5.6 minutes measured with OpenVINO installed; more on a heavily "
                    "shared machine).")
    p.add_argument("package", help="model package folder")
    p.add_argument("--backends", type=_csv(str, bench_backends()), default="torch,onnxruntime,openvino",
                   metavar="LIST",
                   help="comma-separated backends; torch is the eager reference that speedups are against. The "
                        "default never includes tensorrt: ask for it (it needs an NVIDIA GPU and --device cuda); "
                        "openvino is skipped with its reason where it is not installed or --device is a GPU")
    p.add_argument("--precisions", type=_csv(str, PRECISIONS), default=None, metavar="LIST",
                   help="comma-separated precisions; unset: every precision the package has artifacts for. A "
                        "backend/precision that cannot run is skipped with its reason")
    p.add_argument("--batch-sizes", type=_csv(int), default="1,32", metavar="LIST", help="comma-separated batch sizes")
    p.add_argument("--text-lengths", type=_csv(int), default="8,16,77", metavar="LIST",
                   help="comma-separated tokens per text (BOS and EOT included) for the text encoder")
    p.add_argument("--mode", dest="modes", type=_csv(str, MODES), default=",".join(MODES), metavar="LIST",
                   help="comma-separated: model, end-to-end")
    p.add_argument("--encoders", type=_csv(str, ENCODERS), default=",".join(ENCODERS), metavar="LIST",
                   help="model mode: image, text")
    p.add_argument("--data", default=None,
                   help="labeled image folder (labels.csv, classes.txt, like shared/data/caltech101): real crops for "
                        "parity, top-1 agreement, and the files and labels of end-to-end mode (skipped without it)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="intra-op threads per backend; unset: each library's default")
    p.add_argument("--iters", type=_iters, default="auto", metavar="N|auto",
                   help="timed calls per row; auto: as many as fit in --budget seconds, at least --min-iters, at "
                        "most --max-iters")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per row before timing")
    p.add_argument("--budget", dest="budget_s", type=float, default=2.0,
                   help="seconds of timed calls per row with --iters auto")
    p.add_argument("--min-iters", type=int, default=3, help="with --iters auto: at least this many timed calls")
    p.add_argument("--max-iters", type=int, default=200, help="with --iters auto: at most this many timed calls")
    p.add_argument("--block", dest="block_s", type=float, default=0.25,
                   help="seconds of back-to-back calls per backend before the next backend's turn")
    p.add_argument("--settle", dest="settle_s", type=float, default=0.1,
                   help="idle seconds before each block, so the previous backend's spinning threads have parked")
    p.add_argument("--parity-items", type=int, default=32, help="images and texts in the parity set")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                   help="peak RSS per row, from a fresh process per backend and precision")
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="write the result document here")
    p.add_argument("--plot", default=None, metavar="OUT.png",
                   help="write latency-vs-batch plots (needs matplotlib: pip install 'clip-rt[bench]')")
    p.add_argument("--markdown", action=argparse.BooleanOptionalAction, default=False,
                   help="print the table as Markdown instead of aligned plain text")
    p.set_defaults(handler=run_bench_cli)


def check_plot_dependency() -> None:
    """--plot needs matplotlib: checked before minutes of measuring, not after them."""
    from ..errors import missing_dependency

    try:
        import matplotlib  # noqa: F401  (pyplot itself is imported by the plot)
    except ImportError:
        raise missing_dependency("matplotlib", "bench", "the benchmark plot (--plot)") from None


def run_bench_cli(args: argparse.Namespace) -> int:
    from ..bench import BenchConfig, run_bench
    from ..bench.report import markdown_table, plot, text_table
    from ..fsutil import atomic_write_json

    if args.plot:
        check_plot_dependency()
    cfg = BenchConfig(package=args.package, backends=args.backends, precisions=args.precisions,
                      batch_sizes=args.batch_sizes, text_lengths=args.text_lengths, modes=args.modes,
                      encoders=args.encoders, data=args.data, device=args.device, threads=args.threads,
                      iters=args.iters, warmup=args.warmup, budget_s=args.budget_s, min_iters=args.min_iters,
                      max_iters=args.max_iters, parity_items=args.parity_items, block_s=args.block_s,
                      settle_s=args.settle_s, memory=args.memory)
    doc = run_bench(cfg)
    print(markdown_table(doc) if args.markdown else text_table(doc), flush=True)  # first: the files may fail
    if args.json_out:
        atomic_write_json(args.json_out, doc)
        print(f"wrote {args.json_out}", file=sys.stderr)
    if args.plot:
        print(f"wrote {plot(doc, args.plot)}", file=sys.stderr)
    return 0

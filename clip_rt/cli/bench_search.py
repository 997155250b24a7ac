"""`clip-rt bench-search`: the search scale bench (build, memory, latency, recall at 100k-1M vectors) and the
index build-rate bench (full-size photos, fast against exact decode). See clip_rt.bench.search_scale and
clip_rt.bench.index_build."""

from __future__ import annotations

import argparse
import sys

from .common import HELP


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(float(t)) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes takes comma-separated counts like 100000,1e6, not {text!r}") from None
    if not sizes or min(sizes) < 1000:
        raise argparse.ArgumentTypeError("--sizes needs counts of at least 1000")
    return sizes


def _names(text: str) -> tuple[str, ...]:
    from ..bench.search_scale import COLLECTIONS

    names = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [n for n in names if n not in COLLECTIONS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"--collections takes {', '.join(COLLECTIONS)} (comma-separated)")
    return names


def register(sub: argparse._SubParsersAction) -> None:
    from ..search.plan import index_types

    p = sub.add_parser("bench-search", formatter_class=HELP, help="benchmark search at scale and index build rates",
                       description="scale: for each collection size, build an index with clip-rt's own rules, then "
                                   "time single queries and measure recall@10 against exact search (random unit "
                                   "vectors; photo-like embeddings grown from the shared photos, queried with real "
                                   "captions and held-out photos). build: images/s of indexing full-size JPEGs made "
                                   "from the shared photos, fast against exact decode, with the embeddings' cosine.")
    what = p.add_subparsers(dest="bench", required=True, metavar="WHAT")
    s = what.add_parser("scale", formatter_class=HELP, help="build time, memory, latency and recall at 100k-1M")
    s.add_argument("--work", required=True, help="scratch folder (vectors, cached photo embeddings, indexes)")
    s.add_argument("--sizes", type=_sizes, default="100000,1000000", help="collection sizes, comma-separated")
    s.add_argument("--collections", type=_names, default="random,photos", help="random, photos (comma-separated)")
    s.add_argument("--package", default=None, help="model package for the photos collection")
    s.add_argument("--data", default=None, help="the shared data folder (cifar10/, caltech101/, flickr8k/, ...)")
    s.add_argument("--queries", type=int, default=1000, help="timed single queries per row")
    s.add_argument("--index-type", choices=index_types(), default="auto",
                   help="vector engine (clip_rt.search.plan)")
    s.add_argument("--memory-budget", default=None, metavar="SIZE", help="engine memory budget (default: 1G)")
    s.add_argument("--threads", type=int, default=None, help="FAISS threads (default: FAISS's, the usable cores)")
    s.add_argument("--keep", action=argparse.BooleanOptionalAction, default=False, help="keep the indexes built")
    s.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="write the result document here")
    s.add_argument("--markdown", dest="md_out", default=None, metavar="OUT", help="write the Markdown table here")
    s.set_defaults(handler=run_scale_cli)
    b = what.add_parser("build", formatter_class=HELP, help="images/s of indexing full-size JPEGs, fast vs exact decode")
    b.add_argument("package", help="model package (ViT-B/32-sized for a realistic encoder cost)")
    b.add_argument("--data", required=True, help="the shared data folder")
    b.add_argument("--work", required=True, help="scratch folder (the JPEGs are made once and kept there)")
    b.add_argument("--images", type=int, default=1000, help="full-size photos")
    b.add_argument("--size", default="4000x3000", help="photo size WIDTHxHEIGHT")
    b.add_argument("--block", type=int, default=100, help="photos per block (the two paths alternate by block)")
    b.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32", help="encoder precision")
    b.add_argument("--threads", type=int, default=None, help="encoder intra-op threads (default: the backend's)")
    b.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="write the result document here")
    b.add_argument("--markdown", dest="md_out", default=None, metavar="OUT", help="write the Markdown table here")
    b.set_defaults(handler=run_build_cli)


def _write(doc: dict, table: str, json_out: str | None, md_out: str | None) -> None:
    from ..bench.report import describe_machine
    from ..fsutil import atomic_write_bytes, atomic_write_json

    if json_out:
        atomic_write_json(json_out, doc)
        print(f"wrote {json_out}", file=sys.stderr)
    text = f"{describe_machine(doc['machine'])}\n\n{table}\n"
    if md_out:
        atomic_write_bytes(md_out, text.encode("utf-8"))
        print(f"wrote {md_out}", file=sys.stderr)
    print(text)


def run_scale_cli(args: argparse.Namespace) -> int:
    from ..bench.search_scale import ScaleConfig, markdown, run_scale
    from ..search.plan import parse_memory

    cfg = ScaleConfig(work=args.work, sizes=args.sizes, collections=args.collections, package=args.package,
                      data=args.data, queries=args.queries, index_type=args.index_type,
                      memory_budget=parse_memory(args.memory_budget) if args.memory_budget else None,
                      threads=args.threads, keep=args.keep)
    doc = run_scale(cfg)
    _write(doc, markdown(doc), args.json_out, args.md_out)
    return 0


def run_build_cli(args: argparse.Namespace) -> int:
    from ..bench.index_build import BuildConfig, markdown, run_build
    from ..errors import InputError

    try:
        width, height = (int(x) for x in args.size.lower().split("x"))
    except ValueError:
        raise InputError(f"--size takes WIDTHxHEIGHT like 4000x3000, not {args.size!r}") from None
    cfg = BuildConfig(package=args.package, data=args.data, work=args.work, images=args.images, width=width,
                      height=height, block=args.block, precision=args.precision, threads=args.threads)
    doc = run_build(cfg)
    _write(doc, markdown(doc), args.json_out, args.md_out)
    return 0

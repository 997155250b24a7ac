"""`clip-rt index` (embed a folder into a retrieval index) and `clip-rt search` (query it)."""

from __future__ import annotations

import argparse
import json

from .run import HELP, add_model_args, add_verbose_arg, load_model, print_table, report_errors, setup_logging


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", formatter_class=HELP, help="embed image files into a searchable index",
                       description="Embed every image under the given files and folders (walked recursively) and "
                                   "save an index folder (embeddings.npy, files.json, header.json). Unreadable "
                                   "files are reported on stderr and left out; the exit code is then 1.")
    p.add_argument("package", help="model package folder")
    p.add_argument("paths", nargs="+", metavar="DIR",
                   help="image folders (or files), or the output folder of clip-rt embed --ray (not embedded again)")
    p.add_argument("-o", "--output", required=True, help="index folder to write")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress on stderr (a tqdm bar if tqdm is installed, else counts)")
    add_model_args(p)
    p.set_defaults(handler=run_index)

    p = sub.add_parser("search", formatter_class=HELP, help="search an index by text and/or image",
                       description="Exact cosine-similarity search. The query is a text, an image, or both mixed as "
                                   "normalize(w * text + (1 - w) * image) with w = --text-weight. The model is the "
                                   "package recorded in the index header unless --package is given.")
    p.add_argument("index", help="index folder (from clip-rt index)")
    p.add_argument("--text", default=None, help="query text")
    p.add_argument("--image", default=None, help="query image file")
    p.add_argument("--text-weight", type=float, default=0.5, help="weight of the text when both are given")
    p.add_argument("--top-k", type=int, default=10, help="results to show")
    p.add_argument("--package", default=None, help="model package (default: the one recorded in the index)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads")
    p.add_argument("--json", action=argparse.BooleanOptionalAction, default=False,
                   help='print one JSON document: {"query": {...}, "results": [{"file", "score"}]}')
    add_verbose_arg(p)
    p.set_defaults(handler=run_search)


def run_index(args: argparse.Namespace) -> int:
    from ..index import ImageIndex
    from ..scale.shards import is_run

    if len(args.paths) == 1 and is_run(args.paths[0]):  # the output of clip-rt embed --ray: no embedding again
        from ..scale.shards import index_from_run

        index = index_from_run(args.paths[0], args.package, args.output)
        print(f"indexed {len(index)} image(s) from {args.paths[0]} into {args.output}", flush=True)
        return 0
    model = load_model(args)
    index, errors = ImageIndex.build(model, args.paths, batch_size=args.batch_size, progress=args.progress)
    index.save(args.output)
    print(f"indexed {len(index)} image(s) into {args.output}", flush=True)
    report_errors(errors, len(index) + len(errors))
    return 1 if errors else 0


def run_search(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..index import ImageIndex
    from ..model import load

    if args.text is None and args.image is None:
        raise InputError("give --text, --image, or both")
    setup_logging(args.verbose)
    index = ImageIndex.load(args.index)
    if args.package:
        model = load(args.package, backend=index.info.get("backend") or "onnxruntime",
                     precision=index.info.get("precision") or "fp32", threads=args.threads)
    else:
        model = index.open_model(threads=args.threads)
    hits = index.search(model, text=args.text, image=args.image, text_weight=args.text_weight, top_k=args.top_k)
    if args.json:
        query = {"text": args.text, "image": args.image,
                 "text_weight": args.text_weight if args.text is not None and args.image is not None else None}
        print(json.dumps({"query": query, "results": [{"file": h.file, "score": h.score} for h in hits]},
                         ensure_ascii=False))
    else:
        print_table([[f"{h.score:.4f}", h.file] for h in hits], ["cosine", "file"])
    return 0

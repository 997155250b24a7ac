"""`clip-rt index` (build or update an image index or a text pool) and `clip-rt search` (query one)."""

from __future__ import annotations

import argparse
import json
import logging

from .common import (DECODES, HELP, add_max_pixels_arg, add_model_args, add_progress_arg, add_verbose_arg, load_model,
                     log_model, positive_float, positive_int, print_table, report_errors, setup_logging, show_progress,
                     unit_float)


def register(sub: argparse._SubParsersAction) -> None:
    from ..search.plan import index_types

    p = sub.add_parser("index", formatter_class=HELP, help="build or update a searchable index of images or texts",
                       description="Embed every image under the given files and folders (walked recursively) into an "
                                   "index folder (SQLite item table, vectors file, FAISS engine above "
                                   "~65k vectors), or every line of --texts FILE into a text pool. Run it again with "
                                   "--update to embed only new and changed files and drop vanished ones. Unreadable "
                                   "files are reported on stderr and left out; the index is still written and the "
                                   "exit code is 0 (1 with --strict), so that `clip-rt index ... && clip-rt search "
                                   "...` runs on a real photo folder.")
    p.add_argument("package", nargs="?", help="model package folder (not needed with --remove or --convert)")
    p.add_argument("paths", nargs="*", metavar="DIR", help="image folders (or files), or the output folder of clip-rt embed --ray (not embedded again)")
    p.add_argument("-o", "--output", help="index folder to write (new or empty, or an index with --update)")
    p.add_argument("--texts", metavar="FILE", default=None,
                   help="build a text pool from FILE (one text per line, or a CSV/TSV caption/text/label column)")
    p.add_argument("--update", action=argparse.BooleanOptionalAction, default=False,
                   help="update the index at -o (created if absent): embed only new and changed items")
    p.add_argument("--remove", nargs="+", metavar="PATH", default=None,
                   help="drop these files (or every file under these folders, or these texts) from the index at -o")
    p.add_argument("--convert", metavar="OLD", default=None,
                   help="convert a clip-rt 0.1 index folder (header.json, embeddings.npy) in place; no re-embedding")
    p.add_argument("--decode", choices=DECODES, default=None,
                   help="JPEG decoding: fast (DCT-scaled to the smallest size >= the model's resize edge: 2.3x the "
                        "images/s of exact on 12 MP photos here, embedding cosine ~0.9998 to exact; README, Search) or "
                        "exact (full size, the parity reference). Default: fast for a new index, the recorded choice "
                        "for --update")
    p.add_argument("--thumbnails", action=argparse.BooleanOptionalAction, default=None,
                   help="keep a ~256 px JPEG thumbnail of each photo in the index, for the search page (clip-rt ui); "
                        "made from the decode that embeds the photo. Default: yes for a new index, the recorded "
                        "choice for --update")
    p.add_argument("--index-type", choices=index_types(), default=None,
                   help="vector engine: auto (exact below ~65k x 512 vectors, else IVF-SQ8 if it fits the memory "
                        "budget, switching to pqfs where the vectors have no cluster structure, else IVF-PQ), flat "
                        "(always exact), ivfsq, pqfs, ivfpq, hnsw (see README, Search). Default: auto, or the "
                        "recorded choice")
    p.add_argument("--memory-budget", default=None, metavar="SIZE",
                   help="memory the approximate engine may keep resident, e.g. 512M, 2G. Default: 1G, or the "
                        "recorded choice")
    p.add_argument("--strict", action=argparse.BooleanOptionalAction, default=False,
                   help="exit 1 when any file could not be read (the index is written either way)")
    p.add_argument("--videos", action=argparse.BooleanOptionalAction, default=True,
                   help="index video files (.mp4, .mov, .mkv, ...) too: one vector per kept frame, searched like "
                        "photos, hits give the file and the time (needs clip-rt[video])")
    p.add_argument("--every", type=positive_float, default=None, metavar="SECONDS",
                   help="seconds between the video frames sampled for the index. Default: 1 for a new index, the "
                        "recorded choice for --update")
    p.add_argument("--frame-cosine", type=unit_float, default=None, metavar="MAX",
                   help="skip a sampled video frame whose embedding cosine with the last kept frame of its video is "
                        "at least MAX (static shots store one vector). Default: 0.95 for a new index (trained CLIP "
                        "models; random weights need ~0.995), the recorded choice for --update")
    add_progress_arg(p)
    add_max_pixels_arg(p)
    add_model_args(p)
    p.set_defaults(handler=run_index)

    p = sub.add_parser("search", formatter_class=HELP, help="search an index or a text pool by text and/or image",
                       description="Cosine-similarity search (exact, or FAISS candidates reranked exactly). The query "
                                   "is a text, an image, or both mixed as normalize(w * text + (1 - w) * image) with "
                                   "w = --text-weight. The model is the package recorded in the index unless "
                                   "--package is given.")
    p.add_argument("index", help="index folder (from clip-rt index)")
    p.add_argument("--text", default=None, help="query text")
    p.add_argument("--image", default=None, help="query image file")
    p.add_argument("--text-weight", type=unit_float, default=None,
                   help="weight of the text when --text and --image are both given (default: 0.5)")
    p.add_argument("--top-k", type=positive_int, default=10, help="results to show")
    p.add_argument("--folder", default=None, help="only photos in this folder or below it")
    p.add_argument("--after", default=None, metavar="YYYY-MM-DD",
                   help="only photos taken on or after this day (EXIF DateTimeOriginal, else the file's time)")
    p.add_argument("--before", default=None, metavar="YYYY-MM-DD", help="only photos taken on or before this day")
    p.add_argument("--camera", default=None, help='only photos from this camera (EXIF make and model, e.g. "Canon '
                                                  'EOS 5D"; clip-rt ui lists them)')
    p.add_argument("--package", default=None, help="model package (default: the one recorded in the index)")
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op threads (default: the backend's choice)")
    p.add_argument("--json", action=argparse.BooleanOptionalAction, default=False,
                   help='print one JSON document: {"query": {...}, "results": [{"item", "file", "score"}]}')
    add_max_pixels_arg(p)
    add_verbose_arg(p)
    p.set_defaults(handler=run_search)


def run_index(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import InputError
    from ..progress import progress_callback
    from ..search.maintain import stderr_progress

    setup_logging(args.verbose)
    progress = show_progress(args)
    say = stderr_progress("clip-rt index") if progress else None
    if args.convert is not None:
        from ..search.convert import convert

        index = convert(args.convert, package=args.package)
        print(f"converted {args.convert}: {len(index)} image(s), engine {index.engine.kind}", flush=True)
        return 0
    if args.output is None:
        raise InputError("name the index folder with -o")
    if args.remove is not None:
        from ..search.update import remove_items

        extra = [x for x in (args.package, *args.paths) if x]
        report = remove_items(args.output, [*args.remove, *extra], log=say)
        print(f"removed {report.removed} item(s) from {args.output}; engine: {report.engine}", flush=True)
        return 0
    if args.package is None or (not args.paths and args.texts is None):
        raise InputError("give the model package and at least one image folder (or --texts FILE)")
    if args.paths and args.texts is not None:
        raise InputError("give image folders or --texts FILE, not both (a text pool and an image index are "
                         "separate indexes)")
    out = Path(args.output)
    if not args.update and out.exists() and any(out.iterdir()):
        from ..search.maintain import check_output_folder

        check_output_folder(out)  # a folder of other files: refused with its own message
        raise InputError(f"{out} already holds an index; refresh it with --update, or choose a new folder for -o")
    if len(args.paths) == 1 and not args.update:
        from ..scale.shards import index_from_run, is_run

        if is_run(args.paths[0]):  # the output of clip-rt embed --ray: its embeddings, not embedded again
            index = index_from_run(args.paths[0], args.package, out)
            print(f"indexed {len(index)} image(s) from {args.paths[0]} into {out}", flush=True)
            return 0
    model = load_model(args)
    bar = progress_callback("embedded", "text" if args.texts else "image", delay=0) if progress else None
    if args.texts is not None:
        from ..search.texts import update_texts

        index, report = update_texts(out, model, args.texts, index_type=args.index_type,
                                     memory_budget=args.memory_budget, progress=bar, log=say)
        print(f"indexed {len(index)} text(s) into {out} ({report.summary()})", flush=True)
        return 0
    from ..search.update import update_images

    reader = None
    if args.videos:
        from ..video.index_frames import reader_for

        reader = reader_for(model, out if args.update else None, every=args.every, max_cosine=args.frame_cosine,
                            batch_size=args.batch_size)
    elif args.every is not None or args.frame_cosine is not None:
        raise InputError("--every and --frame-cosine choose video frames; leave them out with --no-videos")
    index, report = update_images(out, model, args.paths, decode=args.decode, thumbnails=args.thumbnails,
                                  index_type=args.index_type,
                                  memory_budget=args.memory_budget, batch_size=args.batch_size,
                                  max_pixels=args.max_pixels, progress=bar, log=say, videos=reader)
    from ..search.video_items import frame_ids

    frames = len(frame_ids(index.store.conn)) if reader is not None else 0
    what = f"item(s) ({len(index) - frames} image(s), {frames} video frame(s))" if frames else "image(s)"
    print(f"indexed {len(index)} {what} into {out} ({report.summary()})", flush=True)
    report_errors(report.errors, len(index) + len(report.errors), args)
    return 1 if report.errors and args.strict else 0


def run_search(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..search import Index

    if args.text is None and args.image is None:
        raise InputError("give --text, --image, or both")
    if args.text is not None and not args.text.strip():
        raise InputError('the --text query is empty: give the words to search for, e.g. --text "a red bicycle"')
    if args.text_weight is not None and (args.text is None or args.image is None):
        raise InputError("--text-weight mixes a --text query with an --image query; give both, or leave it out")
    text_weight = 0.5 if args.text_weight is None else args.text_weight
    from ..search.photo_store import PhotoFilter

    where = PhotoFilter(folder=args.folder, after=args.after, before=args.before, camera=args.camera)  # checks dates
    setup_logging(args.verbose)
    index = Index.open(args.index)
    model = index.open_model(args.package, threads=args.threads)
    log_model(model)
    logging.getLogger("clip_rt.cli").info("index: %s (%d %s, dim %d)", args.index, len(index),
                                          "images" if index.kind == "images" else "texts", index.dim)
    hits = index.search(model, text=args.text, image=args.image, text_weight=text_weight, top_k=args.top_k,
                        max_pixels=args.max_pixels, where=where)
    if args.json:
        query = {"text": args.text, "image": args.image,
                 "text_weight": text_weight if args.text is not None and args.image is not None else None,
                 **({k: v for k, v in (("folder", where.folder), ("after", args.after), ("before", args.before),
                                        ("camera", args.camera)) if v is not None})}
        key = "file" if index.kind == "images" else "text"
        print(json.dumps({"query": query, "results": [{"item": h.item, key: h.file, "score": h.score,
                                                        **({"time": h.time} if h.time is not None else {})}
                                                       for h in hits]}, ensure_ascii=False))
    elif any(h.time is not None for h in hits):  # video frames among the hits: the time (s) in its own column
        print_table([[f"{h.score:.4f}", "" if h.time is None else f"{h.time:.2f}", h.file] for h in hits],
                    ["cosine", "time", "file"])
    else:
        print_table([[f"{h.score:.4f}", h.item] for h in hits], ["cosine", "file" if index.kind == "images" else "text"])
    return 0

"""`clip-rt classify`, `clip-rt embed` (with its Ray Data mode, --ray) and `clip-rt score`: run a package on files
and texts.

A file that cannot be read never stops a batch: it is reported (in the JSON document's "errors", or on
stderr after the table) and the exit code is 1. Errors that stop the command (bad package, bad labels, folders
without a single image file) exit 2 through the dispatcher. Each command checks its device flags once and walks
its folders once.

Video files among the inputs of classify and embed (named, or found in folders) are sampled by presentation time
and give one JSON line per frame on stdout (clip_rt.video.records); photos keep their own output, printed after
the video lines (classify --json: one document, the frames in its "videos"). A video that cannot be read is
reported like a bad photo.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from ..files import split_videos
from ..video.frames import SCALERS  # numpy and the preprocessing settings only: no PyAV at parse time
from .common import (DECODES, HELP, add_image_args, add_max_pixels_arg, add_model_args, check_device_flags, errors_json,
                     find_image_files, load_model, parse_labels, positive_float, positive_int, print_table,
                     report_errors, setup_logging, show_progress)

DEFAULT_EVERY = 1.0  # seconds between sampled video frames when neither --every nor --fps is given


# -- commands --------------------------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", formatter_class=HELP, help="zero-shot classify images against labels",
                       description="Zero-shot classification: every image file (folders are walked recursively) "
                                   "is scored against the labels, prompted with the templates (prompt ensembling: "
                                   "the mean of the normalized prompt embeddings). Scores follow the package's scoring "
                                   "rule: softmax probabilities over the labels at the model's logit scale (CLIP), or "
                                   "an independent sigmoid per label (SigLIP). Label embeddings are cached on disk "
                                   "($CLIP_RT_CACHE, default ~/.cache/clip-rt). Video files give one JSON line per "
                                   "sampled frame: {file, time, pts, time_base, labels: [{label, score}]}, before "
                                   "the photos' table (with --json, the document's \"videos\" list).")
    p.add_argument("package", help="model package folder")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image and video files and folders")
    labels = p.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", help="comma-separated labels, e.g. cat,dog,car")
    labels.add_argument("--labels-file", help="UTF-8 file with one label per line; blank lines and lines starting "
                                              "with # are skipped")
    p.add_argument("--templates", default="simple",
                   help="built-in set (simple, imagenet), a template file (one per line), or one template with {}")
    p.add_argument("--top-k", type=positive_int, default=5, help="labels shown per image")
    p.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                   help="read and write the text-embedding cache")
    p.add_argument("--json", action=argparse.BooleanOptionalAction, default=False,
                   help='print one JSON document: {"results": [{"file", "labels": [{"label", "score"}]}], "errors": [...]} '
                        '(the photos\' results; every input\'s errors, videos\' too; with video inputs also "videos": their '
                        'frame or --segments records)')
    add_model_args(p)
    add_image_args(p)
    add_video_args(p, segments=True)
    p.set_defaults(handler=run_classify)

    p = sub.add_parser("embed", formatter_class=HELP, help="write image or text embeddings to a .npy file",
                       description="Embed images (files and folders, walked recursively) or texts into an "
                                   "L2-normalized float32 [N, D] array saved with numpy. For images, the list of "
                                   "files embedded (one per row) is written next to it, named after OUTPUT with "
                                   ".files.json in place of its suffix (imgs.npy -> imgs.files.json). Video files: "
                                   "one row per sampled frame, after the photos' rows; its .files.json entry is "
                                   "{file, time, pts, time_base}, and a JSON line on stdout says where it went: "
                                   "{file, time, pts, time_base, output, row}.")
    p.add_argument("package", help="model package folder")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--images", nargs="+", metavar="PATH", help="image and video files and folders")
    what.add_argument("--texts", nargs="+", metavar="TEXT", help="texts")
    p.add_argument("-o", "--output", required=True, help="output .npy file (with --ray: an output folder)")
    p.add_argument("--decode", choices=DECODES, default="exact",
                   help="JPEG decoding for --images: exact (full size: the embeddings transformers gives) or fast "
                        "(DCT-scaled to the smallest size >= the model's resize edge: 2.3x the images/s of exact on "
                        "12 MP photos here, embedding cosine ~0.9998 to exact); measured in the README's search "
                        "section")
    add_model_args(p)
    add_image_args(p)
    add_video_args(p, segments=False)
    add_ray_args(p)
    p.set_defaults(handler=run_embed)

    p = sub.add_parser("score", formatter_class=HELP, help="CLIP score of an image and a text",
                       description="CLIP score = 100 * max(cosine(image, text), 0): CLIPScore (Hessel et al., 2021, "
                                   "'CLIPScore: A Reference-free Evaluation Metric for Image Captioning') with the "
                                   "scale of 100 that torchmetrics uses instead of the paper's w = 2.5.")
    p.add_argument("package", help="model package folder")
    p.add_argument("image", help="image file")
    p.add_argument("text", help="text")
    p.add_argument("--json", action=argparse.BooleanOptionalAction, default=False, help="print a JSON document")
    add_model_args(p)
    add_max_pixels_arg(p)
    p.set_defaults(handler=run_score)


def run_classify(args: argparse.Namespace) -> int:
    from ..progress import progress_callback
    from ..zeroshot import ZeroShotClassifier

    labels = parse_labels(args)
    check_device_flags(args)
    files, errors = find_image_files(args.paths, videos=True)  # the one walk: the files below are encoded as listed
    files, videos = split_videos(files)
    check_video_flags(args, videos, errors)
    results: list = []
    frame_records: list[dict[str, Any]] = []
    videos_done = 0
    if files or videos:  # only unreadable paths: nothing to classify, no model to load
        model = load_model(args, flags_checked=True)
        progress = show_progress(args)
        clf = ZeroShotClassifier(model, labels, templates=args.templates, cache=args.cache, progress=progress)
        if files:
            emb, done, file_errors = model.encode_file_list(
                files, batch_size=args.batch_size, max_pixels=args.max_pixels,
                progress=progress_callback("classified", "img") if progress else None)
            results = list(zip(done, clf.predict_embeddings(emb, args.top_k)))
            errors = errors + file_errors
        videos_done, video_errors = classify_videos(clf, videos, args,
                                                    progress_callback("classified", "video") if progress else None,
                                                    collect=frame_records if args.json else None)
        errors = errors + video_errors
    if args.json:
        doc = {"results": [{"file": f, "labels": [{"label": p.label, "score": p.score} for p in preds]}
                           for f, preds in results],
               "errors": errors_json(errors, args)}
        if videos:  # --json is one document: the frame (or --segments) records go in it, not as lines before it
            doc["videos"] = frame_records
        print(json.dumps(doc, ensure_ascii=False))
        if errors:  # the reasons are in the document; stderr says that some failed (the exit code is then 1)
            print(f"clip-rt classify: {len(errors)} of {len(results) + videos_done + len(errors)} file(s) failed "
                  f"(listed with their reasons in the JSON document's \"errors\")", file=sys.stderr)
    else:
        rows = [[f, *[f"{p.label} ({p.score:.3f})" for p in preds]] for f, preds in results]
        k = min(args.top_k, len(labels))
        if rows:
            print_table(rows, ["file", *(["label (probability)"] + [""] * (k - 1))])
        report_errors(errors, len(results) + videos_done + len(errors), args)
    return 1 if errors else 0


def run_embed(args: argparse.Namespace) -> int:
    import io

    import numpy as np

    from ..fsutil import atomic_write_bytes, atomic_write_json
    from ..progress import progress_callback
    from ..video.embed import embed_video_files
    from ..video.records import embed_records

    if args.ray is not None:
        return run_embed_ray(args)
    out = Path(args.output)
    errors: list = []
    progress = show_progress(args)
    check_device_flags(args)
    lines: list = []  # one per video frame, printed once OUTPUT holds it
    if args.images:
        files, errors = find_image_files(args.images, videos=True)  # the one walk: the files below are encoded as listed
        files, videos = split_videos(files)
        check_video_flags(args, videos, errors)
        model = load_model(args, flags_checked=True)
        emb, files, file_errors = model.encode_file_list(
            files, batch_size=args.batch_size, max_pixels=args.max_pixels, decode=args.decode,
            progress=progress_callback("embedded", "img") if progress else None)
        errors += file_errors
        clips, video_errors = embed_video_files(model, videos, **video_sampling(args), progress=progress_callback(
            "embedded", "video") if progress else None)
        errors += video_errors
        entries, lines = embed_records(clips, str(out), len(emb))
        emb = np.concatenate([emb, *(c.embeddings for c in clips)]) if clips else emb  # the photos' rows first
        inputs = len(files) + len(clips)  # files embedded: a video counts once, whatever its frames
        atomic_write_json(out.with_suffix(".files.json"), [*files, *entries])
    else:
        check_video_flags(args, [])
        model = load_model(args, flags_checked=True)
        emb = model.encode_texts(args.texts, progress=progress_callback("embedded", "text") if progress else None)
        inputs = len(emb)
    buf = io.BytesIO()
    np.save(buf, emb, allow_pickle=False)
    atomic_write_bytes(out, buf.getvalue())
    print_records(lines)
    print(f"wrote {out}: float32 {list(emb.shape)}", file=sys.stderr)
    report_errors(errors, inputs + len(errors), args)
    return 1 if errors else 0


def run_score(args: argparse.Namespace) -> int:
    from ..errors import InputError

    if not args.text.strip():  # refused as the HTTP service refuses it: the bare start and end tokens match nothing
        raise InputError('the text is empty: give the words to score the image against, e.g. "a dog on a beach"')
    model = load_model(args)
    image = model.encode_images([args.image], max_pixels=args.max_pixels)  # [1, D]
    cos = float((image @ model.encode_texts([args.text]).T)[0, 0])
    score = 100.0 * max(cos, 0.0)
    if args.json:
        doc = {"file": args.image, "text": args.text, "clip_score": score, "cosine": cos}
        if model.scoring.rule == "sigmoid":  # the model's own match probability, sigmoid(scale * cos + bias)
            import numpy as np

            doc["probability"] = float(model.scoring.probabilities(np.array([[cos]], np.float32))[0, 0])
        print(json.dumps(doc, ensure_ascii=False))
    else:
        print(f"{score:.4f}")
    return 0


# -- video files among the inputs of classify and embed ----------------------------------------------------------
def add_video_args(p: argparse.ArgumentParser, segments: bool) -> None:
    """--every / --fps (one of them), --scaler, and with segments=True (classify) --segments."""
    g = p.add_argument_group("video files", "video files among the inputs (.mp4, .mov, .mkv, .webm, ...; named or "
                                            "found in folders) give one JSON line per sampled frame on stdout")
    rate = g.add_mutually_exclusive_group()
    rate.add_argument("--every", type=positive_float, default=None, metavar="SECONDS",
                      help=f"sample the first frame at or after each multiple of SECONDS of presentation time "
                           f"(default: {DEFAULT_EVERY:g} s when neither --every nor --fps is given: labels change "
                           f"with shots, which last seconds, and every frame of a 30 fps video would cost 30x the "
                           f"encoding for near-identical frames)")
    rate.add_argument("--fps", type=positive_float, default=None, metavar="N",
                      help="sample N frames a second of presentation time (the same as --every 1/N)")
    g.add_argument("--scaler", choices=SCALERS, default="auto",
                   help="frame -> model input: FFmpeg's scaler on the decoded frame, Pillow (the still-image path "
                        "itself), or auto (FFmpeg where it has the package's filter)")
    if segments:
        g.add_argument("--segments", action=argparse.BooleanOptionalAction, default=False,
                       help="print time ranges instead of frames: consecutive sampled frames with the same top label "
                            "merged into {file, start, end, label, score (the mean top score), frames}")


def check_video_flags(args: argparse.Namespace, videos: Sequence[str], errors: Sequence[Any] = ()) -> None:
    """--every / --fps / --segments with no video among the inputs (found, or named and unreadable) is an InputError;
    with videos, the video extra must be installed (the install hint), checked before any work."""
    from ..errors import InputError
    from ..files import is_video_path

    given = [f"--{name}" for name in ("every", "fps", "segments") if getattr(args, name, None)]
    if given and not videos and not any(is_video_path(e.file) for e in errors):
        raise InputError(f"{' and '.join(given)} sample video files, and none of the inputs is one (videos are told by "
                         f"their file name: .mp4, .mov, .mkv, .webm, ...)")
    if videos:
        from ..video.source import require_av

        require_av()


def video_sampling(args: argparse.Namespace) -> dict[str, Any]:
    """embed_video's sampling and batching settings from the flags (DEFAULT_EVERY when neither rate is given)."""
    every = DEFAULT_EVERY if args.every is None and args.fps is None else args.every
    return {"every": every, "fps": args.fps, "scaler": args.scaler, "batch_size": args.batch_size}


def print_records(records: Sequence[dict[str, Any]]) -> None:
    for record in records:
        print(json.dumps(record, ensure_ascii=False))
    sys.stdout.flush()


def classify_videos(clf: Any, videos: Sequence[str], args: argparse.Namespace,
                    progress: Callable[[int, int], None] | None,
                    collect: list[dict[str, Any]] | None = None) -> tuple[int, list[Any]]:
    """Classify each video and print its lines as soon as it is done (or, with `collect`, append them there for the
    --json document). Returns (videos classified, errors)."""
    from ..video.embed import embed_video_files
    from ..video.records import classify_records

    classified, errors = 0, []
    for k, video in enumerate(videos):  # one at a time: a long video's lines come before the next one is decoded
        done, bad = embed_video_files(clf.model, [video], **video_sampling(args))
        errors += bad
        for emb in done:
            records = classify_records(clf, emb, args.top_k, args.segments)
            if collect is None:
                print_records(records)
            else:
                collect.extend(records)
            classified += 1
        if progress is not None:
            progress(k + 1, len(videos))
    return classified, errors


# -- embed --ray: Ray Data batch embedding ------------------------------------------------------------------
def add_ray_args(p: argparse.ArgumentParser) -> None:
    """The --ray flags of `clip-rt embed` (Ray Data batch embedding; needs clip-rt[scale])."""
    g = p.add_argument_group("Ray Data (--ray)", "embed --images on a Ray cluster: -o is then a folder of Parquet "
                                                 "shards (file, embedding) + failed.json; rerunning the same command "
                                                 "resumes an interrupted run without recomputing finished shards")
    g.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on Ray: alone, a local cluster on this machine; or a cluster address (auto, HOST:PORT, "
                        "ray://HOST:PORT)")
    g.add_argument("--ray-actors", type=int, default=1, help="encoder actors (one model each)")
    g.add_argument("--ray-actor-cpus", type=float, default=1.0,
                   help="CPUs each actor reserves (its intra-op threads unless --threads)")
    g.add_argument("--ray-actor-gpus", type=float, default=None,
                   help="GPUs each actor reserves (default: 1 on a cuda device, else 0)")
    g.add_argument("--ray-shard-size", type=int, default=1024, help="files per output shard (the unit of resumption)")


def run_embed_ray(args: argparse.Namespace) -> int:
    from ..backends import default_device
    from ..errors import InputError
    from ..scale.pipeline import embed_images, print_progress

    if not args.images:
        raise InputError("--ray embeds images: give --images PATH... (texts are embedded with plain clip-rt embed)")
    if args.every is not None or args.fps is not None or split_videos(args.images)[1]:
        raise InputError("--ray embeds images, not video files: embed videos with plain clip-rt embed")
    setup_logging(args.verbose)
    device = args.device or default_device(args.backend)
    gpus = args.ray_actor_gpus if args.ray_actor_gpus is not None else (1.0 if device.startswith("cuda") else 0.0)
    run = embed_images(args.package, args.images, args.output, address=None if args.ray == "local" else args.ray,
                       actors=args.ray_actors, batch_size=args.batch_size, shard_size=args.ray_shard_size,
                       backend=args.backend, precision=args.precision, device=args.device, threads=args.threads,
                       actor_cpus=args.ray_actor_cpus, actor_gpus=gpus, progress=print_progress)
    print(f"wrote {run.output}: {run.embedded} embeddings in {run.shards} shard(s) ({run.shards_skipped} finished "
          f"before, {run.shards_computed} computed now, {run.images_encoded} images encoded in {run.seconds:.1f} s, "
          f"{run.images_per_s:.1f} images/s after Ray start-up)",
          file=sys.stderr)
    report_errors(run.failed, run.embedded + len(run.failed), args)
    return 1 if run.failed else 0

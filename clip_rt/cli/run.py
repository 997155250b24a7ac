"""`clip-rt classify`, `clip-rt embed` and `clip-rt score`: run a package on files and texts.

A file that cannot be read never stops a batch: it is reported (in the JSON document's "errors", or on
stderr after the table) and the exit code is 1. Errors that stop the command (bad package, bad labels, folders
without a single image file) exit 2 through the dispatcher.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..contract import PRECISIONS
from ..preprocess import DEFAULT_MAX_PIXELS
from . import HelpFormatter
from .scale import add_ray_args, run_embed_ray

if TYPE_CHECKING:
    from ..errors import ImageError
    from ..model import ClipModel

HELP = HelpFormatter
BACKEND_CHOICES = ("onnxruntime", "openvino", "tensorrt", "torch")  # the keys of clip_rt.backends.BACKENDS
DECODES = ("fast", "exact")  # clip_rt.preprocess.DECODES, spelled out so that the CLI does not import Pillow to parse


# -- argument types: a bad value is an argparse error naming the flag, before anything loads ---------------
def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def unit_float(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


# -- shared by the run and index commands --------------------------------------------------------------
def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="onnxruntime",
                   help="inference backend (torch: the eager transformers reference, needs clip-rt[export])")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="artifact precision")
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: the backend's own device: cuda for tensorrt, else cpu)")
    p.add_argument("--provider", choices=("cuda", "tensorrt"), default=None,
                   help="onnxruntime execution provider on a GPU, with --device cuda (default there: cuda)")
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op threads (default: the backend's choice)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per inference batch")
    add_verbose_arg(p)


def add_image_args(p: argparse.ArgumentParser) -> None:
    """Options of the commands that read image files themselves (classify, embed --images)."""
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                   help="larger images (width x height, read from the header) are refused as decompression bombs")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars on stderr for long work (text encoding, image batches), shown after a second "
                        "(default: on when stderr is a terminal and --json is off)")


def show_progress(args: argparse.Namespace) -> bool:
    """--progress as given, else on for a terminal that is not reading --json output."""
    if args.progress is not None:
        return bool(args.progress)
    return sys.stderr.isatty() and not getattr(args, "json", False)


def find_image_files(paths: Sequence[str]) -> tuple[list[str], list["ImageError"]]:
    """The image files under `paths` (folders walked recursively) and the paths that could not be read. A walk
    that finds nothing at all (no file, no error: an empty folder, or one of documents) is an InputError."""
    from ..errors import InputError
    from ..preprocess import iter_image_files

    files, errors = iter_image_files(paths)
    if not files and not errors:
        raise InputError(f"no image files found under {', '.join(paths)} (folders are walked recursively for image "
                         f"file names: .jpg, .png, .webp, ...)")
    return files, errors


def add_verbose_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action=argparse.BooleanOptionalAction, default=False,
                   help="log what happens (backend, text-embedding cache hits) on stderr")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record (not the one at creation), so that
    main() called repeatedly in one process (tests, notebooks) never logs into a stale stream."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging(verbose: bool) -> None:
    """clip_rt's log lines go to stderr: INFO with --verbose, warnings always."""
    logger = logging.getLogger("clip_rt")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


def check_device_flags(args: argparse.Namespace) -> None:
    """Flag combinations that cannot work, refused with the flags' names (the library names its parameters)."""
    from ..errors import InputError

    on_gpu = args.device is not None and args.device.startswith("cuda")
    if args.provider is not None and not on_gpu:
        raise InputError(f"--provider {args.provider} runs on a GPU: add --device cuda (or cuda:N)")
    if args.backend == "tensorrt" and args.device is not None and not on_gpu:
        raise InputError(f"--backend tensorrt runs on a GPU: use --device cuda (or cuda:N), not {args.device}")


def log_model(model: "ClipModel") -> None:
    logging.getLogger("clip_rt.cli").info("model: %s", json.dumps(model.describe()))


def load_model(args: argparse.Namespace, package: str | None = None) -> "ClipModel":
    from ..model import load

    setup_logging(args.verbose)
    check_device_flags(args)
    options: dict[str, Any] = {}
    if args.provider is not None:
        options["provider"] = args.provider
    model = load(package or args.package, backend=args.backend, precision=args.precision, device=args.device,
                 threads=args.threads, **options)
    log_model(model)
    return model


def report_errors(errors: Sequence["ImageError"], total: int) -> None:
    """Per-file errors on stderr, after the results."""
    for e in errors:
        print(f"error: {e.file}: {e.reason}", file=sys.stderr)
    if errors:
        print(f"{len(errors)} of {total} file(s) failed", file=sys.stderr)


def errors_json(errors: Sequence["ImageError"]) -> list[dict[str, str]]:
    return [{"file": e.file, "error": e.reason} for e in errors]


def print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


# -- commands --------------------------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", formatter_class=HELP, help="zero-shot classify images against labels",
                       description="Zero-shot classification: every image file (folders are walked recursively) "
                                   "is scored against the labels, prompted with the templates (prompt ensembling: "
                                   "the mean of the normalized prompt embeddings). Scores follow the package's scoring "
                                   "rule: softmax probabilities over the labels at the model's logit scale (CLIP), or "
                                   "an independent sigmoid per label (SigLIP). Label embeddings are cached on disk "
                                   "($CLIP_RT_CACHE, default ~/.cache/clip-rt).")
    p.add_argument("package", help="model package folder")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files and folders")
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
                   help='print one JSON document: {"results": [{"file", "labels": [{"label", "score"}]}], "errors": [...]}')
    add_model_args(p)
    add_image_args(p)
    p.set_defaults(handler=run_classify)

    p = sub.add_parser("embed", formatter_class=HELP, help="write image or text embeddings to a .npy file",
                       description="Embed images (files and folders, walked recursively) or texts into an "
                                   "L2-normalized float32 [N, D] array saved with numpy. For images, the list of "
                                   "files embedded (one per row) is written next to it, named after OUTPUT with "
                                   ".files.json in place of its suffix (imgs.npy -> imgs.files.json).")
    p.add_argument("package", help="model package folder")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--images", nargs="+", metavar="PATH", help="image files and folders")
    what.add_argument("--texts", nargs="+", metavar="TEXT", help="texts")
    p.add_argument("-o", "--output", required=True, help="output .npy file (with --ray: an output folder)")
    p.add_argument("--decode", choices=DECODES, default="exact",
                   help="JPEG decoding for --images: exact (full size: the embeddings transformers gives) or fast "
                        "(DCT-scaled to the smallest size >= the model's resize edge, several times faster on phone "
                        "photos, embedding cosine ~0.99 to exact); see the README's search section")
    add_model_args(p)
    add_image_args(p)
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
    p.set_defaults(handler=run_score)


def parse_labels(args: argparse.Namespace) -> list[str]:
    from ..errors import InputError
    from ..zeroshot import read_labels_file

    labels = read_labels_file(args.labels_file) if args.labels_file else \
        [x.strip() for x in args.labels.split(",") if x.strip()]
    if not labels and args.labels_file:
        raise InputError(f"labels file {args.labels_file} has no labels (it needs one label per line; blank lines "
                         f"and lines starting with # are skipped)")
    if not labels:
        raise InputError("no labels given (--labels a,b,c or --labels-file FILE)")
    if len(set(labels)) == 1:
        raise InputError(f"one label ({labels[0]!r}) is not a classification: its probability is always 1.000; give "
                         f"two or more labels")
    return labels


def run_classify(args: argparse.Namespace) -> int:
    from ..progress import progress_callback
    from ..zeroshot import ZeroShotClassifier

    labels = parse_labels(args)
    check_device_flags(args)
    files, errors = find_image_files(args.paths)
    results: list = []
    if files:  # only unreadable paths: nothing to classify, no model to load
        model = load_model(args)
        progress = show_progress(args)
        clf = ZeroShotClassifier(model, labels, templates=args.templates, cache=args.cache, progress=progress)
        results, file_errors = clf.predict_files(files, top_k=args.top_k, batch_size=args.batch_size,
                                                 max_pixels=args.max_pixels,
                                                 progress=progress_callback("classified", "img") if progress else None)
        errors = errors + file_errors
    if args.json:
        doc = {"results": [{"file": f, "labels": [{"label": p.label, "score": p.score} for p in preds]}
                           for f, preds in results],
               "errors": errors_json(errors)}
        print(json.dumps(doc, ensure_ascii=False))
    else:
        rows = [[f, *[f"{p.label} ({p.score:.3f})" for p in preds]] for f, preds in results]
        k = min(args.top_k, len(labels))
        if rows:
            print_table(rows, ["file", *(["label (probability)"] + [""] * (k - 1))])
        report_errors(errors, len(results) + len(errors))
    return 1 if errors else 0


def run_embed(args: argparse.Namespace) -> int:
    import io

    import numpy as np

    from ..fsutil import atomic_write_bytes, atomic_write_json
    from ..progress import progress_callback

    if args.ray is not None:
        return run_embed_ray(args)
    out = Path(args.output)
    errors: list = []
    progress = show_progress(args)
    check_device_flags(args)
    if args.images:
        files, errors = find_image_files(args.images)
        model = load_model(args)
        emb, files, file_errors = model.encode_image_files(
            files, batch_size=args.batch_size, max_pixels=args.max_pixels, decode=args.decode,
            progress=progress_callback("embedded", "img") if progress else None)
        errors += file_errors
        atomic_write_json(out.with_suffix(".files.json"), files)
    else:
        model = load_model(args)
        emb = model.encode_texts(args.texts, progress=progress_callback("embedded", "text") if progress else None)
    buf = io.BytesIO()
    np.save(buf, emb, allow_pickle=False)
    atomic_write_bytes(out, buf.getvalue())
    print(f"wrote {out}: float32 {list(emb.shape)}", file=sys.stderr)
    report_errors(errors, len(emb) + len(errors))
    return 1 if errors else 0


def run_score(args: argparse.Namespace) -> int:
    model = load_model(args)
    cos = float(model.similarity([args.image], [args.text])[0, 0])
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

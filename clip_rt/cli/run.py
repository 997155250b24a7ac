"""`clip-rt classify`, `clip-rt embed` and `clip-rt score`: run a package on files and texts.

A file that cannot be read never stops a batch: it is reported (in the JSON document's "errors", or on
stderr after the table) and the exit code is 1. Errors that stop the command (bad package, bad labels)
exit 2 through the dispatcher.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..contract import PRECISIONS
from .scale import add_ray_args, run_embed_ray

if TYPE_CHECKING:
    from ..errors import ImageError
    from ..model import ClipModel

HELP = argparse.ArgumentDefaultsHelpFormatter
BACKEND_CHOICES = ("onnxruntime", "openvino", "tensorrt", "torch")  # the keys of clip_rt.backends.BACKENDS


# -- shared by the run and index commands --------------------------------------------------------------
def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="onnxruntime",
                   help="inference backend (torch: the eager transformers reference, needs clip-rt[export])")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="artifact precision")
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: the backend's own device: cuda for tensorrt, else cpu)")
    p.add_argument("--provider", choices=("cuda", "tensorrt"), default=None,
                   help="onnxruntime execution provider on a GPU (default with --device cuda: cuda)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the backend's choice)")
    p.add_argument("--batch-size", type=int, default=32, help="images per inference batch")
    add_verbose_arg(p)


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


def load_model(args: argparse.Namespace, package: str | None = None) -> "ClipModel":
    from ..model import load

    setup_logging(args.verbose)
    options: dict[str, Any] = {}
    if args.provider is not None:
        options["provider"] = args.provider
    model = load(package or args.package, backend=args.backend, precision=args.precision, device=args.device,
                 threads=args.threads, **options)
    logging.getLogger("clip_rt.cli").info("model: %s", json.dumps(model.describe()))
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
                                   "the mean of the normalized prompt embeddings). Scores are softmax probabilities "
                                   "at the model's logit scale. Label embeddings are cached on disk "
                                   "($CLIP_RT_CACHE, default ~/.cache/clip-rt).")
    p.add_argument("package", help="model package folder")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files and folders")
    labels = p.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", help="comma-separated labels, e.g. cat,dog,car")
    labels.add_argument("--labels-file", help="file with one label per line")
    p.add_argument("--templates", default="simple",
                   help="built-in set (simple, imagenet), a template file (one per line), or one template with {}")
    p.add_argument("--top-k", type=int, default=5, help="labels shown per image")
    p.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                   help="read and write the text-embedding cache")
    p.add_argument("--json", action=argparse.BooleanOptionalAction, default=False,
                   help='print one JSON document: {"results": [{"file", "labels": [{"label", "score"}]}], "errors": [...]}')
    add_model_args(p)
    p.set_defaults(handler=run_classify)

    p = sub.add_parser("embed", formatter_class=HELP, help="write image or text embeddings to a .npy file",
                       description="Embed images (files and folders, walked recursively) or texts into an "
                                   "L2-normalized float32 [N, D] array saved with numpy. For images, the list of "
                                   "files embedded (one per row) is written next to it as OUT.files.json.")
    p.add_argument("package", help="model package folder")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--images", nargs="+", metavar="PATH", help="image files and folders")
    what.add_argument("--texts", nargs="+", metavar="TEXT", help="texts")
    p.add_argument("-o", "--output", required=True, help="output .npy file (with --ray: an output folder)")
    add_model_args(p)
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
        raise InputError(f"labels file {args.labels_file} has no labels (it needs one label per line)")
    if not labels:
        raise InputError("no labels given (--labels a,b,c or --labels-file FILE)")
    return labels


def run_classify(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..zeroshot import ZeroShotClassifier

    if args.top_k < 1:
        raise InputError(f"--top-k must be >= 1, got {args.top_k}")
    labels = parse_labels(args)
    model = load_model(args)
    clf = ZeroShotClassifier(model, labels, templates=args.templates, cache=args.cache)
    results, errors = clf.predict_files(args.paths, top_k=args.top_k, batch_size=args.batch_size)
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

    if args.ray is not None:
        return run_embed_ray(args)
    model = load_model(args)
    out = Path(args.output)
    errors: list = []
    if args.images:
        emb, files, errors = model.encode_image_files(args.images, batch_size=args.batch_size)
        atomic_write_json(out.with_suffix(".files.json"), files)
    else:
        emb = model.encode_texts(args.texts)
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
        print(json.dumps({"file": args.image, "text": args.text, "clip_score": score, "cosine": cos}, ensure_ascii=False))
    else:
        print(f"{score:.4f}")
    return 0

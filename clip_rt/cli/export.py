"""`clip-rt export` (build a package) and `clip-rt info` (show one)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..contract import PRECISIONS
from .common import HELP, add_progress_arg, show_progress


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", formatter_class=HELP, help="export a CLIP-family model to a validated model package",
                       description="Trace a model's image and text encoders to ONNX (preprocessing folded in where "
                                   "exact), validate every artifact against the model's own eager PyTorch and write a "
                                   "model package. Families: Hugging Face CLIPModel, SiglipModel (SigLIP, "
                                   "fixed-resolution SigLIP 2) and ChineseCLIPModel (hub id or folder, told apart by "
                                   "config.json), and open_clip models of any architecture (open_clip:ARCH).")
    p.add_argument("model", help="Hugging Face hub id (e.g. openai/clip-vit-base-patch32, "
                                 "google/siglip-base-patch16-224) or local HF folder, or open_clip:ARCH (e.g. "
                                 "open_clip:ViT-B-32, open_clip:MobileCLIP2-S0)")
    p.add_argument("-o", "--output", required=True, help="package folder to write")
    p.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["fp32"],
                   help="precisions to build (fp32 is always built)")
    p.add_argument("--random-init", action=argparse.BooleanOptionalAction, default=False,
                   help="random weights from the folder's config.json (tests and benchmarks only)")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-init")
    p.add_argument("--pretrained", metavar="TAG_OR_FILE", default=None,
                   help="open_clip:ARCH only: an open_clip pretrained tag (e.g. laion2b_s34b_b79k, downloaded) or a "
                        "local checkpoint file, as open_clip.create_model takes it")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument("--eval-images", default=None, help="folder of real photos for validation (default: synthetic crops)")
    p.add_argument("--eval-texts", default=None, help="text file (one per line) or captions CSV for validation")
    p.add_argument("--force", action=argparse.BooleanOptionalAction, default=False,
                   help="write artifacts that fail their accuracy gate (recorded in the manifest)")
    _add_quantize_args(p)
    add_progress_arg(p)
    p.set_defaults(handler=run_export)

    p = sub.add_parser("info", formatter_class=HELP, help="print a package's manifest as a readable table")
    p.add_argument("package", help="model package folder")
    p.add_argument("--json", action=argparse.BooleanOptionalAction, default=False, help="print the raw manifest")
    p.set_defaults(handler=run_info)


def _add_quantize_args(p: argparse.ArgumentParser) -> None:
    """Options of the fp16/int8 builders (clip_rt.export.quantize: standard library and numpy at import)."""
    from ..export import quantize

    quantize.add_cli_args(p)


def run_export(args: argparse.Namespace) -> int:
    try:
        from ..export import quantize
        from ..export.pipeline import ExportOptions, export_package

        extra: dict[str, Any] = {**quantize.options_from_cli(args), "progress": show_progress(args)}
        options = ExportOptions(precisions=tuple(args.precision), random_init=args.random_init, seed=args.seed,
                                revision=args.revision, pretrained=args.pretrained,
                                opset=args.opset, eval_images=args.eval_images,
                                eval_texts=args.eval_texts, force=args.force, extra=extra)
        export_package(args.model, args.output, options)
    except ModuleNotFoundError as e:  # torch, transformers, onnx, ...: the export extra is not installed
        from ..errors import missing_dependency

        top = (e.name or "").split(".")[0]
        if not top or top == "clip_rt":  # a module of clip-rt itself: a broken install, not a missing extra
            raise
        raise missing_dependency(top, "export", "clip-rt export") from e
    return 0


def run_info(args: argparse.Namespace) -> int:
    from ..package import Package

    pkg = Package.open(args.package)
    if args.json:
        print(json.dumps(pkg.manifest, indent=2))
        return 0
    print(format_info(pkg))
    return 0


def format_info(pkg: Any) -> str:
    m, src, pre = pkg.manifest, pkg.source, pkg.preprocess
    lines = [f"package      {pkg.root}",
             f"format       {m['format']} v{m['format_version']} ({m.get('created_by', '?')}, {m.get('created', '?')})",
             f"source       {src['model']} ({src.get('kind')}{', revision ' + src['revision'] if src.get('revision') else ''})"]
    if src.get("random_init"):
        lines.append(f"             RANDOM WEIGHTS, seed {src.get('seed')}: for tests and benchmarks only")
    md = pkg.model
    resize = (f"resize shortest side to {pre['resize']} ({pre['interpolation']}), center crop {pre['image_size']}"
              f"{' (offsets rounded half to even)' if pre.get('crop_rounding') == 'half_even' else ''}"
              if pre.get("resize_mode", "shortest") == "shortest" else
              f"resize to {pre['image_size']}x{pre['image_size']} ({pre['interpolation']}), no crop")
    lines += [f"model        {pkg.family}: embed dim {md['embed_dim']}, image {md['image_size']}px (patch "
              f"{md.get('patch_size')}), context {md['context_length']}",
              f"scoring      {pkg.scoring.describe}",
              f"preprocess   {resize}, mean {tuple(round(x, 4) for x in pre['mean'])}, "
              f"std {tuple(round(x, 4) for x in pre['std'])}",
              f"tokenizer    {', '.join(pkg.tokenizer_files)}; texts padded to "
              f"{'the context length' if pkg.padding == 'max_length' else 'the longest of a batch'}",
              "", "artifacts"]
    header = ("file", "encoder", "precision", "backend", "opset", "MiB", "sha256", "min cos", "mean cos", "note")
    rows = [header]
    for a in pkg.artifacts:
        size = (pkg.root / a.file).stat().st_size / 2**20
        note = "FORCED" if a.forced else ", ".join(f"{k}" for k in a.extra)
        rows.append((a.file, a.encoder, a.precision, a.backend, str(a.opset or "-"), f"{size:.1f}", a.sha256[:12],
                     f"{a.parity.get('min_cosine', float('nan')):.6f}", f"{a.parity.get('mean_cosine', float('nan')):.6f}",
                     note))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    for w in m.get("warnings", []):
        lines.append(f"WARNING: {w}")
    return "\n".join(lines)

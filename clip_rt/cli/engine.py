"""`clip-rt build-engine`: TensorRT engines for a package (see clip_rt.export.engine)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..contract import DEFAULT_MAX_BATCH, DEFAULT_OPT_BATCH, ENCODERS, PRECISIONS
from .common import HELP


def _encoders(text: str) -> tuple[str, ...]:
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in items if t not in ENCODERS]
    if not items or bad:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {', '.join(ENCODERS)}")
    return items


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build-engine", formatter_class=HELP, help="build TensorRT engines for a package on this GPU",
        description="Parse the package's ONNX (TensorRT 10.12+ and 11: the fp32, fp16 or int8 QDQ ONNX as typed; "
                    "TensorRT < 10.12: the fp32 ONNX with precision flags for fp32/fp16, the int8 QDQ ONNX for int8), "
                    "build one TensorRT engine per encoder with an optimization profile for dynamic batch and text "
                    "length (static on a DLA), check it against the fp32 ONNX, and record it in the package. Engines "
                    "only run with the TensorRT version and GPU they were built for. Needs an NVIDIA GPU and: "
                    "pip install 'clip-rt[gpu]'.")
    p.add_argument("package", help="model package folder")
    p.add_argument("--precision", choices=PRECISIONS, default="fp16",
                   help="fp16 keeps LayerNorm, softmax and the final normalization in fp32 (TensorRT 10.12+ needs the "
                        "package's fp16 ONNX: clip-rt export ... --precision fp16); int8 needs the package's int8 QDQ "
                        "ONNX (clip-rt export ... --precision int8)")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="largest batch of the profile")
    p.add_argument("--opt-batch", type=int, default=DEFAULT_OPT_BATCH, help="batch TensorRT tunes for")
    p.add_argument("--max-text-len", type=int, default=None,
                   help="longest token sequence of the text profile (default: the model's context length)")
    p.add_argument("--workspace-mib", type=int, default=None,
                   help="cap on the builder's scratch memory in MiB (default: TensorRT's; use ~1024 on 8 GB Jetsons)")
    p.add_argument("--dla-core", type=int, default=None,
                   help="build for this DLA core (Jetson; fp16/int8): a static profile of batch --opt-batch and text "
                        "length --max-text-len (DLA has no dynamic shapes; smaller inputs are padded), GPU fallback on")
    p.add_argument("--timing-cache", default=None, help="timing cache file, read if present and updated")
    p.add_argument("--builder-level", type=int, choices=range(6), default=3, metavar="{0..5}",
                   help="TensorRT builder optimization level (higher: slower build, maybe faster engine)")
    p.add_argument("--encoders", type=_encoders, default=ENCODERS, help="comma-separated: image, text")
    p.add_argument("--device", default="cuda", help="cuda or cuda:N")
    p.add_argument("--force", action=argparse.BooleanOptionalAction, default=False,
                   help="record an engine whose parity is below its tolerance (marked forced)")
    p.set_defaults(handler=run_build_engine)


def run_build_engine(args: argparse.Namespace) -> int:
    from ..errors import InputError

    if TYPE_CHECKING:  # clip_rt.export is the export/ folder installed under clip_rt; mypy reads it from source
        from export.engine import EngineBuildConfig, build_engines
    else:
        from ..export.engine import EngineBuildConfig, build_engines
    try:
        cfg = EngineBuildConfig(precision=args.precision, max_batch=args.max_batch, opt_batch=args.opt_batch,
                                max_text_len=args.max_text_len, workspace_mib=args.workspace_mib,
                                dla_core=args.dla_core, timing_cache=args.timing_cache,
                                builder_level=args.builder_level, encoders=tuple(args.encoders), force=args.force)
    except ValueError as e:
        raise InputError(str(e)) from None
    arts = build_engines(args.package, cfg, device=args.device)
    for a in arts:
        print(f"{a.encoder:5s} {a.precision:4s} {a.file}  min cosine vs fp32 ONNX {a.parity['min_cosine']:.6f}"
              f"{'  (forced)' if a.forced else ''}")
    return 0

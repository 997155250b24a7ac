"""The fp16 and int8 precision builders (pipeline.PRECISION_BUILDERS) and their command-line options.

    int8: static QDQ (export/int8.py) calibrated on --calib (export/calibration.py), per-layer sensitivity search,
          or --int8-mode dynamic; gated on evaluation photos/captions that calibration never saw, and on zero-shot
          top-1 agreement with eager fp32 when --eval names a labeled folder.
    fp16: onnxruntime.transformers.float16 with LayerNorm, softmax and the final L2 normalization in fp32 and fp32
          I/O; gated with ONNX Runtime on the CPU here, and on CUDA too where a CUDA provider is present.

Both start from the plain fp32 graphs ({image,text}.onnx), so TensorRT can read the results. Thresholds come from
clip_rt/tolerances.py; an artifact below them is not written unless --force (recorded in the manifest).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from clip_rt.errors import InputError, ValidationFailed
from clip_rt.tolerances import tolerance

from . import int8 as q8

if TYPE_CHECKING:
    from .calibration import CalibrationSet
    from .context import ExportContext
    from .zeroshot_eval import LabeledSet

# Kept in fp32 by the fp16 builder: normalization, softmax, the final L2 normalization (ReduceL2 + Div), and the
# integer/index plumbing of the causal mask and EOT pooling.
FP16_KEEP_FP32 = ("LayerNormalization", "Softmax", "ReduceL2", "Div", "ArgMax", "Range", "Where", "Less", "Expand")
# The sensitivity search aims this far inside the int8 tolerance (on held-out calibration data), so that the
# gate on unseen evaluation data has room: target error = SEARCH_MARGIN x allowed error.
SEARCH_MARGIN = 0.5


@dataclass(frozen=True)
class QuantizeOptions:
    """The builders' settings (ExportOptions.extra); see add_cli_args for what each means."""

    calib: str | None = None  # folder of real photos (+ captions.csv / classes.txt) for INT8 calibration
    calib_texts: str | None = None  # captions for the text encoder's calibration (txt or CSV with `caption`)
    calib_images: int = 128  # at most this many calibration photos
    calib_captions: int = 512  # at most this many calibration captions
    int8_mode: str = "static"  # "static" (calibrated QDQ) | "dynamic" (activation ranges computed per call)
    recipe: q8.Recipe = q8.Recipe()
    eval_labeled: str | None = None  # labeled folder for zero-shot top-1 agreement
    eval_labeled_images: int = 200  # at most this many of its images
    progress: bool = False  # tqdm bars on stderr for the calibration and sensitivity loops (the CLI's --progress)

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> "QuantizeOptions":
        names = {f.name for f in dataclasses.fields(cls)} - {"recipe"}
        recipe_names = {f.name for f in dataclasses.fields(q8.Recipe)}
        recipe = q8.Recipe(**{k[5:]: v for k, v in extra.items() if k.startswith("int8_") and k[5:] in recipe_names})
        return cls(recipe=recipe, **{k: v for k, v in extra.items() if k in names})


def add_cli_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("graph optimization, INT8 and FP16")
    g.add_argument("--optimize", action=argparse.BooleanOptionalAction, default=True,
                   help="also write fp32 graphs fused with ONNX Runtime's transformer fusions (*.opt.onnx)")
    g.add_argument("--calib", metavar="DIR", default=None,
                   help="INT8 calibration: folder of real photos (and captions.csv or classes.txt for the text encoder)")
    g.add_argument("--calib-texts", metavar="FILE", default=None, help="INT8 calibration captions (txt, or CSV with caption)")
    g.add_argument("--calib-images", type=int, default=128, help="at most this many calibration photos")
    g.add_argument("--calib-captions", type=int, default=512, help="at most this many calibration captions")
    g.add_argument("--int8-mode", choices=("static", "dynamic"), default="static",
                   help="static: calibrated QDQ; dynamic: weights int8, activation ranges computed at run time")
    g.add_argument("--int8-method", choices=q8.METHODS, default=q8.Recipe.method, help="calibration method")
    g.add_argument("--int8-percentile", type=float, default=q8.Recipe.percentile, help="for --int8-method percentile")
    g.add_argument("--int8-activations", choices=q8.ACTIVATIONS, default=q8.Recipe.activations,
                   help="s8: symmetric int8 (TensorRT and ONNX Runtime); u8: asymmetric uint8 (ONNX Runtime only)")
    g.add_argument("--int8-weight-bits", type=int, choices=(7, 8), default=q8.Recipe.weight_bits,
                   help="7: weights in [-64, 64], exact on every CPU's integer kernels; 8: [-127, 127], exact only "
                        "where the CPU has VNNI/AMX/ARM dot products (AVX2-only CPUs saturate; see docs/CPU_SPEED.md)")
    g.add_argument("--int8-exclude", nargs="+", default=[], metavar="UNIT",
                   help="keep these fp32: units (layers.K, projection) or ONNX node names")
    g.add_argument("--int8-sensitivity", action=argparse.BooleanOptionalAction, default=True,
                   help="per-layer sensitivity search: exclude the costliest layers until the target is met")
    g.add_argument("--eval", dest="eval_labeled", metavar="DIR", default=None,
                   help="labeled folder (labels.csv + classes.txt) for zero-shot top-1 agreement of int8/fp16")


def options_from_cli(args: argparse.Namespace) -> dict[str, Any]:
    return {"optimize": args.optimize, "calib": args.calib, "calib_texts": args.calib_texts,
            "calib_images": args.calib_images, "calib_captions": args.calib_captions, "int8_mode": args.int8_mode,
            "int8_method": args.int8_method, "int8_percentile": args.int8_percentile,
            "int8_activations": args.int8_activations, "int8_weight_bits": args.int8_weight_bits, "int8_exclude": tuple(args.int8_exclude),
            "int8_sensitivity": args.int8_sensitivity, "eval_labeled": args.eval_labeled}


# -- shared evaluation helpers -------------------------------------------------------------------------------------
def _labeled(ctx: "ExportContext", opts: QuantizeOptions) -> "LabeledSet | None":
    if opts.eval_labeled is None:
        return None
    cached = getattr(ctx, "_labeled_set", None)
    if cached is None:
        from .zeroshot_eval import load_labeled

        cached = load_labeled(opts.eval_labeled, ctx.preprocess_config, None, opts.eval_labeled_images)
        ctx._labeled_set = cached  # type: ignore[attr-defined]
    return cached


def _zero_shot_gate(ctx: "ExportContext", opts: QuantizeOptions, precision: str, files: dict[str, Path]) -> None:
    """Zero-shot top-1 agreement of the (image, text) pair against eager; recorded in both artifacts' parity."""
    data = _labeled(ctx, opts)
    if data is None:
        return
    from .zeroshot_eval import agreement, eager_embeddings, onnx_embeddings

    if not hasattr(ctx, "_labeled_eager"):
        ctx._labeled_eager = eager_embeddings(ctx.ref, data, ctx.tokenize)  # type: ignore[attr-defined]
    result = agreement(ctx._labeled_eager, onnx_embeddings(files["image"], files["text"], data, ctx.tokenize),  # type: ignore[attr-defined]
                       data.labels)
    need = tolerance("onnxruntime", precision).top1_agreement
    result.update(data=data.source, threshold=need)
    failed = result["top1_agreement"] < need
    ctx.log(f"  zero-shot top-1 agreement {result['top1_agreement']:.4f} over {result['n']} images, "
            f"{result['classes']} classes (eager median top-1 margin {result['median_top1_margin_eager']:.3g})"
            + (f"  BELOW THRESHOLD {need}" if failed else "  ok"))
    if failed and not ctx.options.force:
        hint = (" With random weights the eager top-1 margins are tiny, so any perturbation flips labels: this gate "
                "is meaningful only for trained weights." if ctx.loaded.source.get("random_init") else "")
        raise ValidationFailed(f"{precision} artifacts fail the zero-shot gate (top-1 agreement "
                               f"{result['top1_agreement']:.4f} < {need} on {data.source}, eager median top-1 margin "
                               f"{result['median_top1_margin_eager']:.3g}); nothing was written.{hint} Use --force "
                               f"to write them anyway (recorded in the manifest)")
    for i, a in enumerate(ctx.artifacts):
        if a.precision == precision and a.file in {p.name for p in files.values()}:
            ctx.artifacts[i] = dataclasses.replace(a, parity={**a.parity, "zero_shot": result},
                                                   forced=a.forced or failed)


# -- int8 -------------------------------------------------------------------------------------------------------------
def check_int8_inputs(precisions: tuple[str, ...], eval_images: str | None, extra: dict[str, Any]) -> None:
    """What a static INT8 build needs, checked before any work starts (the model is not loaded yet): calibration
    photos (--calib), captions for the text encoder (--calib-texts, or captions.csv / classes.txt in the --calib
    folder) and evaluation photos (--eval-images). InputError in one line with the fix, else nothing."""
    opts = QuantizeOptions.from_extra(extra)
    if "int8" not in precisions or opts.int8_mode != "static":
        return
    if opts.calib is None:
        raise InputError("--precision int8 (static) needs calibration photos: pass --calib DIR (a folder of real "
                         "photos, with captions.csv or classes.txt or --calib-texts for the text encoder), or use "
                         "--int8-mode dynamic")
    if not Path(opts.calib).is_dir():
        raise InputError(f"--calib {opts.calib}: not a folder (INT8 calibration needs a folder of real photos)")
    if opts.calib_texts is not None:
        if not Path(opts.calib_texts).is_file():
            raise InputError(f"--calib-texts {opts.calib_texts}: no such file (one caption per line, or a CSV with a "
                             f"'caption' column)")
    else:
        from .calibration import folder_texts

        if not folder_texts(Path(opts.calib))[0]:
            raise InputError(f"--precision int8 also calibrates the text encoder, on captions, and {opts.calib} has "
                             f"none (no captions.csv or classes.txt): add --calib-texts FILE, one caption per line "
                             f"(a few hundred short descriptions of photos like yours, e.g. 'a dog running on a "
                             f"beach'), or use --int8-mode dynamic")
    if eval_images is None:
        raise InputError("--precision int8 is validated on real photos that calibration never saw: pass "
                         "--eval-images DIR (it may be the --calib folder; the images it picks are then left out "
                         "of calibration)")


def _calibration(ctx: "ExportContext", opts: QuantizeOptions) -> "CalibrationSet":
    from .calibration import load_calibration

    if opts.calib is None:
        raise InputError("--precision int8 (static) needs calibration photos: pass --calib DIR (a folder of real "
                         "photos, with captions.csv or classes.txt or --calib-texts for the text encoder), or use "
                         "--int8-mode dynamic")
    if ctx.eval_crops_source == "synthetic":
        raise InputError("--precision int8 is validated on real photos that calibration never saw: pass "
                         "--eval-images DIR (it may be the --calib folder; the images it picks are then left out "
                         "of calibration)")
    labeled = _labeled(ctx, opts)
    held = list(ctx.eval_crops) + (list(labeled.crops) if labeled is not None else [])
    return load_calibration(opts.calib, opts.calib_texts, ctx.preprocess_config, None, held, ctx.eval_texts,
                            opts.calib_images, opts.calib_captions)


def _static_int8(ctx: "ExportContext", opts: QuantizeOptions, encoder: str, data: "CalibrationSet",
                 src: Path, dst: Path) -> dict[str, Any]:
    from .calibration import image_batches, reader_for

    recipe = opts.recipe
    calib, held_out = data.split(16, 64) if recipe.sensitivity else (data, None)
    name = ctx.contract(encoder).input.name
    reader, stride = reader_for(encoder, name, calib, ctx.tokenize)
    cache = ctx.workdir / f"calib.{encoder}.{recipe.method}.json"
    t0 = time.perf_counter()
    ctx.log(f"  calibrating {encoder} ranges ({recipe.method}, {len(reader)} batches) ...")
    if opts.progress:
        from clip_rt.progress import progress_callback

        reader.progress = progress_callback(f"calibrating {encoder}", "batch")
    graph = q8.load_graph(src)  # once: every quantize/resolve/search call below reads the same file
    q8.quantize(src, dst, recipe, cache, reader=reader, stride=stride, graph=graph)
    reader.progress = None
    ctx.log(f"  calibrated {encoder} ranges ({recipe.method}, {len(reader)} batches, {time.perf_counter() - t0:.1f} s)")
    tol = tolerance("onnxruntime", "int8")
    record: dict[str, Any] = {"recipe": recipe.to_json(), "calibration": calib.to_json()}
    if held_out is not None:
        batches = (image_batches(held_out.crops) if encoder == "image"
                   else [ctx.tokenize(held_out.texts[i:i + 8], False) for i in range(0, len(held_out.texts), 8)])
        target_mean = 1 - SEARCH_MARGIN * (1 - tol.mean_cosine)
        target_min = 1 - SEARCH_MARGIN * (1 - tol.min_cosine)
        ctx.log(f"  sensitivity search for {encoder} (target mean {target_mean:.4f}, min {target_min:.3f} on "
                f"{sum(len(b) for b in batches)} held-out calibration inputs)")
        bar = None
        if opts.progress:
            from clip_rt.progress import progress_callback

            bar = progress_callback(f"sensitivity {encoder}", "unit")
        result = q8.search(src, ctx.workdir, recipe, cache, name, batches, target_mean, target_min, ctx.log,
                           graph=graph, progress=bar)
        record["sensitivity"] = {**result.to_json(), "target": {"mean_cos": target_mean, "min_cos": target_min},
                                 "held_out": {"images": int(len(held_out.crops)), "texts": len(held_out.texts)}}
        excluded = q8.resolve(src, [*result.excluded, *[n for n in recipe.exclude if n not in result.excluded]],
                              graph)
    else:
        excluded = q8.resolve(src, recipe.exclude, graph)
    if excluded:
        q8.quantize(src, dst, recipe, cache, exclude=excluded, graph=graph)
    record["excluded_nodes"] = excluded
    record["kept_fp32"] = ["attention score/context MatMuls", "LayerNorm", "softmax",
                           "QuickGELU", "final L2 normalization"] + [f"{n}" for n in excluded]
    return record


def _dynamic_int8(src: Path, dst: Path, recipe: q8.Recipe) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = q8.load_graph(src)
    exclude = q8.resolve(src, recipe.exclude, graph) + q8.activation_matmuls(graph)
    with q8._quiet():
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], per_channel=recipe.per_channel,
                         reduce_range=recipe.weight_bits == 7, weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
    return {"recipe": {"format": "dynamic (MatMulInteger / DynamicQuantizeMatMul)", "weight_bits": recipe.weight_bits,
                       "weights": f"int8 per-channel, {recipe.weight_bits}-bit range",
                       "activations": "uint8, range computed per call", "tensorrt_compatible": False},
            "excluded_nodes": exclude}


def build_int8(ctx: "ExportContext") -> None:
    opts = QuantizeOptions.from_extra(ctx.options.extra)
    data = _calibration(ctx, opts) if opts.int8_mode == "static" else None
    if data is not None:
        ctx.log(f"  calibration data: {len(data.crops)} images from {data.images_source} ({data.dropped_images} left "
                f"out as evaluation images), "
                f"{len(data.texts)} texts from {data.texts_source} ({data.dropped_texts} left out)")
    from clip_rt.cputier import validation_record

    here = validation_record()
    ctx.log(f"  CPU tier: {here['tier']} ({here['model'] or here['machine']}; int8 arithmetic "
            f"{'exact' if here['exact_int8'] else 'saturating' if here['exact_int8'] is False else 'unknown'}), "
            f"weights {opts.recipe.weight_bits}-bit")
    files, lowered = {}, {}
    for encoder in ("image", "text"):
        src, dst = ctx.workdir / f"{encoder}.onnx", ctx.workdir / f"{encoder}.int8.onnx"
        t0 = time.perf_counter()
        record = _static_int8(ctx, opts, encoder, data, src, dst) if data is not None else \
            _dynamic_int8(src, dst, opts.recipe)
        record["build_seconds"] = round(time.perf_counter() - t0, 1)
        ctx.log(f"  quantized {encoder} encoder to {dst.name} ({dst.stat().st_size / 2**20:.1f} MiB, "
                f"{record['build_seconds']} s; fp32 kept: {len(record['excluded_nodes'])} extra nodes)")
        ctx.gate(dst, encoder, "int8", extra={"quantization": record, "graph": {"optimized": False},
                                              "int8_arithmetic": q8.arithmetic_record(dst, opts.recipe, here)})
        files[encoder] = dst
        fused = ctx.workdir / f"{encoder}.fused.onnx"  # written by pipeline._optimize_fp32 when int8 is asked for
        if data is not None and fused.is_file():
            # Registered after the QDQ file: Package.artifact(encoder, "int8") (the last match) gives ONNX Runtime
            # this one, portable=True (TensorRT) the QDQ file.
            from .lower import lower_int8

            out = ctx.workdir / f"{encoder}.int8.opt.onnx"
            report = lower_int8(fused, dst, out)
            ctx.log(f"  lowered {encoder} int8 for ONNX Runtime's CPU to {out.name}: {report.summary()}")
            ctx.gate(out, encoder, "int8", extra={"quantization": record,
                                                  "graph": {**report.to_json(), "lowered_from": dst.name},
                                                  "int8_arithmetic": q8.arithmetic_record(out, opts.recipe, here)})
            lowered[encoder] = out
    _zero_shot_gate(ctx, opts, "int8", files)
    if len(lowered) == 2:
        _zero_shot_gate(ctx, opts, "int8", lowered)


# -- fp16 -------------------------------------------------------------------------------------------------------------
def build_fp16(ctx: "ExportContext") -> None:
    import onnx
    import onnxruntime as ort
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from . import validate

    opts = QuantizeOptions.from_extra(ctx.options.extra)
    gpu = "CUDAExecutionProvider" in ort.get_available_providers()
    files = {}
    for encoder in ("image", "text"):
        src, dst = ctx.workdir / f"{encoder}.onnx", ctx.workdir / f"{encoder}.fp16.onnx"
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, op_block_list=list(FP16_KEEP_FP32))
        onnx.save(model, str(dst))
        ctx.log(f"  converted {encoder} encoder to {dst.name} ({dst.stat().st_size / 2**20:.1f} MiB)")
        record: dict[str, Any] = {"fp16": {"kept_fp32_ops": list(FP16_KEEP_FP32), "io": "float32 in/out",
                                           "converter": "onnxruntime.transformers.float16"}}
        if gpu:
            contract = ctx.contract(encoder)
            got = validate.run_onnx(dst, contract.input.name, ctx.batches(encoder), ("CUDAExecutionProvider",))
            parity = validate.compare(ctx.eager(encoder), got, "CUDAExecutionProvider")
            fails = parity.failures(tolerance("onnxruntime", "fp16"))
            record["validation"] = {"cpu": "onnxruntime CPUExecutionProvider (parity above)",
                                    "gpu": {**parity.to_json(), "passed": not fails}}
            if fails and not ctx.options.force:
                raise ValidationFailed(f"{encoder} fp16 fails its gate on CUDA ({'; '.join(fails)}); nothing was "
                                       f"written. Use --force to write it anyway")
        else:
            record["validation"] = {"cpu": "onnxruntime CPUExecutionProvider (parity above)",
                                    "gpu": "not run: no CUDAExecutionProvider on the exporting machine"}
        ctx.gate(dst, encoder, "fp16", extra=record)
        files[encoder] = dst
    _zero_shot_gate(ctx, opts, "fp16", files)


BUILDERS: dict[str, Callable[["ExportContext"], None]] = {"int8": build_int8, "fp16": build_fp16}

"""model id, folder or open_clip name -> validated model package. The build-time flow, step by step:

    load with the family's adapter (hub / folder / open_clip / random init) -> tokenizer.json, checked against the
    family's own tokenizer -> the family's wrappers -> ONNX (fp32) -> [other precisions] -> validate each artifact
    with ONNX Runtime against the family's own eager model -> write artifacts + manifest (atomically, at the end)

Nothing here knows a family: export/families/<family>.py says what differs (export/families/base.py).

Nothing is written into the destination until every artifact passed its gate (or --force was given).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from clip_rt import __version__
from clip_rt.contract import check_precision
from clip_rt.errors import PackageError, ValidationFailed
from clip_rt.fsutil import make_temp_dir
from clip_rt.package import FORMAT, FORMAT_VERSION, MANIFEST, write_manifest
from clip_rt.preprocess import PreprocessConfig

from . import validate
from .context import ExportContext, ExportOptions, Log, log_to_stderr
from .families import load as load_model
from .families.base import LoadedModel, TokenizerPlan
from .onnx import export_onnx

__all__ = ["ExportContext", "ExportOptions", "PRECISION_BUILDERS", "build_fp32", "check_tokenizer", "export_package"]


def build_fp32(ctx: ExportContext) -> None:
    modules = ctx.loaded.family.encoders(ctx.loaded, ctx.preprocess_config)
    for encoder, module in modules.items():
        t0 = time.perf_counter()
        path = export_onnx(module, ctx.contract(encoder), ctx.workdir / f"{encoder}.onnx", ctx.options.opset)
        ctx.log(f"  traced {encoder} encoder to {path.name} ({path.stat().st_size / 2**20:.1f} MiB, "
                f"{time.perf_counter() - t0:.1f} s)")
        # The plain graph: standard ONNX ops only (TensorRT, any provider), and the source of fp16/int8.
        ctx.gate(path, encoder, "fp32", extra={"graph": {"optimized": False}})
    if ctx.options.extra.get("optimize", True):
        _optimize_fp32(ctx, list(modules))


def _optimize_fp32(ctx: ExportContext, encoders: list[str]) -> None:
    """ONNX Runtime's transformer fusions -> {encoder}.opt.onnx, gated like the plain graph and registered after it,
    so Package.artifact(encoder, "fp32") (the last match) picks it for ONNX Runtime. Fusion counts go into `extra`."""
    from .optimize import optimize_onnx

    for encoder in encoders:
        t0 = time.perf_counter()
        # The family says what should fuse: e.g. CLIP's image encoder runs its last layer for the class token only
        # (wrappers.ClassTokenLayer), which is not a pattern the fusion knows.
        plan = ctx.loaded.family.fusion_plan(ctx.loaded, encoder)
        src, dst = ctx.workdir / f"{encoder}.onnx", ctx.workdir / f"{encoder}.opt.onnx"
        # The INT8 lowering reads the fused graph before the row padding (a scratch file, dropped at the end).
        unpadded = ctx.workdir / f"{encoder}.fused.onnx" if "int8" in ctx.options.precisions else None
        report = optimize_onnx(src, dst, encoder, plan.num_heads, plan.hidden_size, plan.layers,
                               plan.attention_layers, unpadded=unpadded, model_type=plan.model_type, note=plan.note)
        ctx.log(f"  fused {encoder} encoder to {dst.name}: {report.summary()} ({time.perf_counter() - t0:.1f} s)")
        warning = report.warning()
        if warning:
            ctx.log(f"  WARNING: {warning}")
            ctx.manifest.setdefault("warnings", []).append(warning)
        ctx.gate(dst, encoder, "fp32", extra={"graph": report.to_json()})


# precision -> builder. fp32 comes first; fp16/int8 builders read ctx.workdir/{image,text}.onnx.
PRECISION_BUILDERS: dict[str, Callable[[ExportContext], None]] = {"fp32": build_fp32}


def _register_optional_builders() -> None:
    """fp16 / int8 builders live in export/quantize.py, registered here on the first export."""
    from . import quantize

    PRECISION_BUILDERS.update(quantize.BUILDERS)


def _base_manifest(loaded: LoadedModel, tokenizer: TokenizerPlan, pre: PreprocessConfig) -> dict[str, Any]:
    family = loaded.family
    src = loaded.source
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_by": f"clip-rt {__version__}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": src,
        "warnings": ([f"RANDOM WEIGHTS (seed {src['seed']}): built from {src['model']}"
                      f"{'/config.json' if loaded.folder is not None else ''} for tests and benchmarks; its predictions "
                      f"are meaningless"] if src["random_init"] else []),
        "model": {**family.model_block(loaded), "context_length": tokenizer.context_length},
        "preprocess": pre.to_manifest(),
        "tokenizer": tokenizer.to_manifest(),
        "artifacts": [],
    }


def check_tokenizer(loaded: LoadedModel, tok: Any, texts: Sequence[str], force: bool, log: Log) -> dict[str, Any]:
    """tokenizer.json (the runtime's tokenizer) against the family's own tokenizer on `texts`: the same ids, text by
    text, or ValidationFailed (unless --force). Returns the manifest's record of the check."""
    ours = tok.token_ids(texts)
    theirs = loaded.family.reference_ids(loaded, texts, tok.context_length)
    bad = [i for i, (a, b) in enumerate(zip(ours, theirs)) if list(a) != list(b)]
    record = {"texts": len(texts), "mismatches": len(bad), "against": f"{loaded.family.name}'s own tokenizer"}
    log(f"  tokenizer.json against {loaded.family.name}'s own tokenizer: {len(texts) - len(bad)} of {len(texts)} "
        f"texts give the same ids" + ("  ok" if not bad else "  MISMATCH"))
    if bad and not force:
        i = bad[0]
        raise ValidationFailed(f"the converted tokenizer.json gives other ids than {loaded.family.name}'s own tokenizer "
                               f"for {len(bad)} of {len(texts)} texts, e.g. {texts[i]!r}: {list(ours[i])} vs "
                               f"{list(theirs[i])}; nothing was written. Use --force to write it anyway (recorded in "
                               f"the manifest)")
    if bad:
        record["examples"] = [{"text": texts[i], "ids": list(ours[i]), "reference": list(theirs[i])} for i in bad[:3]]
    return record


def export_package(model: str | os.PathLike, out: str | os.PathLike, options: ExportOptions = ExportOptions(),
                   log: Log = log_to_stderr) -> Path:
    """Export `model` (hub id, HF folder or "open_clip:ARCH") to a validated package at `out`; returns its path."""
    for p in options.precisions:
        check_precision(p)
    _register_optional_builders()
    missing = [p for p in options.precisions if p not in PRECISION_BUILDERS]
    if missing:
        raise ValidationFailed(f"precision {', '.join(missing)} cannot be built by this clip-rt "
                               f"(available: {', '.join(PRECISION_BUILDERS)})")
    from .quantize import check_int8_inputs

    check_int8_inputs(tuple(options.precisions), options.eval_images, options.extra)  # before any work starts
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise PackageError(f"{out} exists and is not a clip-rt package; choose an empty or new folder")

    t0 = time.perf_counter()
    with _library_bars(bool(options.extra.get("progress", False))):
        loaded = load_model(str(model), random_init=options.random_init, seed=options.seed,
                            revision=options.revision, pretrained=options.pretrained)
    src = loaded.source
    log(f"loaded {src['model']} ({loaded.family.name}, {src['kind']}"
        f"{', revision ' + src['revision'] if src.get('revision') else ''}"
        f"{', pretrained ' + str(src['pretrained']) if src.get('pretrained') else ''}"
        f"{', RANDOM INIT seed %d' % options.seed if options.random_init else ''}) in {time.perf_counter() - t0:.1f} s")
    if loaded.source["random_init"]:
        log(f"WARNING: RANDOM WEIGHTS (seed {options.seed}). This package is for tests and benchmarks only.")
    out.parent.mkdir(parents=True, exist_ok=True)
    workdir = make_temp_dir(out.parent, prefix=f".{out.name}.")  # umask honoured (mkdtemp: 0700)
    try:
        family = loaded.family
        plan = family.write_tokenizer(loaded, workdir)
        pre = family.preprocess(loaded)
        manifest = _base_manifest(loaded, plan, pre)
        from clip_rt.tokenizer import Tokenizer

        t = plan.tokens
        tok = Tokenizer(workdir / "tokenizer.json", context_length=plan.context_length, bos_id=t.bos_id,
                        eos_id=t.eos_id, pad_id=t.pad_id, padding=plan.padding, padding_side=plan.padding_side)

        def tokenize(texts: Sequence[str], pad_to_context: bool) -> np.ndarray:
            ids = tok.encode(list(texts))  # [B, L] int32, padded by the family's rule (longest, or the context)
            if pad_to_context:
                ids = np.pad(ids, ((0, 0), (0, tok.context_length - ids.shape[1])), constant_values=tok.pad_id)
            return ids

        crops, crops_src = validate.load_eval_images(options.eval_images, pre)
        texts, texts_src = validate.load_eval_texts(options.eval_texts)
        manifest["tokenizer"]["checked"] = check_tokenizer(loaded, tok, texts, options.force, log)
        ctx = ExportContext(loaded, workdir, options, manifest, log, tokenize, crops, crops_src, texts, texts_src,
                            family.reference(loaded, pre), pre, t)
        log(f"validating on {crops_src} and {texts_src}")
        for precision in ["fp32", *[p for p in options.precisions if p != "fp32"]]:
            log(f"building {precision} ...")
            PRECISION_BUILDERS[precision](ctx)
        manifest["artifacts"] = [a.to_json() for a in ctx.artifacts]
        manifest["export"] = {"precisions": list(dict.fromkeys(["fp32", *options.precisions])), "opset": options.opset,
                              "forced": options.force, "seconds": round(time.perf_counter() - t0, 1)}
        _drop_unlisted(workdir, manifest)
        write_manifest(workdir, manifest)
        _replace_dir(workdir, out)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    log(f"wrote {out} ({len(manifest['artifacts'])} artifacts, {time.perf_counter() - t0:.1f} s)")
    return out


@contextlib.contextmanager
def _library_bars(show: bool) -> Iterator[None]:
    """transformers' own bars (e.g. "Loading weights") follow the CLI's progress rule (--progress, on a terminal
    by default): hidden unless `show`, and transformers' setting restored afterwards."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # open_clip alone
        yield
        return
    was = hf_logging.is_progress_bar_enabled()
    if not show:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _drop_unlisted(workdir: Path, manifest: dict[str, Any]) -> None:
    """Remove intermediate files (calibration scratch, pre-optimization graphs) that are not in the manifest."""
    keep = {MANIFEST, *manifest["tokenizer"]["files"], *(a["file"] for a in manifest["artifacts"])}
    for p in workdir.iterdir():
        if p.name not in keep:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def _replace_dir(new: Path, out: Path) -> None:
    """Move the finished package into place; an old package at `out` is replaced only after the move succeeds."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        new.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(out)

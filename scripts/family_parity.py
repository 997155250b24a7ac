#!/usr/bin/env python
"""Real-size parity of every model family, the numbers issue 16 asks for: random weights from real configs, exported
by `clip-rt export`, run by the lean runtime (a subprocess without torch), against each family's own library.

    python scripts/family_parity.py                          # all six, fp32 + int8 for the ViT families
    python scripts/family_parity.py --case siglip --no-int8  # one of them
    python scripts/family_parity.py --json out.json --markdown out.md

Per case: export (fp32; int8 calibrated on ../shared/data/flickr8k, validated on imagenet_sample photos that
calibration never saw), then
  - image and text embeddings from files and strings (lean clip_rt.load, batch 24 / 50) against the family's
    pipeline (tests/family_reference.py): min and mean cosine;
  - `clip-rt classify --json` (lean) over the 1,000 ImageNet labels (Chinese-CLIP: classes_zh.txt with a Chinese
    template) against the family's pipeline: top-1 agreement and the largest score difference;
  - from the manifest: each artifact's gate (min / mean cosine against eager), which fusions fired and why others
    did not, the INT8 recipe's excluded units.
The sources are built with tests/families_fixtures.py (the test suite's builders) in --work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the suite's source builders and family references

CASES = ("open_clip:ViT-B-32", "open_clip:RN50", "open_clip:MobileCLIP2-S0", "siglip-base-patch16-224",
         "siglip2-base-patch16-224", "chinese-clip-vit-base-patch16")
VIT_CASES = ("open_clip:ViT-B-32", "siglip-base-patch16-224", "siglip2-base-patch16-224", "chinese-clip-vit-base-patch16")


def build_source(case: str, work: Path) -> tuple[str, list[str], Path | None]:
    """(model argument for clip-rt export, extra export args, Hugging Face folder or None)."""
    import families_fixtures as ff

    if case.startswith("open_clip:"):
        return case, ["--random-init", "--seed", "0"], None
    folder = work / "sources" / case
    if not (folder / "config.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        if case.startswith("siglip2"):
            ff.make_siglip_source(folder, ff.SIGLIP2_BASE, variant="siglip2")
        elif case.startswith("siglip"):
            ff.make_siglip_source(folder, ff.SIGLIP_BASE, variant="siglip")
        else:
            ff.make_chinese_clip_source(folder, ff.CHINESE_CLIP_B16)
    return str(folder), [], folder


def manifest_summary(package: Path) -> dict[str, Any]:
    from clip_rt.package import Package

    pkg = Package.open(package)
    arts = []
    for a in pkg.artifacts:
        graph, q = a.extra.get("graph", {}), a.extra.get("quantization", {})
        arts.append({"file": a.file, "precision": a.precision, "min_cosine": a.parity.get("min_cosine"),
                     "mean_cosine": a.parity.get("mean_cosine"), "n": a.parity.get("n"), "forced": a.forced,
                     "fusions": graph.get("fusions"), "attention_layers": graph.get("attention_layers"),
                     "layers": graph.get("layers"), "not_fused": graph.get("attention_not_fused"),
                     "lowered": graph.get("ops"),
                     "int8_excluded": q.get("sensitivity", {}).get("excluded") if q else None})
    return {"family": pkg.family, "scoring": pkg.scoring.describe, "padding": pkg.padding,
            "preprocess": {k: pkg.preprocess[k] for k in ("resize_mode", "crop_rounding", "interpolation")},
            "artifacts": arts, "export_seconds": pkg.manifest.get("export", {}).get("seconds")}


def run_case(case: str, args: argparse.Namespace) -> dict[str, Any]:
    from clip_rt.cli import main
    from family_reference import reference_for
    import families_fixtures as ff
    from runtime_reference import cosines, flickr, lean_embed, run_lean_cli

    data = ff.DATA_DIR
    work = Path(args.work)
    model, extra, folder = build_source(case, work)
    package = work / "packages" / case.replace(":", "-")
    zh = case.startswith("chinese")
    eval_texts = work / f"eval-texts-{'zh' if zh else 'en'}.txt"
    texts = ff.chinese_captions() if zh else flickr(data)[1][::7]
    eval_texts.write_text("\n".join(texts) + "\n", encoding="utf-8")
    int8 = args.int8 and case in VIT_CASES
    t0 = time.perf_counter()
    if not (package / "manifest.json").is_file() or args.rebuild:
        cmd = ["export", model, "-o", str(package), *extra, "--eval-images", str(data / "imagenet_sample" / "images"),
               "--eval-texts", str(eval_texts)]
        if int8:
            cmd += ["--precision", "fp32", "int8", "--calib", str(data / "flickr8k")]
        rc = main(cmd)
        if rc != 0:
            return {"case": case, "error": f"export exited {rc}"}
    export_s = time.perf_counter() - t0

    from clip_rt.package import Package

    source = Package.open(package).source
    ref = reference_for(source, folder)
    photos = sorted(str(p) for p in (data / "imagenet_sample" / "images").iterdir())[:: max(1, 300 // args.photos)]
    photos = photos[:args.photos]
    strings = (ff.chinese_captions() if zh else flickr(data)[1][3::11])[:args.texts]
    got_txt, got_img = lean_embed(package, strings, photos, work / "lean" / case.replace(":", "-"))
    img_cos, txt_cos = cosines(ref.image_embeds(photos), got_img), cosines(ref.text_embeds(strings), got_txt)

    labels = (data / "imagenet_sample" / ("classes_zh.txt" if zh else "classes.txt")).read_text(
        encoding="utf-8").splitlines()
    template = "一张{}的照片。" if zh else "a photo of a {}."
    labels_file = work / f"labels-{'zh' if zh else 'en'}.txt"
    labels_file.write_text("\n".join(labels) + "\n", encoding="utf-8")
    files = photos[: args.classify]
    proc = run_lean_cli(["classify", str(package), *files, "--labels-file", str(labels_file), "--templates", template,
                         "--top-k", "3", "--json", "--no-cache"], env={"CLIP_RT_CACHE": str(work / "cache")})
    if proc.returncode != 0:
        return {"case": case, "error": f"classify exited {proc.returncode}: {proc.stderr[-500:]}"}
    doc = json.loads(proc.stdout)
    scores = ref.scores(ref.image_embeds(files), ref.text_embeds([template.format(c) for c in labels]))  # [N, C]
    got = {r["file"]: r["labels"] for r in doc["results"]}
    agree = [got[f][0]["label"] == labels[int(np.argmax(s))] for f, s in zip(files, scores)]
    score_diff = max(abs(p["score"] - float(s[labels.index(p["label"])])) for f, s in zip(files, scores)
                     for p in got[f])
    return {"case": case, "image_min_cos": float(img_cos.min()), "image_mean_cos": float(img_cos.mean()),
            "text_min_cos": float(txt_cos.min()), "text_mean_cos": float(txt_cos.mean()), "photos": len(photos),
            "texts": len(strings), "classify_top1_agreement": float(np.mean(agree)), "classify_photos": len(files),
            "labels": len(labels), "max_score_diff": float(score_diff), "export_wall_s": round(export_s, 1),
            "manifest": manifest_summary(package)}


def markdown(rows: list[dict[str, Any]]) -> str:
    out = ["| model | family, scoring | image min cos | text min cos | classify top-1 agreement | fp32 gate (image / text) "
           "| int8 gate min / mean (image; text) | fusions fired (image; text) |", "|" + " --- |" * 8]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['case']} | ERROR: {r['error']} |" + " |" * 6)
            continue
        m = r["manifest"]
        arts = {(a["file"]): a for a in m["artifacts"]}

        def gate(name: str) -> str:
            a = arts.get(name)
            return f"{a['min_cosine']:.6f}" if a else "-"

        def int8(enc: str) -> str:
            a = arts.get(f"{enc}.int8.opt.onnx") or arts.get(f"{enc}.int8.onnx")
            return f"{a['min_cosine']:.4f} / {a['mean_cosine']:.4f}" if a else "-"

        def fused(enc: str) -> str:
            a = arts.get(f"{enc}.opt.onnx")
            if not a or not a["fusions"]:
                return "none" + (f" ({a['not_fused'][:60]}...)" if a and a.get("not_fused") else "")
            att = a["fusions"].get("Attention", 0)
            return f"Attention {att}/{a['layers']}, " + ", ".join(f"{k} {v}" for k, v in a["fusions"].items()
                                                                    if k != "Attention")
        out.append(f"| {r['case']} | {m['family']}, {m['scoring']} | {r['image_min_cos']:.7f} ({r['photos']}) | "
                   f"{r['text_min_cos']:.7f} ({r['texts']}) | {r['classify_top1_agreement']:.4f} "
                   f"({r['classify_photos']} photos x {r['labels']} labels) | {gate('image.onnx')} / {gate('text.onnx')} | "
                   f"{int8('image')}; {int8('text')} | {fused('image')}; {fused('text')} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", action="append", choices=CASES, help="run only these (repeatable; default: all six)")
    p.add_argument("--work", default=str(ROOT / "build" / "family-parity"), help="sources, packages, scratch")
    p.add_argument("--photos", type=int, default=60, help="photos for the embedding parity")
    p.add_argument("--texts", type=int, default=120, help="texts for the embedding parity")
    p.add_argument("--classify", type=int, default=30, help="photos classified over the 1,000 labels")
    p.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                   help="also build and gate int8 for the ViT-based families")
    p.add_argument("--rebuild", action=argparse.BooleanOptionalAction, default=False,
                   help="re-export packages that exist in --work")
    p.add_argument("--json", default=None, help="write the rows as JSON here")
    p.add_argument("--markdown", default=None, help="write the table here")
    args = p.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    import families_fixtures as ff

    ff.need_shared()
    rows = []
    for case in args.case or CASES:
        t0 = time.perf_counter()
        row = run_case(case, args)
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({k: v for k, v in row.items() if k != "manifest"}), flush=True)
        rows.append(row)
    table = markdown(rows)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, ensure_ascii=False), encoding="utf-8")
    if args.markdown:
        Path(args.markdown).write_text(table + "\n", encoding="utf-8")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

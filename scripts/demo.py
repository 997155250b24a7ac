"""`make demo`: export a CLIP to a validated package, then zero-shot classify a few photos with the lean runtime.

    make demo                                  # openai/clip-vit-base-patch32 from the Hugging Face hub
    make demo MODEL=/path/to/hf-clip-folder    # offline, from a local folder (config + weights + tokenizer)
    make demo RANDOM_INIT=1 MODEL=../shared/models/clip-tokenizer   # offline, random weights from a config

`--preflight` runs first, with the system Python and the standard library only, before the venv is built: a hub
model that cannot be reached is refused at once with the offline command. A package already exported from the
same model is reused, not exported again.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

HUB_HOST = "huggingface.co"  # what a hub id is fetched from


def offline_hint(model: str, shared: str) -> str:
    """The one line that says how to run the demo without network (make variables, as the Makefile reads them)."""
    return (f"demo: cannot reach the Hugging Face hub ({HUB_HOST}) to fetch {model} (no network?); run the demo "
            f"offline with random weights from the shared ViT-B/32 config: make demo RANDOM_INIT=1 "
            f"MODEL={shared}/models/clip-tokenizer (predictions are then meaningless), or with real weights from a "
            f"local Hugging Face CLIP folder: make demo MODEL=/path/to/folder")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers a TCP connection within `timeout` s (HF_HUB_OFFLINE=1: no)."""
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return False
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def preflight(args: argparse.Namespace) -> int:
    """Before the venv build: photos present, and a hub model reachable. 0 when the demo can run."""
    data = Path(args.shared) / "data" / "imagenet_sample" / "images"
    if not data.is_dir():
        print(f"demo: no photos at {data}; pass SHARED=<folder holding data/imagenet_sample>", file=sys.stderr)
        return 2
    if not Path(args.model).exists() and not hub_reachable():
        print(offline_hint(args.model, args.shared), file=sys.stderr)
        return 2
    return 0


def up_to_date(package: Path, model: str, random_init: bool) -> bool:
    """True when `package` holds a verified fp32 package exported from `model` with the same weights setting."""
    if not (package / "manifest.json").is_file():
        return False
    from clip_rt.errors import ClipRtError
    from clip_rt.package import Package

    try:
        pkg = Package.open(package)
    except ClipRtError:
        return False
    src = pkg.source
    same = (src.get("model") == model if src.get("kind") == "hub"
            else Path(str(src.get("model"))).resolve() == Path(model).resolve())
    return same and bool(src.get("random_init")) == random_init and (not random_init or src.get("seed") == 0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="openai/clip-vit-base-patch32", help="hub id or local HF folder")
    p.add_argument("--package", default="build/demo-package", help="where to write the package")
    p.add_argument("--shared", default="../shared", help="folder with data/imagenet_sample (labeled photos)")
    p.add_argument("--images", type=int, default=8, help="how many photos to classify")
    p.add_argument("--random-init", action="store_true", help="random weights from MODEL's config.json")
    p.add_argument("--preflight", action="store_true",
                   help="only check that the demo can run (photos, network for a hub id); standard library only")
    args = p.parse_args()
    if args.preflight:
        return preflight(args)
    if preflight(args):
        return 2

    from clip_rt.errors import ClipRtError, ModelSourceError

    data = Path(args.shared) / "data" / "imagenet_sample"
    # classes.txt is ImageNet's list, where two names repeat ("crane", "maillot"): a label list takes each once.
    classes = list(dict.fromkeys((data / "classes.txt").read_text(encoding="utf-8").splitlines()))
    photos = sorted((data / "images").iterdir())[:: max(1, 300 // args.images)][: args.images]

    package = Path(args.package)
    if up_to_date(package, args.model, args.random_init):
        print(f"demo: {package} is already exported from {args.model}; reusing it (delete it to export again)",
              file=sys.stderr)
    else:
        from clip_rt.export.pipeline import ExportOptions, export_package

        try:
            export_package(args.model, package, ExportOptions(precisions=("fp32",), eval_images=str(data / "images"),
                                                              random_init=args.random_init))
        except ModelSourceError as e:
            print(offline_hint(args.model, args.shared) if not Path(args.model).exists() else f"demo: {e}",
                  file=sys.stderr)
            return 2
        except ClipRtError as e:
            print(f"demo: {e}", file=sys.stderr)
            return 2

    import clip_rt

    model = clip_rt.load(str(package))
    t0 = time.perf_counter()
    clf = clip_rt.ZeroShotClassifier(model, classes, templates="a photo of a {}.")
    t1 = time.perf_counter()
    predictions = clf.predict([str(f) for f in photos], top_k=3)
    t2 = time.perf_counter()
    texts = (f"text embeddings from the cache ({clf.cache_file})" if clf.cache_status in ("memory", "disk")
             else f"text embeddings in {t1 - t0:.1f} s (cached for the next run)")
    print(f"\n{len(classes)} ImageNet classes, {texts}; {len(photos)} photos in {t2 - t1:.2f} s\n")
    for f, pred in zip(photos, predictions):
        top = ", ".join(f"{p.label} {p.score:.3f}" for p in pred)
        print(f"  {f.name[:48]:<48}  {top}")
    if model.package.source.get("random_init"):
        print("\n(random weights: the labels above are meaningless)")
    print(f"\nNext: the clip-rt command is in the venv: source .venv/bin/activate (or run .venv/bin/clip-rt), then "
          f"e.g. clip-rt classify {package} photos/ --labels cat,dog,car")
    return 0


if __name__ == "__main__":
    sys.exit(main())

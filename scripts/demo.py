"""`make demo`: export a CLIP to a validated package, then zero-shot classify a few photos with the lean runtime.

    make demo                                  # openai/clip-vit-base-patch32 from the Hugging Face hub
    make demo MODEL=/path/to/hf-clip-folder    # offline, from a local folder (config + weights + tokenizer)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="openai/clip-vit-base-patch32", help="hub id or local HF folder")
    p.add_argument("--package", default="build/demo-package", help="where to write the package")
    p.add_argument("--shared", default="../shared", help="folder with data/imagenet_sample (labeled photos)")
    p.add_argument("--images", type=int, default=8, help="how many photos to classify")
    p.add_argument("--random-init", action="store_true", help="random weights from MODEL's config.json")
    args = p.parse_args()

    from clip_rt.errors import ClipRtError, ModelSourceError
    from clip_rt.export.pipeline import ExportOptions, export_package

    data = Path(args.shared) / "data" / "imagenet_sample"
    if not (data / "images").is_dir():
        print(f"demo: no photos at {data}/images; pass SHARED=<folder holding data/imagenet_sample>", file=sys.stderr)
        return 2
    classes = (data / "classes.txt").read_text(encoding="utf-8").splitlines()
    photos = sorted((data / "images").iterdir())[:: max(1, 300 // args.images)][: args.images]

    hub = not Path(args.model).exists()
    try:
        export_package(args.model, args.package, ExportOptions(precisions=("fp32",), eval_images=str(data / "images"),
                                                                random_init=args.random_init))
    except ModelSourceError as e:
        if hub:
            print(f"demo: cannot fetch {args.model} from the Hugging Face hub (no network?); point the demo at a local "
                  f"Hugging Face CLIP folder: make demo MODEL=/path/to/folder", file=sys.stderr)
        else:
            print(f"demo: {e}", file=sys.stderr)
        return 2
    except ClipRtError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 2

    import clip_rt

    model = clip_rt.load(args.package)
    t0 = time.perf_counter()
    clf = clip_rt.ZeroShotClassifier(model, classes, templates="a photo of a {}.")
    t1 = time.perf_counter()
    predictions = clf.predict([str(f) for f in photos], top_k=3)
    t2 = time.perf_counter()
    print(f"\n{len(classes)} ImageNet classes, text embeddings in {t1 - t0:.1f} s (cached for the next run); "
          f"{len(photos)} photos in {t2 - t1:.2f} s\n")
    for f, pred in zip(photos, predictions):
        top = ", ".join(f"{p.label} {p.score:.3f}" for p in pred)
        print(f"  {f.name[:48]:<48}  {top}")
    if model.package.source.get("random_init"):
        print("\n(random weights: the labels above are meaningless)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

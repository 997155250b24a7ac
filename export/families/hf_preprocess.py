"""A Hugging Face preprocessor_config.json (or an image processor's to_dict()) -> clip-rt's PreprocessConfig.

Build time only: the exporter reads the model folder's image processor settings once and writes the result into the
package manifest's "preprocess" block, which is all the runtime reads (clip_rt/preprocess.py).
"""

from __future__ import annotations

from typing import Any

from clip_rt.errors import InputError, ModelSourceError
from clip_rt.preprocess import RESCALE, PreprocessConfig

# The integer codes HF preprocessor configs use for Pillow filters, by the filter names manifests use.
HF_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# transformers image processors whose settings this module reproduces (with their *Fast / *Pil variants).
HF_PROCESSORS = ("CLIPImageProcessor", "SiglipImageProcessor", "ChineseCLIPImageProcessor")


def preprocess_from_hf(processor_config: dict[str, Any]) -> PreprocessConfig:
    """A preprocessor_config.json dict (CLIPImageProcessor, SiglipImageProcessor, ChineseCLIPImageProcessor, or
    an image processor's to_dict(), which spells out the class defaults) -> PreprocessConfig.

    Accepts size as {"shortest_edge": N} or a bare int (resize the shortest edge, then center crop) or as
    {"height": S, "width": S} (resize both edges: no crop needed), crop_size as {"height": S, "width": S} or an
    int. A missing do_center_crop means True (CLIP's default). Anything this runtime cannot reproduce exactly
    raises ModelSourceError naming the field.
    """
    c = processor_config
    kind = str(c.get("image_processor_type", "CLIPImageProcessor"))
    if not any(kind in (name, name + "Fast", name + "Pil") for name in HF_PROCESSORS):
        raise ModelSourceError(f"image processor {kind!r} is not supported; clip-rt reproduces "
                               f"{', '.join(HF_PROCESSORS)}")
    for flag in ("do_resize", "do_rescale", "do_convert_rgb"):
        if c.get(flag, True) is False:
            raise ModelSourceError(f"preprocessor_config.json has {flag}=false, which clip-rt does not support")
    if abs(float(c.get("rescale_factor", RESCALE)) - RESCALE) > 1e-12:
        raise ModelSourceError(f"preprocessor_config.json rescale_factor {c['rescale_factor']} is not 1/255")
    size = c.get("size", 224)
    mode = "shortest"
    if isinstance(size, dict):
        size = {k: v for k, v in size.items() if v is not None}
        if set(size) == {"height", "width"} and size["height"] == size["width"]:
            mode, size = "squash", size["height"]
        elif set(size) != {"shortest_edge"}:
            raise ModelSourceError(f"preprocessor_config.json size {size} is not supported (need shortest_edge, "
                                   f"or a square height and width)")
        else:
            size = size["shortest_edge"]
    crop = c.get("crop_size", 224) if c.get("do_center_crop", True) else None
    if isinstance(crop, dict):
        if crop.get("height") != crop.get("width"):
            raise ModelSourceError(f"preprocessor_config.json crop_size {crop} is not square")
        crop = crop["height"]
    if mode == "squash":
        if crop is not None and int(crop) < int(size):
            raise ModelSourceError(f"preprocessor_config.json crops {crop} out of a {size}x{size} resize, which "
                                   f"clip-rt does not support")
        crop = size  # a center crop of the resized size (or larger) is no crop
    elif crop is None:
        raise ModelSourceError("preprocessor_config.json resizes the shortest edge without a center crop (a "
                               "non-square input), which clip-rt does not support")
    resample = c.get("resample", 3)
    if resample not in HF_RESAMPLE:
        raise ModelSourceError(f"preprocessor_config.json resample {resample!r} is not a Pillow filter code")
    normalize = c.get("do_normalize", True)
    mean = c.get("image_mean", PreprocessConfig.mean) if normalize else (0.0, 0.0, 0.0)
    std = c.get("image_std", PreprocessConfig.std) if normalize else (1.0, 1.0, 1.0)
    try:
        return PreprocessConfig(image_size=int(crop), resize=int(size), interpolation=HF_RESAMPLE[resample],
                                mean=tuple(mean), std=tuple(std), resize_mode=mode)  # type: ignore[arg-type]
    except InputError as e:
        raise ModelSourceError(f"preprocessor_config.json: {e}") from None

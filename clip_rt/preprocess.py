"""CPU image preprocessing settings and pixel math: mode to RGB, resize (+ center crop) -> uint8.

The output is the image encoder's input (contract.py): uint8 [S, S, 3] RGB. Rescaling (1/255) and mean/std
normalization are folded into the exported graph, so they do not happen here.

Parity target: transformers' CLIPImageProcessor as CLIPProcessor.from_pretrained loads it without torchvision,
which is the PIL backend (CLIPImageProcessorPil). Step by step, what that backend does with a PIL image and what
this module does the same way:
  - mode to RGB: an image with an alpha band or a `transparency` entry is converted to RGBA and alpha-composited
    onto opaque white; every other mode goes through Pillow's plain convert("RGB") (16-bit and float modes clip
    at 255, CMYK uses Pillow's naive formula, exactly as transformers sees them);
  - resize: the shortest edge becomes `resize`, the other edge int(resize * long / short) (truncated, not
    rounded), with Pillow's own Image.resize and the configured filter (bicubic by default);
  - center crop: top = (H - S) // 2, left = (W - S) // 2.
EXIF orientation is applied first, when decoding (clip_rt/decode.py), as transformers' load_image does for paths.

Two more settings cover the other model families (the manifest's preprocess block says which):
  - resize_mode "squash": both edges straight to S (no crop, the aspect ratio is not kept): SigLIP's processor, and
    open_clip's resize_mode "squash". A resize from the image's own size cannot be folded into a fixed-shape graph,
    so it happens here, on the CPU, like the shortest-edge resize.
  - crop_rounding "half_even": the crop offsets are round((H - S) / 2) with Python's round (halves to even), as
    torchvision's CenterCrop computes them (open_clip's preprocessing); they differ from the floor by one pixel
    when H - S is odd and (H - S) // 2 is odd.

Decoding with its guards (decompression-bomb limit, EXIF orientation, fast/exact decode) is clip_rt/decode.py;
one source or a batch on a thread pool to model inputs is clip_rt/prepare.py; folder walking is clip_rt/files.py;
reading a Hugging Face preprocessor_config.json is build-time code (export/families/hf_preprocess.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .errors import InputError, PackageError

# Pillow filters by the name used in manifests.
INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
RESIZE_MODES = ("shortest", "squash")  # shortest edge to `resize` + center crop | both edges to image_size, no crop
CROP_ROUNDINGS = ("floor", "half_even")  # center-crop offset (W - S) // 2 (transformers) | round((W - S) / 2)

RESCALE = 1.0 / 255.0  # uint8 -> [0, 1], applied inside the model graph


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes the model's uint8 input; travels in the package manifest ("preprocess")."""

    image_size: int  # crop side S: the model's input is [S, S, 3]
    resize: int  # the shortest edge is resized to this before the center crop (>= image_size)
    interpolation: str = "bicubic"  # Pillow filter name, one of INTERPOLATIONS (CLIP: bicubic)
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP RGB mean, in [0, 1] units
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)  # OpenAI CLIP RGB std, in [0, 1] units
    resize_mode: str = "shortest"  # "shortest": shortest edge to `resize`, center crop; "squash": both edges to S
    crop_rounding: str = "floor"  # center-crop offsets: "floor" (transformers) | "half_even" (torchvision, open_clip)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if not (isinstance(self.image_size, int) and self.image_size > 0):
            raise InputError(f"preprocess image_size must be a positive int, got {self.image_size!r}")
        if not (isinstance(self.resize, int) and self.resize >= self.image_size):
            raise InputError(f"preprocess resize ({self.resize!r}) must be an int >= image_size ({self.image_size}): "
                             f"the center crop never pads")
        if self.interpolation not in INTERPOLATIONS:
            raise InputError(f"unknown interpolation {self.interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise InputError(f"preprocess mean and std need 3 values (RGB), got {self.mean} and {self.std}")
        if not all(s > 0 for s in self.std):
            raise InputError(f"preprocess std must be positive, got {self.std}")
        if self.resize_mode not in RESIZE_MODES:
            raise InputError(f"unknown resize mode {self.resize_mode!r}; choose one of {', '.join(RESIZE_MODES)}")
        if self.crop_rounding not in CROP_ROUNDINGS:
            raise InputError(f"unknown crop rounding {self.crop_rounding!r}; choose one of {', '.join(CROP_ROUNDINGS)}")
        if self.resize_mode == "squash" and self.resize != self.image_size:
            raise InputError(f"resize mode 'squash' resizes both edges to image_size ({self.image_size}); resize "
                             f"must equal it, got {self.resize}")

    @property
    def crops(self) -> bool:
        """True when a center crop follows the resize (resize mode "shortest")."""
        return self.resize_mode == "shortest"

    @property
    def filter(self) -> Image.Resampling:
        return INTERPOLATIONS[self.interpolation]

    @classmethod
    def from_manifest(cls, d: dict[str, Any]) -> "PreprocessConfig":
        """The manifest's "preprocess" block (see to_manifest) -> config; PackageError if it is not one we run."""
        try:
            mode = str(d.get("resize_mode", "shortest"))
            if d.get("crop", "center" if mode == "shortest" else "none") != ("center" if mode == "shortest" else "none"):
                raise PackageError(f"manifest preprocess crop {d['crop']!r} does not go with resize mode {mode!r} "
                                   f"(supported: shortest + center, squash + none)")
            if abs(float(d.get("rescale", RESCALE)) - RESCALE) > 1e-12:
                raise PackageError(f"manifest preprocess rescale {d['rescale']!r} is not supported (only 1/255)")
            return cls(image_size=int(d["image_size"]), resize=int(d["resize"]),
                       interpolation=str(d.get("interpolation", "bicubic")),
                       mean=tuple(d["mean"]), std=tuple(d["std"]), resize_mode=mode,  # type: ignore[arg-type]
                       crop_rounding=str(d.get("crop_rounding", "floor")))
        except InputError as e:
            raise PackageError(f"manifest preprocess block {d!r} is not one this clip-rt runs ({e}); upgrade clip-rt "
                               f"or re-export the package") from None
        except (KeyError, TypeError, ValueError) as e:
            raise PackageError(f"manifest preprocess block {d!r} is invalid ({type(e).__name__}: {e}); "
                               f"re-export the package") from None

    def to_manifest(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "resize": self.resize, "resize_mode": self.resize_mode,
                "crop": "center" if self.crops else "none", "crop_rounding": self.crop_rounding,
                "interpolation": self.interpolation, "mean": list(self.mean), "std": list(self.std),
                "rescale": RESCALE}


# -- mode, resize + crop ------------------------------------------------------------------------------------
def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB, the way transformers' convert_to_rgb does it: with alpha (an "A" band or a
    `transparency` entry) composite onto opaque white, otherwise Pillow's convert("RGB")."""
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def resized_size(width: int, height: int, shortest_edge: int) -> tuple[int, int]:
    """(width, height) after resizing the shortest edge to `shortest_edge`; the long edge is truncated,
    int(shortest_edge * long / short), as transformers' get_resize_output_image_size computes it."""
    if width <= height:
        return shortest_edge, int(shortest_edge * height / width)
    return int(shortest_edge * width / height), shortest_edge


def crop_box(width: int, height: int, side: int, rounding: str = "floor") -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centered side x side crop: offsets floor((W - S) / 2), floor((H - S) / 2),
    or with rounding "half_even" round((W - S) / 2), round((H - S) / 2) as torchvision's CenterCrop rounds them."""
    if rounding == "half_even":
        left, top = int(round((width - side) / 2.0)), int(round((height - side) / 2.0))
    else:
        left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def resize_crop(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """An image (converted to RGB if needed) -> uint8 [S, S, 3]: shortest edge to cfg.resize, then center crop (resize
    mode "shortest"), or both edges to S (resize mode "squash")."""
    if img.mode != "RGB":
        img = to_rgb(img)
    if cfg.resize_mode == "squash":
        squashed = img.resize((cfg.image_size, cfg.image_size), resample=cfg.filter)
        return np.asarray(squashed, dtype=np.uint8)  # [S, S, 3] uint8
    size = resized_size(img.width, img.height, cfg.resize)
    resized = img.resize(size, resample=cfg.filter)  # Pillow's separable filter, same call transformers makes
    crop = resized.crop(crop_box(size[0], size[1], cfg.image_size, cfg.crop_rounding))
    return np.asarray(crop, dtype=np.uint8)  # [S, S, 3] uint8

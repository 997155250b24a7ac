"""CPU image preprocessing: decode, EXIF orientation, mode to RGB, resize (+ center crop) -> uint8.

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
EXIF orientation is applied first (PIL.ImageOps.exif_transpose), as transformers' load_image does for paths.

Two more settings cover the other model families (the manifest's preprocess block says which):
  - resize_mode "squash": both edges straight to S (no crop, the aspect ratio is not kept): SigLIP's processor, and
    open_clip's resize_mode "squash". A resize from the image's own size cannot be folded into a fixed-shape graph,
    so it happens here, on the CPU, like the shortest-edge resize.
  - crop_rounding "half_even": the crop offsets are round((H - S) / 2) with Python's round (halves to even), as
    torchvision's CenterCrop computes them (open_clip's preprocessing); they differ from the floor by one pixel
    when H - S is odd and (H - S) // 2 is odd.

decode="fast" (bulk indexing; never the default of the parity paths) lets libjpeg decode a JPEG at 1/2, 1/4 or 1/8
of its size through its DCT scaling (Pillow's Image.draft): the smallest scale whose shortest edge is still at least
`resize`, so that the exact resize above only ever shrinks. A 12-megapixel photo then decodes several times faster;
the crop differs from the exact path's by the scaled IDCT's filtering (measured in the README's search section).
Other formats decode as with "exact".
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, InputError, ModelSourceError, PackageError

# Pillow filters by the name used in manifests, and the integer codes HF preprocessor configs use for them.
INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
_HF_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
RESIZE_MODES = ("shortest", "squash")  # shortest edge to `resize` + center crop | both edges to image_size, no crop
CROP_ROUNDINGS = ("floor", "half_even")  # center-crop offset (W - S) // 2 (transformers) | round((W - S) / 2)
# transformers image processors whose settings this module reproduces (with their *Fast / *Pil variants).
HF_PROCESSORS = ("CLIPImageProcessor", "SiglipImageProcessor", "ChineseCLIPImageProcessor")
DECODES = ("exact", "fast")  # full-size decode (the parity reference) | JPEG DCT-scaled decode (see the module doc)

RESCALE = 1.0 / 255.0  # uint8 -> [0, 1], applied inside the model graph
# Largest image (width * height) decoded by default: Pillow's own default MAX_IMAGE_PIXELS, so that an
# image Pillow would merely warn about is refused here with a message, before any pixel is allocated.
DEFAULT_MAX_PIXELS = 89_478_485
# File name endings picked up when a folder is expanded (explicitly named files are taken whatever their name).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".bmp", ".dib", ".gif", ".tif",
                              ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".avif",
                              ".heic", ".heif", ".jxl"})  # the last three: picked up to be reported as unsupported


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

    @classmethod
    def from_hf(cls, processor_config: dict[str, Any]) -> "PreprocessConfig":
        """A preprocessor_config.json dict (CLIPImageProcessor, SiglipImageProcessor, ChineseCLIPImageProcessor, or
        an image processor's to_dict(), which spells out the class defaults) -> config.

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
        if resample not in _HF_RESAMPLE:
            raise ModelSourceError(f"preprocessor_config.json resample {resample!r} is not a Pillow filter code")
        normalize = c.get("do_normalize", True)
        mean = c.get("image_mean", cls.mean) if normalize else (0.0, 0.0, 0.0)
        std = c.get("image_std", cls.std) if normalize else (1.0, 1.0, 1.0)
        try:
            return cls(image_size=int(crop), resize=int(size), interpolation=_HF_RESAMPLE[resample],
                       mean=tuple(mean), std=tuple(std), resize_mode=mode)  # type: ignore[arg-type]
        except InputError as e:
            raise ModelSourceError(f"preprocessor_config.json: {e}") from None


# -- decoding ----------------------------------------------------------------------------------------------
def _label(src: Any) -> str:
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    if isinstance(src, Image.Image):
        return getattr(src, "filename", "") or "<PIL image>"
    if isinstance(src, np.ndarray):
        return f"<array {src.dtype} {list(src.shape)}>"
    if isinstance(src, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return str(getattr(src, "name", "") or f"<{type(src).__name__}>")


def _bomb(label: str, what: str, max_pixels: int) -> ImageError:
    return ImageError(label, f"decompression bomb: {what} exceeds the limit of {max_pixels:,}; raise it with "
                             f"max_pixels= (Python) or --max-pixels (clip-rt commands) if the file is trusted")


def _load(img: Image.Image, label: str) -> Image.Image:
    """Decode the pixels of an opened image; failures become ImageError."""
    try:
        img.load()
    except OSError as e:
        if "truncated" in str(e):
            raise ImageError(label, f"truncated {img.format or 'image'} ({e})") from None
        raise ImageError(label, f"corrupt {img.format or 'image'} data ({e})") from None
    except (ValueError, SyntaxError, EOFError, IndexError, TypeError) as e:
        raise ImageError(label, f"corrupt {img.format or 'image'} data ({type(e).__name__}: {e})") from None
    except MemoryError:
        raise ImageError(label, f"out of memory decoding {img.width}x{img.height} pixels") from None
    return img


def _unsupported_format(fp: Any) -> str | None:
    """The name of a known image/document format Pillow cannot decode, from the file's first bytes, or None."""
    try:
        fp.seek(0)
        head = fp.read(256)
    except (OSError, AttributeError, ValueError):
        return None
    if not isinstance(head, bytes):
        return None
    if head[4:8] == b"ftyp":  # ISO base media file: the brand names the codec
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"):
            return "HEIF/HEIC"
        if brand in (b"avif", b"avis"):
            return "AVIF"
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")):
        return "JPEG XL"
    if head.startswith(b"%PDF-"):
        return "PDF"
    if head.lstrip().startswith(b"<svg") or (head.lstrip().startswith(b"<?xml") and b"<svg" in head):
        return "SVG"
    return None


def _decode(fp: Any, label: str, max_pixels: int, draft_edge: int | None = None) -> Image.Image:
    """Header, size check, then pixels. Every failure becomes an ImageError with a human reason.
    draft_edge: decode a JPEG at the smallest DCT scale whose shortest edge stays >= draft_edge (Image.draft)."""
    try:
        img = Image.open(fp)
    except UnidentifiedImageError:
        kind = _unsupported_format(fp)
        if kind is not None:
            raise ImageError(label, f"unsupported image format: {kind} (Pillow cannot decode it; convert the file "
                                    f"to JPEG or PNG)") from None
        raise ImageError(label, "not an image (cannot identify format)") from None
    except Image.DecompressionBombError as e:
        # Pillow refuses on its own above 2 * PIL.Image.MAX_IMAGE_PIXELS, a process-wide setting left untouched
        # here; the pixel count is only in its message.
        n = re.search(r"\((\d+) pixels\)", str(e))
        what = f"{int(n.group(1)):,} pixels" if n else "the image size"
        if max_pixels < 2 * (Image.MAX_IMAGE_PIXELS or 0):
            raise _bomb(label, what, max_pixels) from None
        raise ImageError(label, f"decompression bomb: {what} exceeds Pillow's own limit (2 x PIL.Image.MAX_IMAGE_PIXELS"
                                f" = {2 * (Image.MAX_IMAGE_PIXELS or 0):,}); raise PIL.Image.MAX_IMAGE_PIXELS "
                                f"as well as max_pixels= if the file is trusted") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(label, f"cannot read image header ({e})") from None
    width, height = img.size
    if width * height > max_pixels:  # from the header only: nothing has been allocated yet
        raise _bomb(label, f"{width}x{height} pixels", max_pixels)
    if draft_edge is not None and img.format == "JPEG" and min(width, height) > draft_edge:
        # draft() picks the largest of 1/8, 1/4, 1/2 that keeps both edges >= the requested size; a no-op otherwise
        img.draft(None, resized_size(width, height, draft_edge))
    return _load(img, label)


def _open_path(path: str, max_pixels: int, draft_edge: int | None = None) -> Image.Image:
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(path, "is a folder, not an image file")
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or stream forever
            raise ImageError(path, "not a regular file")
        if st.st_size == 0:
            raise ImageError(path, "empty file (0 bytes)")
        with open(path, "rb") as f:
            return _decode(f, path, max_pixels, draft_edge)
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except FileNotFoundError:
        reason = "broken symbolic link" if os.path.islink(path) else "file not found"
        raise ImageError(path, reason) from None
    except ImageError:
        raise
    except OSError as e:
        raise ImageError(path, f"cannot read file ({e.strerror or e})") from None


def _from_array(arr: np.ndarray, label: str) -> Image.Image:
    if arr.dtype != np.uint8:
        raise ImageError(label, f"array dtype {arr.dtype} is not supported; pass uint8 values 0..255")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        mode = "L"
    elif arr.ndim == 3 and arr.shape[2] in (3, 4):
        mode = "RGB" if arr.shape[2] == 3 else "RGBA"
    else:
        raise ImageError(label, f"array shape {arr.shape} is not an image; pass [H, W], [H, W, 3] or [H, W, 4]")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(label, f"array shape {arr.shape} has no pixels")
    return Image.fromarray(np.ascontiguousarray(arr), mode=mode)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB, the way transformers' convert_to_rgb does it: with alpha (an "A" band or a
    `transparency` entry) composite onto opaque white, otherwise Pillow's convert("RGB")."""
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def open_image(src: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None,
               draft_edge: int | None = None) -> Image.Image:
    """A path, bytes, binary file object, PIL image or uint8 array -> an RGB PIL image, EXIF orientation applied.

    Files larger than `max_pixels` (width * height, read from the header) are refused before decoding.
    draft_edge: a JPEG read here (path, bytes, file) is decoded at the smallest DCT scale whose shortest edge is
    still >= draft_edge (decode="fast"); None (default) decodes at full size.
    Raises ImageError(file, reason) for anything that cannot be read; `name` overrides the file in messages.
    A PIL image passed in is never modified.
    """
    label = name or _label(src)
    owned = True  # images we decoded ourselves may be transposed in place
    if isinstance(src, (str, os.PathLike)):
        img = _open_path(os.fspath(src), max_pixels, draft_edge)
    elif isinstance(src, Image.Image):
        if src.size[0] * src.size[1] > max_pixels:
            raise _bomb(label, f"{src.size[0]}x{src.size[1]} pixels", max_pixels)
        img, owned = _load(src, label), False
    elif isinstance(src, np.ndarray):
        img = _from_array(src, label)
    elif isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise ImageError(label, "empty file (0 bytes)")
        img = _decode(io.BytesIO(src), label, max_pixels, draft_edge)
    elif hasattr(src, "read"):
        img = _decode(src, label, max_pixels, draft_edge)
    else:
        raise ImageError(label, f"unsupported input type {type(src).__name__}; pass a path, bytes, a binary file "
                                f"object, a PIL image or a uint8 array")
    step = "apply the EXIF orientation of"
    try:
        if owned:
            ImageOps.exif_transpose(img, in_place=True)
        else:
            img = ImageOps.exif_transpose(img)
        step = f"convert to RGB the {img.mode}"
        return to_rgb(img)
    except MemoryError:
        raise ImageError(label, f"out of memory: cannot {step} image") from None
    except (OSError, ValueError, SyntaxError, EOFError, KeyError, TypeError, struct.error) as e:
        raise ImageError(label, f"cannot {step} image ({type(e).__name__}: {e})") from None


# -- resize + crop ------------------------------------------------------------------------------------------
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


def check_decode(decode: str) -> str:
    if decode not in DECODES:
        raise InputError(f"decode must be one of {', '.join(DECODES)}, got {decode!r}")
    return decode


def prepare(src: Any, cfg: PreprocessConfig, *, max_pixels: int = DEFAULT_MAX_PIXELS,
            name: str | None = None, decode: str = "exact") -> np.ndarray:
    """One image source -> the model input uint8 [S, S, 3].

    A uint8 array already shaped [S, S, 3] is taken as an already preprocessed crop and returned as is
    (contiguous), without resizing. decode: "exact" (full-size decode, the parity reference) or "fast" (JPEGs
    decoded at a reduced DCT scale that is still >= cfg.resize; see the module doc). Raises ImageError for
    unreadable input.
    """
    S = cfg.image_size
    if isinstance(src, np.ndarray) and src.dtype == np.uint8 and src.shape == (S, S, 3):
        return np.ascontiguousarray(src)  # [S, S, 3] uint8
    draft_edge = cfg.resize if check_decode(decode) == "fast" else None
    return resize_crop(open_image(src, max_pixels=max_pixels, name=name, draft_edge=draft_edge), cfg)


def _prepare_one(args: tuple[int, Any, PreprocessConfig, int, str]) -> np.ndarray | ImageError:
    i, src, cfg, max_pixels, decode = args
    name = None if isinstance(src, (str, os.PathLike)) else f"item {i} ({_label(src)})"
    try:
        return prepare(src, cfg, max_pixels=max_pixels, name=name, decode=decode)
    except ImageError as e:
        return e
    except Exception as e:  # noqa: BLE001 - one bad item must not stop the batch; it is reported, not hidden
        return ImageError(name or _label(src), f"unexpected {type(e).__name__}: {e}")


def prepare_batch(srcs: Sequence[Any], cfg: PreprocessConfig, workers: int | None = None, *,
                  max_pixels: int = DEFAULT_MAX_PIXELS, decode: str = "exact") -> list[np.ndarray | ImageError]:
    """Many image sources -> one entry per source, in order: a uint8 [S, S, 3] array, or the ImageError saying
    why that item could not be read. Decoding runs on a thread pool (Pillow releases the GIL while decoding
    and resizing); `workers` defaults to min(8, CPU count), and 1 runs inline. decode: as in prepare()."""
    if isinstance(srcs, (str, os.PathLike, bytes)):
        raise TypeError("prepare_batch takes a sequence of image sources, not a single one; use prepare()")
    check_decode(decode)
    jobs = [(i, s, cfg, max_pixels, decode) for i, s in enumerate(srcs)]
    n = min(8, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    if n == 1 or len(jobs) <= 1:
        return [_prepare_one(j) for j in jobs]
    with ThreadPoolExecutor(max_workers=min(n, len(jobs)), thread_name_prefix="clip-rt-preprocess") as pool:
        return list(pool.map(_prepare_one, jobs))


# -- file discovery -----------------------------------------------------------------------------------------
def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk(root: str, recursive: bool, errors: list[ImageError]) -> list[str]:
    """Image files under `root`, skipping hidden entries; loops and unreadable folders go to `errors`."""
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    # Depth-first with an explicit stack; each entry carries the (dev, inode) chain of its parents,
    # so a link back to an ancestor is reported as a loop and a folder reached twice is listed once.
    stack: list[tuple[str, frozenset[tuple[int, int]]]] = [(root, frozenset())]
    while stack:
        folder, parents = stack.pop()
        try:
            st = os.stat(folder)
        except OSError as e:
            errors.append(ImageError(folder, f"cannot open folder ({e.strerror or e})"))
            continue
        key = (st.st_dev, st.st_ino)
        if key in parents:
            errors.append(ImageError(folder, f"symlink loop: links back to its parent folder {os.path.realpath(folder)}"))
            continue
        if key in seen:
            continue
        seen.add(key)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except PermissionError:
            errors.append(ImageError(folder, "permission denied (cannot list folder)"))
            continue
        except OSError as e:
            errors.append(ImageError(folder, f"cannot list folder ({e.strerror or e})"))
            continue
        for entry in reversed(entries):  # reversed: the stack pops them in name order
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
                is_file = not is_dir and entry.is_file()
            except OSError as e:  # ELOOP: a link that points (through links) to itself
                errors.append(ImageError(entry.path, f"symlink loop ({e.strerror or e})"))
                continue
            if is_dir:
                if recursive:
                    stack.append((entry.path, parents | {key}))
            elif is_file:
                if _is_image_name(entry.name):
                    found.append(entry.path)
            elif entry.is_symlink() and _is_image_name(entry.name):
                errors.append(ImageError(entry.path, "broken symbolic link"))
    return sorted(found)


def iter_image_files(paths: Iterable[str | os.PathLike], recursive: bool = True) -> tuple[list[str], list[ImageError]]:
    """Files and folders -> (image files, problems).

    A named file is kept whatever its extension (decoding reports it if it is not an image); a folder is
    expanded to its image files (by extension, hidden entries skipped), recursively unless recursive=False,
    sorted by path. Arguments keep their order; a file listed twice is kept once. Missing paths, symlink loops
    and unreadable folders are returned as ImageError entries, never raised.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[str] = []
    errors: list[ImageError] = []
    for p in paths:
        path = os.fspath(p)
        if os.path.isdir(path):
            files.extend(_walk(path, recursive, errors))
        elif os.path.isfile(path):
            files.append(path)
        elif os.path.islink(path):
            try:
                os.stat(path)
                reason = "not a file or folder"
            except OSError as e:
                reason = "symlink loop" if e.errno == errno.ELOOP else "broken symbolic link"
            errors.append(ImageError(path, reason))
        elif os.path.exists(path):
            errors.append(ImageError(path, "not a regular file or folder"))
        else:
            errors.append(ImageError(path, "no such file or folder"))
    unique: dict[str, str] = {}  # normalized path -> the path as first given
    for f in files:
        unique.setdefault(os.path.normpath(f), f)
    return list(unique.values()), errors

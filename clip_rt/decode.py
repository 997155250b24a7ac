"""Image sources -> RGB PIL images, with the guards: a decompression-bomb limit read from the header before any
pixel is allocated, unreadable or unsupported files as ImageError with a human reason, EXIF orientation applied,
mode to RGB as transformers does it (clip_rt/preprocess.py's to_rgb).

decode="fast" (bulk indexing; never the default of the parity paths) lets libjpeg decode a JPEG at 1/2, 1/4 or 1/8
of its size through its DCT scaling (Pillow's Image.draft): the smallest scale whose shortest edge is still at least
`resize`, so that the exact resize that follows (clip_rt/preprocess.py) only ever shrinks. A 12-megapixel photo then
decodes several times faster; the crop differs from the exact path's by the scaled IDCT's filtering (measured in the
README's search section). Other formats decode as with "exact".
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, InputError
from .preprocess import resized_size, to_rgb

DECODES = ("exact", "fast")  # full-size decode (the parity reference) | JPEG DCT-scaled decode (see the module doc)
# Largest image (width * height) decoded by default: Pillow's own default MAX_IMAGE_PIXELS, so that an
# image Pillow would merely warn about is refused here with a message, before any pixel is allocated.
DEFAULT_MAX_PIXELS = 89_478_485


# -- decoding ----------------------------------------------------------------------------------------------
def source_label(src: Any) -> str:
    """How an image source is named in messages: its path, or a short description of the object."""
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
    # The library names its own parameter only: the CLI says its flag in place of it (clip_rt.cli.common.bomb_hint),
    # and the HTTP service, which has no such flag for its clients, passes the reason on as it is.
    return ImageError(label, f"decompression bomb: {what} exceeds the limit of {max_pixels:,}; raise it with "
                             f"max_pixels= if the file is trusted")


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


def _decode(fp: Any, label: str, max_pixels: int, draft_edge: int | None = None,
            header: Callable[[Image.Image], None] | None = None) -> Image.Image:
    """Header, size check, then pixels. Every failure becomes an ImageError with a human reason.
    draft_edge: decode a JPEG at the smallest DCT scale whose shortest edge stays >= draft_edge (Image.draft).
    header: called with the opened image before the size check, draft() or any pixel is read (its full size, EXIF)."""
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
    if header is not None:
        header(img)
    width, height = img.size
    if width * height > max_pixels:  # from the header only: nothing has been allocated yet
        raise _bomb(label, f"{width}x{height} pixels", max_pixels)
    if draft_edge is not None and img.format == "JPEG" and min(width, height) > draft_edge:
        # draft() picks the largest of 1/8, 1/4, 1/2 that keeps both edges >= the requested size; a no-op otherwise
        img.draft(None, resized_size(width, height, draft_edge))
    return _load(img, label)


def _open_path(path: str, max_pixels: int, draft_edge: int | None = None,
               header: Callable[[Image.Image], None] | None = None) -> Image.Image:
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(path, "is a folder, not an image file")
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or stream forever
            raise ImageError(path, "not a regular file")
        if st.st_size == 0:
            raise ImageError(path, "empty file (0 bytes)")
        with open(path, "rb") as f:
            return _decode(f, path, max_pixels, draft_edge, header)
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


def open_image(src: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None,
               draft_edge: int | None = None, header: Callable[[Image.Image], None] | None = None) -> Image.Image:
    """A path, bytes, binary file object, PIL image or uint8 array -> an RGB PIL image, EXIF orientation applied.

    Files larger than `max_pixels` (width * height, read from the header) are refused before decoding.
    draft_edge: a JPEG read here (path, bytes, file) is decoded at the smallest DCT scale whose shortest edge is
    still >= draft_edge (decode="fast"); None (default) decodes at full size.
    Raises ImageError(file, reason) for anything that cannot be read; `name` overrides the file in messages.
    header: for a file decoded here (path, bytes, file object), called with the just-opened image before the size
    check, draft() or decoding (e.g. to read its EXIF and full size on the same open; clip_rt.search.photo_index).
    A PIL image passed in is never modified.
    """
    label = name or source_label(src)
    owned = True  # images we decoded ourselves may be transposed in place
    if isinstance(src, (str, os.PathLike)):
        img = _open_path(os.fspath(src), max_pixels, draft_edge, header)
    elif isinstance(src, Image.Image):
        if src.size[0] * src.size[1] > max_pixels:
            raise _bomb(label, f"{src.size[0]}x{src.size[1]} pixels", max_pixels)
        img, owned = _load(src, label), False
    elif isinstance(src, np.ndarray):
        img = _from_array(src, label)
    elif isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise ImageError(label, "empty file (0 bytes)")
        img = _decode(io.BytesIO(src), label, max_pixels, draft_edge, header)
    elif hasattr(src, "read"):
        img = _decode(src, label, max_pixels, draft_edge, header)
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


def check_decode(decode: str) -> str:
    if decode not in DECODES:
        raise InputError(f"decode must be one of {', '.join(DECODES)}, got {decode!r}")
    return decode

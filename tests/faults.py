"""Broken and tricky input built on the fly, for the fault, load and concurrency tests (and anyone else's).

Everything here writes real files with Pillow, zlib and the standard library; nothing is mocked.

    tricky_images(pixels)     valid files in the awkward kinds (CMYK, 16-bit, palette + transparency, RGBA, 1-bit,
                              1x1, panorama, EXIF-rotated) -> {name: bytes}
    broken_images(jpeg)       files that cannot be read -> {name: Broken(data, reason)}, reason = the exact
                              ImageError.reason clip_rt gives (a regular expression, matched in full)
    exif_pair(pixels)         (EXIF-rotated JPEG, the same picture physically rotated as PNG)
    symlink_loops(folder)     links that make a folder walk go round in circles
    as_nobody(fn, *args)      fn(*args) in a forked child without root, so permission bits apply
    run_crashing(code, at)    Python code in a subprocess that dies (os._exit) at the n-th call of a function
    run_in_threads(n, work)   work(i) in n threads released together; the results, or the first error re-raised
"""

from __future__ import annotations

import io
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def run_in_threads(n: int, work: Callable[[int], Any]) -> list[Any]:
    """work(i) in n threads released together by a barrier; returns the results, re-raising the first error."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results

# What each EXIF Orientation value asks a viewer to do with the stored pixels, in numpy terms.
VIEWER = {2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud, 5: lambda a: a.transpose(1, 0, 2),
          6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1)}
# The inverse: the pixels to store so that a viewer applying the tag shows `a`.
STORE = {2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud, 5: lambda a: a.transpose(1, 0, 2),
         6: lambda a: np.rot90(a, 1), 7: lambda a: np.rot90(a, 2).transpose(1, 0, 2), 8: lambda a: np.rot90(a, -1)}


# -- pictures ---------------------------------------------------------------------------------------------
def photo(width: int = 320, height: int = 240, seed: int = 0) -> np.ndarray:
    """A synthetic picture, uint8 [H, W, 3]: smooth colour gradients, a few discs and mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), 0.5 + 0.5 * np.sin(x / 17 + y / 23)], -1) * 200
    for _ in range(4):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(5, max(6, min(width, height) / 3))
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """A real photo's pixels, uint8 [H, W, 3]."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def encoded(img: Image.Image | np.ndarray, fmt: str, **kw: Any) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png16(values: np.ndarray) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot write 48-bit RGB): uint16 [H, W] grey or [H, W, 3] RGB."""
    color_type = 0 if values.ndim == 2 else 2
    height, width = values.shape[:2]
    rows = values.astype(">u2").reshape(height, -1).view(np.uint8)  # big-endian samples, [H, W * C * 2]
    raw = b"".join(b"\0" + row.tobytes() for row in rows)  # filter type 0 on every row
    ihdr = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw)) + \
        _png_chunk(b"IEND", b"")


def bomb_png(width: int, height: int) -> bytes:
    """A PNG header claiming width x height RGB pixels followed by a few bytes of data (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        _png_chunk(b"IEND", b"")


def exif_pair(pixels: np.ndarray, orientation: int = 6, quality: int = 95) -> tuple[bytes, bytes]:
    """(JPEG whose stored pixels a viewer turns upright with the EXIF Orientation tag, the upright picture as PNG).

    The PNG is made from the JPEG's own decoded pixels, turned the way the tag says, so both files show
    exactly the same picture: a correct reader gives identical crops for the two."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    tagged = encoded(np.ascontiguousarray(STORE[orientation](pixels)), "JPEG", quality=quality, exif=exif.tobytes())
    with Image.open(io.BytesIO(tagged)) as im:
        stored = np.asarray(im.convert("RGB"))  # what the JPEG holds, tag not applied
    upright = encoded(np.ascontiguousarray(VIEWER[orientation](stored)), "PNG")
    return tagged, upright


def tricky_images(pixels: np.ndarray) -> dict[str, bytes]:
    """Valid files in every awkward kind, made from one RGB picture. Each must get a label, not an error."""
    rgb = Image.fromarray(pixels)
    h, w = pixels.shape[:2]
    alpha = np.tile(np.linspace(0, 255, w), (h, 1)).astype(np.uint8)
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(alpha))
    grey16 = (pixels[..., 1].astype(np.uint16) * 257)  # full 16-bit range
    wide = np.tile(pixels, (1, max(1, 8000 // w) + 1, 1))[: max(64, h // 2), :8000]  # 8000 px wide, short
    return {
        "cmyk.jpg": encoded(rgb.convert("CMYK"), "JPEG", quality=92),
        "grey16.png": encoded(Image.fromarray(grey16), "PNG"),  # Pillow writes mode I;16
        "rgb48.png": png16(pixels.astype(np.uint16) * 257),  # 16 bits per channel, RGB
        "palette_transparent.png": encoded(rgb.quantize(64), "PNG", transparency=0),
        "palette_transparent.gif": encoded(rgb.quantize(64), "GIF", transparency=0),
        "rgba.png": encoded(rgba, "PNG"),
        "bilevel.png": encoded(rgb.convert("1"), "PNG"),
        "one_pixel.png": encoded(Image.new("RGB", (1, 1), tuple(int(v) for v in pixels[h // 2, w // 2])), "PNG"),
        "panorama.jpg": encoded(np.ascontiguousarray(wide), "JPEG", quality=85),
        "exif_rotated.jpg": exif_pair(pixels)[0],
    }


# Pillow mode each tricky file must really have when opened (so a test knows it tests what it says).
TRICKY_MODES = {"cmyk.jpg": "CMYK", "grey16.png": "I;16", "rgb48.png": "RGB", "palette_transparent.png": "P",
                "palette_transparent.gif": "P", "rgba.png": "RGBA", "bilevel.png": "1", "one_pixel.png": "RGB",
                "panorama.jpg": "RGB", "exif_rotated.jpg": "RGB"}


@dataclass(frozen=True)
class Broken:
    data: bytes
    reason: str  # regular expression for the whole ImageError.reason


def heif_header() -> bytes:
    """The first box of a HEIC file (ftyp, brand heic): a real image format Pillow has no decoder for."""
    return struct.pack(">I", 24) + b"ftypheic" + b"\0\0\0\0" + b"mif1heic" + b"\0" * 200


def broken_images(jpeg: bytes) -> dict[str, Broken]:
    """Files that cannot be read, each with the reason clip_rt must give. `jpeg` is any valid JPEG."""
    bmp = bytearray(encoded(Image.new("RGB", (8, 8)), "BMP"))
    bmp[30:34] = struct.pack("<I", 4)  # biCompression = BI_JPEG: a BMP variant Pillow does not decode
    return {
        "zero_bytes.jpg": Broken(b"", r"empty file \(0 bytes\)"),
        "truncated.jpg": Broken(jpeg[: int(len(jpeg) * 0.4)], r"truncated JPEG \(image file is truncated.*\)"),
        "text_named.jpg": Broken(b"shopping list: eggs, milk, bread\n" * 4, r"not an image \(cannot identify format\)"),
        # 10,000 x 10,000 is above clip-rt's limit (Pillow's MAX_IMAGE_PIXELS) but below Pillow's own refusal (2x),
        # so clip-rt's header check refuses it; 30,000 x 30,000 is refused inside Image.open, before the header
        # check, and reported with the pixel count from Pillow's message.
        "bomb.png": Broken(bomb_png(10_000, 10_000), r"decompression bomb: 10000x10000 pixels exceeds the limit of "
                                                     r"89,478,485; raise it with (max_pixels=|--max-pixels) .*"),
        "bomb_huge.png": Broken(bomb_png(30_000, 30_000), r"decompression bomb: 900,000,000 pixels exceeds the limit "
                                                          r"of 89,478,485; raise it with (max_pixels=|--max-pixels) .*"),
        "photo.heic": Broken(heif_header(), r"unsupported image format: HEIF/HEIC \(Pillow cannot decode it; "
                                            r"convert the file to JPEG or PNG\)"),
        "jpeg_compressed.bmp": Broken(bytes(bmp), r"cannot read image header \(Unsupported BMP compression \(4\)\)"),
    }


# -- files and folders ------------------------------------------------------------------------------------------
def write_files(folder: Path, files: dict[str, bytes]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        out[name] = folder / name
    return out


def symlink_loops(folder: Path) -> dict[str, str]:
    """Links that loop: a folder link back to its own parent, and a link to itself. -> {link path: reason regex}."""
    sub = folder / "loop_sub"
    sub.mkdir(parents=True, exist_ok=True)
    os.symlink(folder, sub / "back_to_top")
    os.symlink("self_link.jpg", folder / "self_link.jpg")
    return {str(sub / "back_to_top"): r"symlink loop: links back to its parent folder .*",
            str(folder / "self_link.jpg"): r"symlink loop \(.*\)"}


def as_nobody(fn: Callable[..., Any], *args: Any, timeout: int = 300) -> tuple[str, Any]:
    """("ok", fn(*args)) or ("raised", exception), computed in a forked child that dropped root: root reads every
    file, which would hide permission errors. Without root it runs fn in this process."""
    if os.geteuid() != 0:
        try:
            return "ok", fn(*args)
        except Exception as e:  # noqa: BLE001 - handed back like the forked case
            return "raised", e
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            signal.alarm(timeout)  # a child stuck on a lock inherited through fork dies instead of hanging the test
            os.close(r)
            os.setgid(65534)
            os.setuid(65534)
            try:
                result: tuple[str, Any] = ("ok", fn(*args))
            except BaseException as e:  # noqa: BLE001 - shipped back to the parent
                result = ("raised", e)
            os.write(w, pickle.dumps(result))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return pickle.loads(data) if data else ("raised", RuntimeError("the child died without an answer"))


def open_to_all(path: Path) -> None:
    """Make a folder tree readable (and traversable) by everyone, e.g. for as_nobody."""
    for dirpath, dirnames, filenames in os.walk(path):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)
    p = Path(path)
    for parent in p.parents:  # pytest's tmp folders are 0700 under root
        if parent == Path("/tmp") or parent == Path("/"):
            break
        os.chmod(parent, os.stat(parent).st_mode | 0o755)


# -- crashes ------------------------------------------------------------------------------------------------------
CRASH_PRELUDE = """
import os, sys, itertools
def _crash_at(module, name, n):
    real = getattr(module, name)
    count = itertools.count(1)
    def wrapper(*a, **k):
        if next(count) == n:
            os._exit(77)  # no cleanup, no finally blocks: what a kill or a power cut leaves
        return real(*a, **k)
    setattr(module, name, wrapper)
"""
CRASH_EXIT = 77


def run_crashing(code: str, crash: tuple[str, str, int] | None, env: dict[str, str] | None = None,
                 timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python; with crash=(module, function, n) the process dies (exit 77) on the n-th call
    of module.function, e.g. ("os", "replace", 1): the first atomic rename never happens."""
    setup = ""
    if crash is not None:
        module, name, n = crash
        setup = f"import {module}\n_crash_at({module}, {name!r}, {n})\n"
    return subprocess.run([sys.executable, "-c", CRASH_PRELUDE + setup + code], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=timeout)

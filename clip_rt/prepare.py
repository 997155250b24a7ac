"""Image sources -> the model's input: prepare one (decode with clip_rt/decode.py's guards, then clip_rt/preprocess.py's
resize + crop), or prepare_batch many on a thread pool, each unreadable item reported as an ImageError in its place.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np

from .decode import DEFAULT_MAX_PIXELS, check_decode, open_image, source_label
from .errors import ImageError
from .preprocess import PreprocessConfig, resize_crop


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
    name = None if isinstance(src, (str, os.PathLike)) else f"item {i} ({source_label(src)})"
    try:
        return prepare(src, cfg, max_pixels=max_pixels, name=name, decode=decode)
    except ImageError as e:
        return e
    except Exception as e:  # noqa: BLE001 - one bad item must not stop the batch; it is reported, not hidden
        return ImageError(name or source_label(src), f"unexpected {type(e).__name__}: {e}")


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

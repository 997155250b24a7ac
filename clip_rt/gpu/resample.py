"""Pillow-exact resize tables and the numpy twin of the GPU preprocessing kernel.

The GPU path (clip_rt/gpu/kernel.py running resize_crop.cu) resizes the shortest side with antialiased
bicubic, center-crops and packs frames into the image engine's input in one kernel. To make that kernel
testable without a GPU, everything it computes is defined here first:

* the coefficient tables, computed on the host in float64 and rounded to fixed point the way Pillow's
  libImaging/Resample.c does (precompute_coeffs + normalize_coeffs_8bpc, read from
  github.com/python-pillow/Pillow, src/libImaging/Resample.c; reimplemented here, not copied), with the
  center crop folded in by keeping only the table rows of the cropped output pixels;
* the packed buffers the kernel reads (one descriptor row per frame, one int32 table blob);
* `twin_packed`, which runs exactly the kernel's integer arithmetic on those packed buffers in numpy.

Pillow's algorithm, as reimplemented:
    scale = in / out; filterscale = max(scale, 1); support = filter_support * filterscale
    for output pixel i: center = (i + 0.5) * scale
        first = max(0, trunc(center - support + 0.5)); last = min(in, trunc(center + support + 0.5))
        w[j] = filter((first + j - center + 0.5) / filterscale), normalized to sum 1 (sequential sum)
        fixed[j] = trunc(w[j] * 2**22 +- 0.5)                        (PRECISION_BITS = 32 - 8 - 2)
    two passes, each output = clip8((2**21 + sum(pixel * fixed)) >> 22), so the intermediate image is
    rounded and clipped to uint8 between them. Which pass runs first matters for the last bit: Pillow
    < 13 always runs the horizontal pass first; Pillow 13 runs the vertical pass first when the height
    shrinks by more than twice as many pixels as the width (ImagingResampleInner, `horizontal_first`).
    The order is decided per frame on the host (`vertical_first`) and passed to the kernel.

The kernel fuses both passes per output pixel (it recomputes the clipped first-pass value of every
source row or column it needs), which is bit-identical to running the passes one after the other; the
twin runs the two passes vectorized. Neither uses floating point after the tables are built.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import PIL

PRECISION_BITS = 22  # Pillow: 32 bits - 8 for the result - 2 for overflow of negative lobes
HALF = 1 << (PRECISION_BITS - 1)  # rounding offset added before the shift
DESC_FIELDS = 8  # int64 fields per frame descriptor (see pack_frames)
# Pillow 13 started choosing the pass order per image (see the module docstring).
_PILLOW_MAJOR = int(PIL.__version__.split(".")[0])


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution with a = -0.5, evaluated in Pillow's operation order (float64)."""
    a = -0.5
    x = np.abs(x)
    inner = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    outer = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, inner, np.where(x < 2.0, outer, 0.0))


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


# name -> (filter, support in source pixels at scale 1). Only filters whose weights are exact
# polynomial arithmetic are offered: they reproduce Pillow's doubles bit for bit (no sin/cos).
FILTERS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float]] = {
    "bicubic": (_bicubic, 2.0),
    "bilinear": (_bilinear, 1.0),
}


@dataclass(frozen=True)
class AxisTable:
    """Resampling along one axis: output i reads source [start[i], start[i] + count[i])."""

    start: np.ndarray  # [N] int32, first source index
    count: np.ndarray  # [N] int32, taps used (<= ksize); 0 would mean "outside the image" (value 0)
    weights: np.ndarray  # [N, K] int32 fixed point with PRECISION_BITS; zero past count

    @property
    def ksize(self) -> int:
        return int(self.weights.shape[1])

    def __getitem__(self, sl: slice) -> "AxisTable":
        return AxisTable(self.start[sl], self.count[sl], self.weights[sl])


def axis_table(in_size: int, out_size: int, filter: str = "bicubic") -> AxisTable:
    """Pillow's coefficients for resizing `in_size` source pixels to `out_size`, in fixed point."""
    if filter not in FILTERS:
        raise ValueError(f"unsupported resampling filter {filter!r}; choose one of {', '.join(FILTERS)}")
    if in_size < 1 or out_size < 1:
        raise ValueError(f"cannot resample {in_size} pixels to {out_size}")
    fn, base_support = FILTERS[filter]
    scale = float(in_size) / out_size  # Pillow: (double)(in1 - in0) / outSize with a float box
    filterscale = max(scale, 1.0)  # antialiasing: widen the filter when downscaling
    support = base_support * filterscale
    ksize = int(np.ceil(support)) * 2 + 1

    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale  # [N]
    # C's (int) cast truncates toward zero; negatives are clamped to 0 right after, as in Pillow.
    start = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)  # [N]
    stop = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64)  # [N]
    count = stop - start  # [N]
    taps = np.arange(ksize)  # [K]
    x = (start[:, None] + taps[None, :] - center[:, None] + 0.5) * (1.0 / filterscale)  # [N, K]
    w = np.where(taps[None, :] < count[:, None], fn(x), 0.0)  # [N, K] float64
    # Normalize by a left-to-right sum, Pillow's order (np.sum would pair terms and change the last bit).
    total = np.zeros(out_size, dtype=np.float64)
    for j in range(ksize):
        total = total + w[:, j]
    w = np.divide(w, total[:, None], out=w.copy(), where=total[:, None] != 0.0)
    scaled = w * float(1 << PRECISION_BITS)
    fixed = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int32)  # [N, K]
    # The kernel accumulates in int32 like Pillow: make sure no row of weights can overflow it.
    worst = 255 * np.maximum(fixed, 0).astype(np.int64).sum(axis=1).max() + HALF
    if worst >= 2**31:
        raise ValueError(f"resampling {in_size} -> {out_size} with {filter} would overflow int32 accumulation")
    return AxisTable(start.astype(np.int32), count.astype(np.int32), fixed)


def resized_size(height: int, width: int, shortest: int) -> tuple[int, int]:
    """(height, width) after resizing the shortest side to `shortest`, as transformers' CLIPImageProcessor
    computes it: the long side is int(shortest * long / short), truncated."""
    if height <= width:
        return shortest, int(shortest * width / height)
    return int(shortest * height / width), shortest


def crop_offset(resized: int, crop: int) -> int:
    """Center-crop start along one axis: (resized - crop) // 2, as transformers' center_crop."""
    if resized < crop:
        raise ValueError(f"center crop {crop} is larger than the resized side {resized}; the preprocessing "
                         f"config must have resize >= image_size")
    return (resized - crop) // 2


def vertical_first(height: int, width: int, out_height: int, out_width: int) -> bool:
    """Whether the installed Pillow resizes (height, width) -> (out_height, out_width) vertical pass first."""
    if _PILLOW_MAJOR < 13:
        return False
    shrink_y, shrink_x = height - out_height, width - out_width
    return shrink_y > 0 and shrink_y > 2 * shrink_x


@dataclass(frozen=True)
class FramePlan:
    """Everything the kernel needs for one source size: crop rows and crop columns of the resize."""

    height: int  # source
    width: int
    size: int  # output side S (the engine's image size)
    rows: AxisTable  # S output rows
    cols: AxisTable  # S output columns
    vertical_first: bool  # pass order of the installed Pillow for this resize


@lru_cache(maxsize=256)
def plan_frame(height: int, width: int, resize: int, size: int, filter: str = "bicubic") -> FramePlan:
    """Tables for resize-shortest-side-to-`resize` then center-crop `size`, for one source size (cached:
    video frames and camera batches repeat sizes)."""
    rh, rw = resized_size(height, width, resize)
    top, left = crop_offset(rh, size), crop_offset(rw, size)
    rows = axis_table(height, rh, filter)[top:top + size]
    cols = axis_table(width, rw, filter)[left:left + size]
    return FramePlan(height, width, size, rows, cols, vertical_first(height, width, rh, rw))


def _check_frame(frame: np.ndarray, index: int = 0) -> None:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame {index}: expected uint8 [H, W, 3] RGB, got {frame.dtype} {frame.shape}")


# -- the packed buffers the kernel reads ------------------------------------------------------------------
@dataclass(frozen=True)
class Packed:
    """Frames and tables laid out as the kernel reads them.

    pixels:  uint8 [sum(H*W*3)], frames back to back, each HWC contiguous
    desc:    int64 [B, 8] per frame: pixel offset, H, W, table offset, ky, kx, vertical_first, 0
    tables:  int32 [...] per frame: row_start[S], row_count[S], row_w[S*ky], col_start[S], col_count[S], col_w[S*kx]
    """

    pixels: np.ndarray
    desc: np.ndarray
    tables: np.ndarray
    size: int


def pack_tables(plans: Sequence[FramePlan]) -> tuple[np.ndarray, np.ndarray]:
    """(desc int64 [B, 8], tables int32) for these plans, pixel offsets assuming back-to-back frames."""
    desc = np.zeros((len(plans), DESC_FIELDS), dtype=np.int64)  # [B, 8]
    parts: list[np.ndarray] = []
    pix_off = tab_off = 0
    for i, p in enumerate(plans):
        desc[i, :7] = (pix_off, p.height, p.width, tab_off, p.rows.ksize, p.cols.ksize, int(p.vertical_first))
        for part in (p.rows.start, p.rows.count, p.rows.weights.ravel(),
                     p.cols.start, p.cols.count, p.cols.weights.ravel()):
            parts.append(part)
            tab_off += part.size
        pix_off += p.height * p.width * 3
    tables = np.concatenate(parts).astype(np.int32, copy=False) if parts else np.zeros(0, np.int32)
    return desc, tables


def pack_frames(frames: Sequence[np.ndarray], resize: int, size: int, filter: str = "bicubic") -> Packed:
    """Plan and pack a batch of uint8 [H, W, 3] frames of any sizes for the kernel (or its twin)."""
    for i, f in enumerate(frames):
        _check_frame(f, i)
    plans = [plan_frame(f.shape[0], f.shape[1], resize, size, filter) for f in frames]
    desc, tables = pack_tables(plans)
    pixels = np.concatenate([np.ascontiguousarray(f).ravel() for f in frames]) if frames else np.zeros(0, np.uint8)
    return Packed(pixels, desc, tables, size)


def _clip8(acc: np.ndarray) -> np.ndarray:
    # Arithmetic shift (floor) then clamp: Pillow's clip8 lookup over [-640, 639] does the same.
    return np.clip(acc >> PRECISION_BITS, 0, 255)


def _unpack(packed: Packed, b: int) -> tuple[np.ndarray, AxisTable, AxisTable, bool]:
    """Frame b's pixels [H, W, 3] and tables, read back from the packed buffers the way the kernel reads them."""
    s, t = packed.size, packed.tables
    pix_off, h, w, tab_off, ky, kx, vfirst, _ = packed.desc[b].tolist()
    frame = packed.pixels[pix_off:pix_off + h * w * 3].reshape(h, w, 3)
    o = tab_off
    rows = AxisTable(t[o:o + s], t[o + s:o + 2 * s], t[o + 2 * s:o + 2 * s + s * ky].reshape(s, ky))
    o += 2 * s + s * ky
    cols = AxisTable(t[o:o + s], t[o + s:o + 2 * s], t[o + 2 * s:o + 2 * s + s * kx].reshape(s, kx))
    return frame, rows, cols, bool(vfirst)


def twin_packed(packed: Packed, group: int = 64) -> np.ndarray:
    """What the kernel writes for `packed`: uint8 [B, S, S, 3]. Same tables, same int32 arithmetic.

    Frames with the same size and identical tables (a video, a data set of 32x32 thumbnails) are run
    together, up to `group` at a time; that only vectorizes, every frame is computed independently."""
    out = np.empty((packed.desc.shape[0], packed.size, packed.size, 3), dtype=np.uint8)  # [B, S, S, 3]
    todo = list(range(packed.desc.shape[0]))
    while todo:
        frame, rows, cols, vfirst = _unpack(packed, todo[0])
        members, frames, rest = [todo[0]], [frame], []
        for b in todo[1:]:
            f, r, c, v = _unpack(packed, b)
            if (len(members) < group and f.shape == frame.shape and v == vfirst and r.ksize == rows.ksize
                    and c.ksize == cols.ksize and all(np.array_equal(x, y) for x, y in zip(
                        (r.start, r.count, r.weights, c.start, c.count, c.weights),
                        (rows.start, rows.count, rows.weights, cols.start, cols.count, cols.weights)))):
                members.append(b)
                frames.append(f)
            else:
                rest.append(b)
        batch = np.stack(frames)  # [N, H, W, 3]
        if vfirst:
            # Vertical first is horizontal first on the transposed frames with the tables swapped.
            out[members] = _two_pass(batch.transpose(0, 2, 1, 3), cols, rows).transpose(0, 2, 1, 3)
        else:
            out[members] = _two_pass(batch, rows, cols)
        todo = rest
    return out


def _two_pass(frames: np.ndarray, rows: AxisTable, cols: AxisTable) -> np.ndarray:
    """Horizontal pass over the source rows the crop needs, clip to uint8, then the vertical pass.
    frames: uint8 [N, H, W, 3] (any strides) -> uint8 [N, len(rows), len(cols), 3]."""
    n, h, w, _ = frames.shape
    r0 = int(rows.start.min())
    r1 = int((rows.start + rows.count).max())
    src = frames[:, r0:r1].astype(np.int32)  # [N, R, W, 3]
    acc = np.full((n, r1 - r0, cols.start.size, 3), HALF, dtype=np.int32)  # [N, R, S, 3]
    tmp = np.empty_like(acc)
    for j in range(cols.ksize):
        # Taps past count have weight 0; clamp their index so the gather stays inside the image.
        idx = np.minimum(cols.start + j, w - 1)  # [S]
        np.take(src, idx, axis=2, out=tmp)
        tmp *= cols.weights[:, j][None, None, :, None]
        acc += tmp
    mid = _clip8(acc)  # [N, R, S, 3] uint8 values in int32
    acc = np.full((n, rows.start.size, cols.start.size, 3), HALF, dtype=np.int32)  # [N, S, S, 3]
    tmp = np.empty_like(acc)
    for j in range(rows.ksize):
        idx = np.minimum(rows.start + j, r1 - 1) - r0  # [S]
        np.take(mid, idx, axis=1, out=tmp)
        tmp *= rows.weights[:, j][None, :, None, None]
        acc += tmp
    return _clip8(acc).astype(np.uint8)


def resize_crop_twin(frame: np.ndarray, resize: int, size: int, filter: str = "bicubic") -> np.ndarray:
    """One frame through the twin: uint8 [H, W, 3] -> uint8 [size, size, 3]."""
    return twin_packed(pack_frames([frame], resize, size, filter))[0]


def resize_twin(frame: np.ndarray, height: int, width: int, filter: str = "bicubic") -> np.ndarray:
    """A plain resize (no crop) with the twin's arithmetic: uint8 [H, W, 3] -> uint8 [height, width, 3].
    Equals PIL.Image.resize((width, height), filter) on the same pixels."""
    _check_frame(frame)
    rows, cols = axis_table(frame.shape[0], height, filter), axis_table(frame.shape[1], width, filter)
    if vertical_first(frame.shape[0], frame.shape[1], height, width):
        return _two_pass(frame[None].transpose(0, 2, 1, 3), cols, rows)[0].transpose(1, 0, 2)
    return _two_pass(frame[None], rows, cols)[0]

"""A decoded video frame -> the model's uint8 [S, S, 3] input, display rotation honoured.

Two scalers, the same geometry as the still-image path (clip_rt.preprocess): the shortest edge to `resize` with the
long edge truncated, then the center crop (or both edges to S for resize mode "squash").
  - "ffmpeg": FFmpeg's scaler (swscale, through frame.reformat) converts YUV to RGB and resizes in one pass on the
    decoded frame, with the manifest's filter (bicubic -> SWS_BICUBIC, ...). Several times faster than going
    through a full-size RGB picture and Pillow on 1080p; not bit-equal to Pillow (another bicubic kernel and
    chroma handling): tests/video/test_video_frames.py measures the embedding cosine against the Pillow path.
  - "pillow": the frame converted to full-size RGB (swscale, no resize), then clip_rt.preprocess.resize_crop: the
    very path a still image takes, so a frame saved as a PNG and a frame read here give the same embedding.
  - "auto": "ffmpeg" where swscale has the manifest's filter, else "pillow" (Pillow's hamming has no swscale twin).
    The converter's `scaler` attribute says which one runs.

Rotation: phones store landscape pixels plus a display matrix; frame.rotation is the counterclockwise angle to
display them at. The picture is rotated (np.rot90, exact) before the crop, so the crop is taken from the picture
as it is displayed. Angles that are not multiples of 90 are rounded to the nearest one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from ..preprocess import PreprocessConfig, crop_box, resize_crop, resized_size

if TYPE_CHECKING:
    import av

SCALERS = ("auto", "ffmpeg", "pillow")
# Pillow filter name (the manifest's interpolation) -> swscale's flag of the same kind, as PyAV names it.
SWSCALE_FILTERS = {"bicubic": "BICUBIC", "bilinear": "BILINEAR", "nearest": "POINT", "lanczos": "LANCZOS",
                   "box": "AREA"}


def quarter_turns(frame: "av.VideoFrame") -> int:
    """frame.rotation (degrees counterclockwise, from the display matrix) as 0..3 quarter turns."""
    degrees = getattr(frame, "rotation", 0) or 0
    return int(round(float(degrees) / 90.0)) % 4


def frame_rgb(frame: "av.VideoFrame") -> np.ndarray:
    """The frame as displayed: full-size RGB uint8 [H, W, 3], rotation applied (what a screenshot would hold)."""
    rgb = frame.to_ndarray(format="rgb24")  # [h, w, 3] uint8, stored orientation
    k = quarter_turns(frame)
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


class FrameConverter:
    """Decoded frames -> uint8 [S, S, 3] crops for the image encoder (see the module doc for the scalers)."""

    def __init__(self, cfg: PreprocessConfig, scaler: str = "auto"):
        if scaler not in SCALERS:
            raise InputError(f"scaler must be one of {', '.join(SCALERS)}, got {scaler!r}")
        if scaler == "ffmpeg" and cfg.interpolation not in SWSCALE_FILTERS:
            raise InputError(f"the ffmpeg scaler has no {cfg.interpolation!r} filter (it has "
                             f"{', '.join(SWSCALE_FILTERS)}); use scaler 'pillow' for this package")
        if scaler == "auto":
            scaler = "ffmpeg" if cfg.interpolation in SWSCALE_FILTERS else "pillow"
        self.cfg = cfg
        self.scaler = scaler  # "ffmpeg" or "pillow": the one that runs
        self._filter = SWSCALE_FILTERS.get(cfg.interpolation)

    def __call__(self, frame: "av.VideoFrame") -> np.ndarray:
        """One frame -> uint8 [S, S, 3]."""
        if self.scaler == "pillow":
            return self.from_rgb(frame_rgb(frame))
        return self._ffmpeg(frame)

    def from_rgb(self, rgb: np.ndarray) -> np.ndarray:
        """A displayed RGB uint8 [H, W, 3] picture -> uint8 [S, S, 3] through Pillow (the still-image path)."""
        from PIL import Image

        return resize_crop(Image.fromarray(rgb, mode="RGB"), self.cfg)

    def _ffmpeg(self, frame: "av.VideoFrame") -> np.ndarray:
        cfg, k = self.cfg, quarter_turns(frame)
        shown_w, shown_h = (frame.height, frame.width) if k % 2 else (frame.width, frame.height)
        if cfg.crops:
            out_w, out_h = resized_size(shown_w, shown_h, cfg.resize)
        else:
            out_w = out_h = cfg.image_size
        stored_w, stored_h = (out_h, out_w) if k % 2 else (out_w, out_h)
        # YUV -> RGB and the resize in one swscale call (it releases the GIL: other stages run meanwhile)
        small: Any = frame.reformat(width=stored_w, height=stored_h, format="rgb24", interpolation=self._filter)
        rgb = small.to_ndarray()  # [stored_h, stored_w, 3] uint8
        if k:
            rgb = np.rot90(rgb, k)  # -> [out_h, out_w, 3], as displayed
        if not cfg.crops:
            return np.ascontiguousarray(rgb)  # [S, S, 3] uint8
        left, top, right, bottom = crop_box(out_w, out_h, cfg.image_size, cfg.crop_rounding)
        return np.ascontiguousarray(rgb[top:bottom, left:right])  # [S, S, 3] uint8

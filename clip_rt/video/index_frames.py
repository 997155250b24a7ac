"""Video files -> the frames an index keeps: sampled by time, near-duplicates skipped, each with a thumbnail.

    reader = VideoFrameReader(model, every=1.0, max_cosine=0.95)
    update_images("media.index", model, ["media/"], videos=reader)   # photos and videos in one index
    reader.read("clip.mp4", thumbnails=True)                          # FrameSet(times, embeddings, thumbnails, ...)

Why one frame a second by default: a shot rarely shows something new within a second, a search answer then lands
within a second of the moment (what the page seeks to), and an hour of video costs 3,600 encoder calls before the
near-duplicate cut (~65 s of ViT-B/32 INT8 on this 2-core host), which keeps indexing well ahead of real time.
Why the cut (distinct_frames, cosine >= 0.95 with the last kept frame of the video is skipped): a static shot or a
slow pan stores one vector instead of one a second, so long talks and dashcam stops do not crowd out the rest
of the index; a cut or a new view is kept. 0.95 suits trained CLIP models, whose frames of one shot sit above it
and whose different scenes sit well below; a model with random weights puts every picture near one direction and
needs a value nearer 1 (the tests use 0.995).

Embeddings come from clip_rt.video.embed.embed_video (the same sampling, scaler and batching as `clip-rt embed` on
a video). The thumbnails of the kept frames come from a second decode of the file that stops after the last kept
frame; on the indexing sizes this runs at a fraction of the encoder's time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import check_real
from ..search.store import DB
from ..search.thumbs import make_thumbnail
from ..search.video_items import FrameSet
from .embed import distinct_frames, embed_video
from .frames import frame_rgb
from .source import VideoError, VideoSource

if TYPE_CHECKING:
    from ..model import ClipModel

DEFAULT_EVERY = 1.0  # seconds between sampled frames (module doc)
DEFAULT_MAX_COSINE = 0.95  # a frame this similar to the last kept one is skipped (module doc)


class VideoFrameReader:
    """The FrameReader (clip_rt.search.video_items) that update_images uses to index video files."""

    def __init__(self, model: "ClipModel", every: float = DEFAULT_EVERY, max_cosine: float = DEFAULT_MAX_COSINE,
                 scaler: str = "auto", batch_size: int = 32):
        check_real(every, "every", 1e-3, 3600.0)
        check_real(max_cosine, "max_cosine", -1.0, 1.0)
        self.model = model
        self.every = float(every)
        self.max_cosine = float(max_cosine)
        self.scaler = scaler
        self.batch_size = batch_size
        self.settings: dict[str, Any] = {"every": self.every, "max_cosine": self.max_cosine}

    def read(self, path: str, thumbnails: bool) -> FrameSet:
        """The kept frames of one video file; VideoError when it cannot be read or holds no frame."""
        emb = embed_video(self.model, path, every=self.every, scaler=self.scaler, batch_size=self.batch_size)
        if not len(emb.times):
            raise VideoError(f"{path}: no video frame could be decoded")
        keep = distinct_frames(emb.embeddings, self.max_cosine)  # int64 [K]
        times = np.asarray(emb.times[keep], dtype=np.float64)  # [K]
        thumbs, (width, height) = frame_pictures(path, times, thumbnails)
        return FrameSet(times, np.asarray(emb.embeddings[keep], dtype=np.float32), thumbs, width, height,
                        sampled=len(emb.times))


def reader_for(model: "ClipModel", index: str | os.PathLike | None = None, every: float | None = None,
               max_cosine: float | None = None, batch_size: int = 32) -> VideoFrameReader:
    """The reader for an update of `index` (None or absent: a new one): each setting left None is the index's
    recorded one, else the default. update_images refuses settings other than the recorded ones."""
    recorded: dict[str, Any] = {}
    if index is not None and (Path(index) / DB).is_file():
        from ..search.store import Store

        store = Store.open(Path(index))
        try:
            recorded = dict(store.meta.get("video") or {})
        finally:
            store.close()
    return VideoFrameReader(model, every=recorded.get("every", DEFAULT_EVERY) if every is None else every,
                            max_cosine=recorded.get("max_cosine", DEFAULT_MAX_COSINE) if max_cosine is None
                            else max_cosine, batch_size=batch_size)


def frame_pictures(path: str | os.PathLike, times: np.ndarray, thumbnails: bool = True
                   ) -> tuple[list[bytes | None], tuple[int, int]]:
    """JPEG thumbnails of the frames at `times` (presentation times as embed_video reported them) and the picture
    size as displayed. Decodes the file once more, up to the last wanted time."""
    from PIL import Image

    wanted = {round(float(t), 6): i for i, t in enumerate(times)}
    out: list[bytes | None] = [None] * len(times)
    size = (0, 0)
    last = max(wanted) if wanted else 0.0
    with VideoSource(path) as src:
        for f in src.frames():
            t = round(f.time, 6)
            if t > last + 1e-6 and size != (0, 0):
                break
            i = wanted.get(t)
            if size == (0, 0) or (i is not None and thumbnails):
                rgb = frame_rgb(f.frame)  # [H, W, 3] uint8 as displayed
                size = (int(rgb.shape[1]), int(rgb.shape[0]))
                if i is not None and thumbnails:
                    out[i] = make_thumbnail(Image.fromarray(rgb))
            if not thumbnails and size != (0, 0):
                break
    if thumbnails and any(x is None for x in out):  # a frame's time not met again: cannot happen on one file
        missing = [float(times[i]) for i, x in enumerate(out) if x is None]
        raise VideoError(f"{path}: frames at {missing[:3]} s were not decoded again for their thumbnails")
    return out, size


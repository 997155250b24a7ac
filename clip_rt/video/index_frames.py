"""Video files -> the frames an index keeps: sampled by time, near-duplicates skipped, each with a thumbnail.

    reader = VideoFrameReader(model, every=1.0, max_cosine=0.95)
    update_images("media.index", model, ["media/"], videos=reader)   # photos and videos in one index
    reader.read("clip.mp4", thumbnails=True)                          # FrameSet(times, embeddings, thumbnails, ...)

Why one frame a second by default: a shot rarely shows something new within a second, a search answer then lands
within a second of the moment (what the page seeks to), and an hour of video costs 3,600 encoder calls before the
near-duplicate cut (~65 s of ViT-B/32 INT8 at issue 28's ~18 ms a frame), which keeps indexing well ahead of real
time. Why the cut (distinct_frames, cosine >= 0.95 with the last kept frame of the video is skipped): a static shot
or a slow pan stores one vector instead of one a second, so long talks and dashcam stops do not crowd out the rest
of the index; a cut or a new view is kept. 0.95 is distinct_frames' default, meant for trained CLIP models (not
measured here: this host has no trained weights); a model with random weights puts every picture near one direction
and needs a value nearer 1 (the tests and benchmarks/video_index.py use 0.995).

One decode per video: clip_rt.video.embed.iter_frame_batches samples and converts the frames (the same sampling,
scaler and batching as embed_video, so the stored vectors are `clip-rt embed`'s), and the converter handed to it
also makes each sampled frame's thumbnail from the decoded picture; the cut runs batch by batch, so only the kept
frames' thumbnails are held (an hour of 1080p is decoded once, its ~108,000 frames at ~4 ms each, the dominant cost).
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import check_real
from ..search.store import DB
from ..search.thumbs import make_thumbnail
from ..search.video_items import FrameSet
from .embed import distinct_frames, iter_frame_batches
from .frames import FrameConverter, frame_rgb
from .source import VideoError

if TYPE_CHECKING:
    from ..model import ClipModel
    from ..preprocess import PreprocessConfig

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
        """The kept frames of one video file; VideoError when it cannot be read or holds no frame. One decode:
        the sampled frames' crops are encoded batch by batch (decoding runs one batch ahead on a thread), the
        near-duplicate cut runs as they come, and only the kept frames' thumbnails are held."""
        shots = _Thumbnailer(self.model.preprocess_config, self.scaler, thumbnails)
        times: list[float] = []
        embs: list[np.ndarray] = []
        thumbs: list[bytes | None] = []
        last: np.ndarray | None = None  # [D] the last kept frame's embedding
        sampled = 0
        for batch in iter_frame_batches(path, shots, every=self.every, batch_size=self.batch_size):
            emb = self.model.encode_images(batch.crops, batch_size=self.batch_size)  # [b, S, S, 3] -> [b, D]
            pictures = [shots.take() for _ in batch.times]  # the thumbnails of this batch, in order
            sampled += len(batch.times)
            if last is None:
                keep = distinct_frames(emb, self.max_cosine)  # int64 [k]
            else:  # the previous batch's last kept frame leads (always kept), so the cut runs on across batches
                keep = distinct_frames(np.vstack([last[None], emb]), self.max_cosine)[1:] - 1
            for i in keep:
                times.append(float(batch.times[i]))
                embs.append(emb[i])
                thumbs.append(pictures[i])
            if len(keep):
                last = emb[keep[-1]]
        if not sampled:
            raise VideoError(f"{path}: no video frame could be decoded")
        width, height = shots.size
        return FrameSet(np.asarray(times, dtype=np.float64), np.stack(embs).astype(np.float32), thumbs, width,
                        height, sampled=sampled)


class _Thumbnailer(FrameConverter):
    """A FrameConverter that also keeps, in sampling order, a JPEG thumbnail of each frame it converts (from the
    full-size picture as displayed) and the picture's size. It runs on iter_frame_batches' decoding thread; the
    consumer takes the thumbnails in the same order (a deque: one thread appends, the other pops)."""

    def __init__(self, cfg: "PreprocessConfig", scaler: str, thumbnails: bool):
        super().__init__(cfg, scaler)
        self.thumbnails = thumbnails
        self.size = (0, 0)  # (width, height) as displayed, from the first frame
        self._made: "deque[bytes | None]" = deque()

    def __call__(self, frame: Any) -> np.ndarray:
        crop = super().__call__(frame)  # [S, S, 3] uint8, exactly what embed_video encodes
        if self.thumbnails or self.size == (0, 0):
            from PIL import Image

            rgb = frame_rgb(frame)  # [H, W, 3] uint8 as displayed
            self.size = (int(rgb.shape[1]), int(rgb.shape[0]))
            self._made.append(make_thumbnail(Image.fromarray(rgb)) if self.thumbnails else None)
        else:
            self._made.append(None)
        return crop

    def take(self) -> bytes | None:
        return self._made.popleft()


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


"""Video files -> frame embeddings and labels with timestamps (what `clip-rt classify` / `embed` / `index` call).

    emb = embed_video(model, "clip.mp4", every=1.0)        # VideoEmbeddings(times [N], pts, embeddings [N, D])
    embs, errors = embed_video_files(model, ["a.mp4", "b.mov"], every=1.0)  # bad files reported, not raised
    preds = classify_video(clf, "clip.mp4", every=0.5)     # [FramePrediction(time, labels)]
    segments_of(preds)                                     # [Segment(label, start, end, frames, score)]
    emb.embeddings[distinct_frames(emb.embeddings)]        # near-duplicate frames skipped (for an index)

Frames are sampled by presentation time (clip_rt.video.sample), converted with clip_rt.video.frames, and encoded in
batches; decoding and scaling of batch k+1 run on a thread while batch k is encoded. Every frame of the file is
decoded (H.264 frames depend on each other); only the sampled ones are scaled and encoded. Unlike the live pipeline
(clip_rt.video.live), nothing is ever dropped here.
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import ImageError, check_int, check_real
from ..files import VIDEO_EXTENSIONS, is_video_path
from .events import Segment, segments
from .frames import FrameConverter
from .sample import Sampler
from .source import SourceOptions, VideoError, VideoSource

if TYPE_CHECKING:
    from ..model import ClipModel
    from ..zeroshot import Prediction, ZeroShotClassifier

__all__ = ["VIDEO_EXTENSIONS", "FrameBatch", "FramePrediction", "VideoEmbeddings", "classify_video", "distinct_frames",
           "embed_video", "embed_video_files", "is_video_path", "iter_crop_batches", "iter_frame_batches", "segments_of"]


@dataclass(frozen=True)
class VideoEmbeddings:
    """The sampled frames of one video, embedded."""

    source: str
    times: np.ndarray  # [N] float64, presentation time (s) of each sampled frame
    embeddings: np.ndarray  # [N, D] float32, L2-normalized
    scaler: str  # "ffmpeg" or "pillow": how frames became model inputs
    pts: tuple[int | None, ...] = ()  # [N] each frame's own timestamp in time_base units (None: the frame had none)
    time_base: str | None = None  # the stream's time base as a fraction, e.g. "1/90000" (None: no frame)


@dataclass(frozen=True)
class FramePrediction:
    time: float  # presentation time (s)
    labels: list["Prediction"]  # top labels, best first, scored as the package says

    def to_json(self) -> dict[str, Any]:
        return {"time": self.time, "labels": [{"label": p.label, "score": p.score} for p in self.labels]}


@dataclass(frozen=True)
class FrameBatch:
    """Consecutive sampled frames of one source, converted to model inputs."""

    times: np.ndarray  # [b] float64, presentation time (s) from the start of the source
    pts: tuple[int | None, ...]  # [b] the frames' own timestamps, in time_base units (None where a frame has none)
    time_base: str | None  # the stream's time base, e.g. "1/90000"
    crops: np.ndarray  # [b, S, S, 3] uint8


_END = object()


def iter_crop_batches(source: str | os.PathLike, converter: FrameConverter, *, every: float | None = None,
                      fps: float | None = None, batch_size: int = 32, options: SourceOptions = SourceOptions()
                      ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Sampled frames as (times [b] float64, crops [b, S, S, 3] uint8) batches (iter_frame_batches without the
    timestamps)."""
    for batch in iter_frame_batches(source, converter, every=every, fps=fps, batch_size=batch_size, options=options):
        yield batch.times, batch.crops


def iter_frame_batches(source: str | os.PathLike, converter: FrameConverter, *, every: float | None = None,
                       fps: float | None = None, batch_size: int = 32, options: SourceOptions = SourceOptions()
                       ) -> Iterator[FrameBatch]:
    """Sampled frames as FrameBatch (times, pts, crops) batches, produced on a background thread one batch ahead.
    Raises VideoError (from the thread) where the source breaks."""
    check_int(batch_size, "batch_size")
    keep = Sampler(every, fps)
    src = VideoSource(source, options)
    src.open()  # errors at open surface here, on the caller's thread
    out: "queue.Queue[Any]" = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        times: list[float] = []
        pts: list[int | None] = []
        crops: list[np.ndarray] = []
        time_base: str | None = None
        try:
            for f in src.frames():
                if stop.is_set():
                    return
                if not keep(f.time):
                    continue
                times.append(f.time)
                pts.append(None if f.frame.pts is None else int(f.frame.pts))
                if time_base is None and f.frame.time_base is not None:
                    time_base = str(f.frame.time_base)
                crops.append(converter(f.frame))
                if len(crops) == batch_size:
                    if not put(FrameBatch(np.array(times), tuple(pts), time_base, np.stack(crops))):
                        return
                    times, pts, crops = [], [], []
            if crops:
                put(FrameBatch(np.array(times), tuple(pts), time_base, np.stack(crops)))
            put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put(e)
        finally:
            src.close()

    worker = threading.Thread(target=produce, name="clip-rt-video-decode", daemon=True)
    worker.start()
    try:
        while True:
            item = out.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=10)


def embed_video(model: "ClipModel", source: str | os.PathLike, *, every: float | None = None,
                fps: float | None = None, scaler: str = "auto", batch_size: int = 32,
                options: SourceOptions = SourceOptions()) -> VideoEmbeddings:
    """A video file (or a finite stream) -> its sampled frames' embeddings with their times.

    every / fps: sample one frame every `every` seconds or `fps` frames a second by presentation time (neither:
    every frame). scaler: "auto", "ffmpeg" or "pillow" (clip_rt.video.frames). VideoError if it cannot be read."""
    converter = FrameConverter(model.preprocess_config, scaler)
    times: list[np.ndarray] = []  # per batch: [b] float64
    embs: list[np.ndarray] = []  # per batch: [b, D] float32
    pts: list[int | None] = []
    time_base: str | None = None
    for batch in iter_frame_batches(source, converter, every=every, fps=fps, batch_size=batch_size,
                                    options=options):
        times.append(batch.times)
        pts.extend(batch.pts)
        time_base = time_base or batch.time_base
        embs.append(model.encode_images(batch.crops, batch_size=batch_size))  # [b, S, S, 3] uint8 -> [b, D]
    return VideoEmbeddings(os.fspath(source),
                           np.concatenate(times) if times else np.zeros(0, np.float64),
                           np.concatenate(embs) if embs else np.zeros((0, model.embed_dim), np.float32),
                           converter.scaler, tuple(pts), time_base)


def embed_video_files(model: "ClipModel", videos: Sequence[str | os.PathLike], *, every: float | None = None,
                      fps: float | None = None, scaler: str = "auto", batch_size: int = 32,
                      options: SourceOptions = SourceOptions(),
                      progress: Callable[[int, int], None] | None = None
                      ) -> tuple[list[VideoEmbeddings], list[ImageError]]:
    """Video files -> (the embedded ones, in order; an ImageError per file that cannot be read), as
    ClipModel.encode_file_list does for photos: a broken video (not a video, truncated, unreadable) is reported
    with its reason and the others go on; none of a broken video's frames is kept. progress(files done, files) is
    called after each file."""
    done: list[VideoEmbeddings] = []
    errors: list[ImageError] = []
    for k, video in enumerate(videos):
        name = os.fspath(video)
        try:
            done.append(embed_video(model, name, every=every, fps=fps, scaler=scaler, batch_size=batch_size,
                                    options=options))
        except VideoError as e:
            errors.append(ImageError.of(name, e))
        if progress is not None:
            progress(k + 1, len(videos))
    return done, errors


def classify_video(classifier: "ZeroShotClassifier", source: str | os.PathLike, *, every: float | None = None,
                   fps: float | None = None, top_k: int | None = 5, scaler: str = "auto", batch_size: int = 32,
                   options: SourceOptions = SourceOptions()) -> list[FramePrediction]:
    """A video file -> per sampled frame, its time and top_k labels (the classifier's scores)."""
    emb = embed_video(classifier.model, source, every=every, fps=fps, scaler=scaler, batch_size=batch_size,
                      options=options)
    preds = classifier.predict_embeddings(emb.embeddings, top_k) if len(emb.times) else []
    return [FramePrediction(float(t), p) for t, p in zip(emb.times, preds)]


def distinct_frames(embeddings: np.ndarray, max_cosine: float = 0.95) -> np.ndarray:
    """Indices of the frames to keep in an index: the first, then each frame whose cosine with the last kept one is
    below max_cosine (a static shot stores one vector, a pan or a cut stores more). embeddings: [N, D] normalized.
    Returns int64 [K], ascending."""
    check_real(max_cosine, "max_cosine", -1.0, 1.0)
    keep: list[int] = []
    for i in range(len(embeddings)):
        if not keep or float(embeddings[i] @ embeddings[keep[-1]]) < max_cosine:
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def segments_of(predictions: list[FramePrediction]) -> list[Segment]:
    """Consecutive frames with the same top label merged into time ranges (`--segments`)."""
    return segments([p.time for p in predictions], [p.labels[0].label for p in predictions],
                    [p.labels[0].score for p in predictions])

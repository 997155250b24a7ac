"""Video files among the inputs of `clip-rt classify` and `clip-rt embed`: the flags (--every, --fps, --scaler,
--segments), telling videos from photos, and one JSON line per sampled frame (or per segment).

A video is told by its file name (clip_rt.files.VIDEO_EXTENSIONS), named or found in a folder. Frames are sampled by
presentation time (clip_rt.video.sample) and encoded as the still images are (clip_rt.video.embed). A video that
cannot be read (not a video, truncated, unreadable) becomes one error entry, like a bad photo: none of its frames
are printed or written (a file is either in the results or in the errors), and the other inputs go on.

Lines (stdout, one JSON object each):
    classify: {"file", "time", "pts", "time_base", "labels": [{"label", "score"}, ...]}
    classify --segments: {"file", "start", "end", "label", "score", "frames"}
    embed: {"file", "time", "pts", "time_base", "output", "row"} (the row of OUTPUT holding the frame's embedding)
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from ..errors import ImageError
    from ..model import ClipModel
    from ..video.embed import VideoEmbeddings
    from ..zeroshot import ZeroShotClassifier

SCALER_CHOICES = ("auto", "ffmpeg", "pillow")  # clip_rt.video.frames.SCALERS, spelled out: parsing imports no video
DEFAULT_EVERY = 1.0  # seconds between sampled frames when neither --every nor --fps is given


def add_video_args(p: argparse.ArgumentParser, segments: bool) -> None:
    """--every / --fps (one of them), --scaler, and with segments=True (classify) --segments."""
    from .common import positive_float

    g = p.add_argument_group("video files", "video files among the inputs (.mp4, .mov, .mkv, .webm, ...; named or "
                                            "found in folders) give one JSON line per sampled frame on stdout")
    rate = g.add_mutually_exclusive_group()
    rate.add_argument("--every", type=positive_float, default=None, metavar="SECONDS",
                      help=f"sample the first frame at or after every multiple of SECONDS of presentation time "
                           f"(default: {DEFAULT_EVERY:g} s when neither --every nor --fps is given: labels change "
                           f"with shots, which last seconds, and every frame of a 30 fps video would cost 30x the "
                           f"encoding for near-identical frames)")
    rate.add_argument("--fps", type=positive_float, default=None, metavar="N",
                      help="sample N frames a second of presentation time (the same as --every 1/N)")
    g.add_argument("--scaler", choices=SCALER_CHOICES, default="auto",
                   help="frame -> model input: FFmpeg's scaler on the decoded frame, Pillow (the still-image path "
                        "itself), or auto (FFmpeg where it has the package's filter)")
    if segments:
        g.add_argument("--segments", action=argparse.BooleanOptionalAction, default=False,
                       help="print time ranges instead of frames: consecutive sampled frames with the same top label "
                            "merged into {file, start, end, label, score (the mean top score), frames}")


def split_videos(files: Sequence[str]) -> tuple[list[str], list[str]]:
    """Files as listed -> (photos, videos), each in listing order; videos are told by their file name."""
    from ..files import is_video_path

    videos = [f for f in files if is_video_path(f)]
    chosen = set(videos)
    return [f for f in files if f not in chosen], videos


def check_video_flags(args: argparse.Namespace, videos: Sequence[str], errors: Sequence["ImageError"] = ()) -> None:
    """--every / --fps / --segments with no video among the inputs (found, or named and unreadable) is an InputError;
    with videos, the video extra must be installed (BackendUnavailable with the hint), checked before any work."""
    from ..errors import InputError
    from ..files import is_video_path

    given = [f"--{name}" for name in ("every", "fps", "segments") if getattr(args, name, None)]
    if given and not videos and not any(is_video_path(e.file) for e in errors):
        raise InputError(f"{' and '.join(given)} sample video files, and none of the inputs is one (videos are told by "
                         f"their file name: .mp4, .mov, .mkv, .webm, ...)")
    if videos:
        from ..video.source import require_av

        require_av()


def sampling(args: argparse.Namespace) -> tuple[float | None, float | None]:
    """(every, fps) as given, or (DEFAULT_EVERY, None) when neither is."""
    if args.every is None and args.fps is None:
        return DEFAULT_EVERY, None
    return args.every, args.fps


def _rounded(t: float) -> float:
    return round(float(t), 6)  # microseconds: far below a frame interval, and no 0.30000000000000004 in the lines


def frame_keys(emb: "VideoEmbeddings", i: int) -> dict[str, Any]:
    """The fields that name sampled frame i of a video: file, time (s), pts and time_base."""
    pts = emb.pts[i] if i < len(emb.pts) else None
    return {"file": emb.source, "time": _rounded(emb.times[i]), "pts": pts, "time_base": emb.time_base}


def embed_each(model: "ClipModel", videos: Sequence[str], args: argparse.Namespace,
               progress: Callable[[int, int], None] | None = None
               ) -> tuple[list["VideoEmbeddings"], list["ImageError"]]:
    """Each video's sampled frames embedded, in order; a video that cannot be read is an ImageError entry (the
    reason without the file name, as a bad photo's), and the rest go on. progress(videos done, videos) after each."""
    from ..errors import ImageError
    from ..video.embed import embed_video
    from ..video.source import VideoError

    every, fps = sampling(args)
    done: list["VideoEmbeddings"] = []
    errors: list[ImageError] = []
    for k, video in enumerate(videos):
        try:
            done.append(embed_video(model, video, every=every, fps=fps, scaler=args.scaler,
                                    batch_size=args.batch_size))
        except VideoError as e:
            reason = str(e)
            errors.append(ImageError(video, reason.removeprefix(f"{video}: ")))
        if progress is not None:
            progress(k + 1, len(videos))
    return done, errors


def print_lines(lines: Sequence[dict[str, Any]]) -> None:
    for line in lines:
        print(json.dumps(line, ensure_ascii=False))
    sys.stdout.flush()


def classify_lines(clf: "ZeroShotClassifier", emb: "VideoEmbeddings", top_k: int, segments: bool
                   ) -> list[dict[str, Any]]:
    """One video's frames -> its JSON lines: one per frame (top_k labels), or with segments one per time range."""
    from ..video.embed import FramePrediction, segments_of

    preds = clf.predict_embeddings(emb.embeddings, top_k) if len(emb.times) else []
    if segments:
        ranges = segments_of([FramePrediction(float(t), p) for t, p in zip(emb.times, preds)])
        return [{"file": emb.source, "start": _rounded(s.start), "end": _rounded(s.end), "label": s.label,
                 "score": s.score, "frames": s.frames} for s in ranges]
    return [{**frame_keys(emb, i), "labels": [{"label": p.label, "score": p.score} for p in labels]}
            for i, labels in enumerate(preds)]


def classify_videos(clf: "ZeroShotClassifier", videos: Sequence[str], args: argparse.Namespace,
                    progress: Callable[[int, int], None] | None = None) -> tuple[int, list["ImageError"]]:
    """Classify each video and print its lines as soon as it is done. Returns (videos classified, errors)."""
    printed = 0
    errors: list["ImageError"] = []
    for k, video in enumerate(videos):  # one at a time: a long video's lines come before the next one is decoded
        done, bad = embed_each(clf.model, [video], args)
        errors += bad
        for emb in done:
            print_lines(classify_lines(clf, emb, args.top_k, args.segments))
            printed += 1
        if progress is not None:
            progress(k + 1, len(videos))
    return printed, errors


def embed_rows(embs: Sequence["VideoEmbeddings"], output: str, first_row: int
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Frames appended to OUTPUT after `first_row` rows -> (their entries in the .files.json list: file, time, pts,
    time_base; their stdout lines: the same plus output and row)."""
    entries: list[dict[str, Any]] = []
    lines: list[dict[str, Any]] = []
    row = first_row
    for emb in embs:
        for i in range(len(emb.times)):
            keys = frame_keys(emb, i)
            entries.append(keys)
            lines.append({**keys, "output": output, "row": row})
            row += 1
    return entries, lines

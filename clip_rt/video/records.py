"""Video results as JSON-ready records, one per sampled frame or per segment: what `clip-rt classify` and
`clip-rt embed` print for video files (one JSON line each).

    frame_record(emb, i)                     # {"file", "time", "pts", "time_base"}: names sampled frame i
    classify_records(clf, emb, top_k=5)      # + "labels": [{"label", "score"}] per frame
    classify_records(clf, emb, segments=True)  # {"file", "start", "end", "label", "score", "frames"} per time range
    embed_records(embs, "out.npy", first_row=10)  # (.files.json entries, records + "output", "row")

time: seconds from the start of the video (rounded to the microsecond); pts: the frame's own timestamp in units of
time_base (a fraction such as "1/90000"), so a frame can be found again in the file exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from ..zeroshot import ZeroShotClassifier
    from .embed import VideoEmbeddings


def _rounded(t: float) -> float:
    return round(float(t), 6)  # microseconds: far below a frame interval, and no 0.30000000000000004 in the lines


def frame_record(emb: "VideoEmbeddings", i: int) -> dict[str, Any]:
    """The fields that name sampled frame i of a video: file, time (s), pts and time_base."""
    pts = emb.pts[i] if i < len(emb.pts) else None
    return {"file": emb.source, "time": _rounded(emb.times[i]), "pts": pts, "time_base": emb.time_base}


def classify_records(clf: "ZeroShotClassifier", emb: "VideoEmbeddings", top_k: int | None = 5,
                     segments: bool = False) -> list[dict[str, Any]]:
    """One video's frames -> one record per frame with its top_k labels (best first, scored as the package says),
    or with segments=True one per time range of consecutive frames sharing a top label (score: the mean top score)."""
    from .embed import FramePrediction, segments_of

    preds = clf.predict_embeddings(emb.embeddings, top_k) if len(emb.times) else []
    if segments:
        ranges = segments_of([FramePrediction(float(t), p) for t, p in zip(emb.times, preds)])
        return [{"file": emb.source, "start": _rounded(s.start), "end": _rounded(s.end), "label": s.label,
                 "score": s.score, "frames": s.frames} for s in ranges]
    return [{**frame_record(emb, i), "labels": [{"label": p.label, "score": p.score} for p in labels]}
            for i, labels in enumerate(preds)]


def embed_records(embs: Sequence["VideoEmbeddings"], output: str, first_row: int
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Videos' frames stored in `output` after its first `first_row` rows -> (their entries for the .files.json
    list: file, time, pts, time_base; their records: the same plus output and row)."""
    entries: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    row = first_row
    for emb in embs:
        for i in range(len(emb.times)):
            keys = frame_record(emb, i)
            entries.append(keys)
            records.append({**keys, "output": output, "row": row})
            row += 1
    return entries, records

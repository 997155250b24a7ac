"""Labels over time: threshold events with hysteresis (live alerts), and segments (the same top label merged).

    det = EventDetector(["dog", "cat"], threshold=0.6, release=0.5)
    det.update(t, scores)   # -> [Event("start", "dog", t, 0.71)] the first time dog's score reaches 0.6
    det.finish(t_end)       # -> "end" events for labels still on

    segments(times, top_labels, top_scores)   # -> [Segment(label, start, end, frames, score)]

Hysteresis: a label turns on when its score reaches `threshold` and off only when it falls below `release`
(< threshold), so a score wobbling around the threshold gives one event, not one per frame.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import InputError

EVENT_KINDS = ("start", "end")


@dataclass(frozen=True)
class Event:
    """A label turning on ("start": its score reached the threshold) or off ("end": it fell below the release)."""

    kind: str  # "start" | "end"
    label: str
    time: float  # presentation time (s) of the frame that crossed
    score: float  # that frame's score for the label (for an end at the end of the source: the last score)

    def to_json(self) -> dict[str, Any]:
        return {"event": self.kind, **{k: v for k, v in asdict(self).items() if k != "kind"}}


class EventDetector:
    """Per-label on/off state over a stream of score vectors, with hysteresis.

    labels: the C label names, in score order. threshold: the score at which a label turns on. release: the score
    below which it turns off again (default threshold - 0.1, at least 0); must be <= threshold.
    """

    def __init__(self, labels: Sequence[str], threshold: float, release: float | None = None):
        if not labels:
            raise InputError("no labels to watch")
        if not (isinstance(threshold, (int, float)) and math.isfinite(threshold)):
            raise InputError(f"threshold must be a finite number, got {threshold!r}")
        release = max(0.0, threshold - 0.1) if release is None else release
        if not (isinstance(release, (int, float)) and math.isfinite(release) and release <= threshold):
            raise InputError(f"release ({release!r}) must be a number <= threshold ({threshold})")
        self.labels = list(labels)
        self.threshold = float(threshold)
        self.release = float(release)
        self.on = np.zeros(len(self.labels), dtype=bool)  # [C] label currently on
        self._last = np.zeros(len(self.labels), dtype=np.float32)  # [C] latest scores

    def update(self, t: float, scores: np.ndarray) -> list[Event]:
        """One frame's scores [C] at time t -> the events it causes (possibly none), in label order."""
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)  # [C]
        if scores.shape[0] != len(self.labels):
            raise InputError(f"got {scores.shape[0]} scores for {len(self.labels)} labels")
        starts = ~self.on & (scores >= self.threshold)
        ends = self.on & (scores < self.release)
        self.on = (self.on | starts) & ~ends
        self._last = scores
        return [Event("start" if starts[i] else "end", self.labels[i], float(t), float(scores[i]))
                for i in np.flatnonzero(starts | ends)]

    def finish(self, t: float) -> list[Event]:
        """End events for every label still on (the source ended at time t)."""
        events = [Event("end", self.labels[i], float(t), float(self._last[i])) for i in np.flatnonzero(self.on)]
        self.on[:] = False
        return events


@dataclass(frozen=True)
class Segment:
    """Consecutive sampled frames that share a top label, as a time range."""

    label: str
    start: float  # time (s) of the first frame
    end: float  # time (s) of the next segment's first frame, or for the last one its last frame plus one step
    frames: int  # sampled frames merged
    score: float  # mean top score over those frames

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def segments(times: Sequence[float], labels: Sequence[str], scores: Sequence[float] | None = None) -> list[Segment]:
    """Sampled frames (times ascending, the top label of each, optionally its score) -> segments.

    The last segment ends one median frame step after its last frame (a single frame: at that frame's time)."""
    if len(times) != len(labels) or (scores is not None and len(scores) != len(times)):
        raise InputError(f"times ({len(times)}), labels ({len(labels)}) and scores must have one entry per frame")
    if not len(times):
        return []
    step = float(np.median(np.diff(np.asarray(times, dtype=np.float64)))) if len(times) > 1 else 0.0
    vals = np.ones(len(times)) if scores is None else np.asarray(scores, dtype=np.float64)
    out: list[Segment] = []
    first = 0
    for i in range(1, len(times) + 1):
        if i == len(times) or labels[i] != labels[first]:
            end = float(times[i]) if i < len(times) else float(times[i - 1]) + step
            out.append(Segment(labels[first], float(times[first]), end, i - first, float(vals[first:i].mean())))
            first = i
    return out

"""Sampling frames by presentation time: one frame every N seconds (or N frames a second), whatever the frame rate.

    keep = Sampler(every=0.5)
    [f for f in frames if keep(f.time)]   # the first frame at or after 0, 0.5, 1.0, ... s

Times, not frame counts, decide: a variable-frame-rate phone video and a 25 and a 60 fps file are sampled at the
same moments. A gap longer than the interval (a dropped stretch of a stream) yields the next frame after it, and
the grid stays anchored at whole multiples of the interval.
"""

from __future__ import annotations

import math

from ..errors import InputError

# Timestamps are fractions in the container's time base: a frame meant for 1.0 s may read 0.99999999. A frame this
# close before a grid point counts as at it (far below any real frame interval).
EPSILON = 1e-4


def interval(every: float | None = None, fps: float | None = None) -> float | None:
    """Seconds between kept frames from `every` (seconds) or `fps` (frames a second); None keeps every frame."""
    if every is not None and fps is not None:
        raise InputError("give every (seconds between frames) or fps (frames a second), not both")
    if every is not None:
        if not (isinstance(every, (int, float)) and math.isfinite(every) and every > 0):
            raise InputError(f"every must be a number of seconds > 0, got {every!r}")
        return float(every)
    if fps is not None:
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise InputError(f"fps must be a number of frames a second > 0, got {fps!r}")
        return 1.0 / float(fps)
    return None


class Sampler:
    """Called with each frame's time in order; True for the frames to keep.

    Keeps the first frame at or after each multiple of the interval (0, every, 2 * every, ...). Not thread-safe:
    one sampler per source.
    """

    def __init__(self, every: float | None = None, fps: float | None = None):
        self.interval = interval(every, fps)
        self._next: float | None = None  # the next grid point to fill

    def __call__(self, t: float) -> bool:
        step = self.interval
        if step is None:
            return True
        if self._next is not None and t < self._next - EPSILON:
            return False
        self._next = (math.floor((t + EPSILON) / step) + 1) * step
        return True

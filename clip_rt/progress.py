"""Progress on stderr for long work (embedding thousands of prompts or images).

    report = progress_callback("text embeddings", "prompt")
    report(64, 80_000)          # called after each batch with (done, total)

A tqdm bar when tqdm is installed (it is optional: the export and bench extras bring it), else a count line at
most every few seconds. Either appears only once the work has run for `delay` seconds, so short work (a handful
of labels, a cache hit) prints nothing.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

ProgressCallback = Callable[[int, int], None]

DELAY_S = 1.0  # nothing is shown for work that ends sooner than this
COUNT_EVERY_S = 2.0  # without tqdm: seconds between count lines


def progress_callback(desc: str, unit: str, delay: float | None = None) -> ProgressCallback:
    """A progress(done, total) callback writing to sys.stderr (as it is at each call). desc: what is being done
    ("text embeddings"); unit: one item ("prompt", "img"); delay: seconds before anything shows (None: DELAY_S).
    The bar closes when done reaches total."""
    delay = DELAY_S if delay is None else delay
    try:
        from tqdm import tqdm  # type: ignore[import-untyped]
    except ImportError:
        return _counter(desc, unit, delay)
    state: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        bar = state.get("bar")
        if bar is None or bar.total != total:
            if bar is not None:
                bar.close()
            # tqdm's own delay: the bar is drawn only once `delay` seconds have passed since it was created.
            bar = state["bar"] = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr,
                                      delay=delay, leave=True)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            state.pop("bar")
    return update


def _counter(desc: str, unit: str, delay: float) -> ProgressCallback:
    """Without tqdm: `DESC: DONE/TOTAL UNITs` lines, the first after `delay` s, then every COUNT_EVERY_S s and at
    the end (if any line was printed)."""
    start: float | None = None  # when the current run of calls began
    last: float | None = None  # when a line was last printed (None: none yet)

    def count(done: int, total: int) -> None:
        nonlocal start, last
        now = time.monotonic()
        if start is None:
            start = now
        due = now - start >= delay and (last is None or now - last >= COUNT_EVERY_S)
        if due or (last is not None and done >= total):
            last = now
            print(f"{desc}: {done}/{total} {unit}s", file=sys.stderr, flush=True)
        if done >= total:
            start = last = None
    return count

"""Timing for `clip-rt bench`: the timer (perf_counter, or CUDA events on a GPU) and the interleaved schedule.

Every job (one row: a backend's call at one batch and length) gets its warm-up calls, then timed calls in blocks,
the jobs taking turns round-robin with the starting one rotating each round (see BenchConfig.block_s, settle_s).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .config import BenchConfig
from .workloads import Key


@dataclass
class Job:
    """One row being measured: its timed call and the samples so far."""

    key: Key
    call: Callable[[int], Any]
    warm: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    target: int = 0  # timed calls wanted
    block: int = 1  # timed calls per turn


class Timer:
    """Seconds taken by fn(i). perf_counter on CPU; CUDA events on a GPU."""

    def __init__(self, device: str):
        self.name = "perf_counter"
        self._torch: Any = None
        if device != "cpu":
            try:
                import torch as torch_module
            except ImportError:
                torch_module = None  # type: ignore[assignment]
            if torch_module is not None and torch_module.cuda.is_available():
                self._torch = torch_module
                self.name = "cuda-event"
            else:
                print("clip-rt bench: torch with CUDA is not installed, so GPU rows are timed with perf_counter "
                      "(the calls return host arrays, so this still covers the whole call)", file=sys.stderr)

    def __call__(self, fn: Callable[[int], Any], i: int) -> float:
        if self._torch is None:
            t0 = time.perf_counter()
            fn(i)
            return time.perf_counter() - t0
        cuda = self._torch.cuda
        start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
        cuda.synchronize()
        start.record()
        fn(i)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3


def _rotated(jobs: list[Job], r: int) -> list[Job]:
    k = r % len(jobs)
    return jobs[k:] + jobs[:k]


def run_interleaved(jobs: list[Job], timer: Timer, cfg: BenchConfig) -> None:
    """Warm-up, then timed calls in blocks, round-robin over the jobs, rotating who goes first each round.

    Before each block the harness sleeps cfg.settle_s: ONNX Runtime's (and OpenMP's) worker threads keep
    spinning for a while after a call (measured here: ~45 ms of CPU after an ORT run), and on a small CPU
    they would slow down whichever backend runs next. Within a block a backend runs back to back (steady
    state, as in a server); a block lasts about cfg.block_s."""
    for w_job in _rotated(jobs, 0):
        time.sleep(cfg.settle_s)
        for w in range(cfg.warmup):
            w_job.warm.append(timer(w_job.call, w))
    for job in jobs:
        if cfg.iters is None and not job.warm:  # no warm-up: the first timed call is the estimate
            time.sleep(cfg.settle_s)
            job.times.append(timer(job.call, 0))
        samples = job.warm or job.times
        estimate = float(np.median(samples)) if samples else None
        if cfg.iters is not None:
            job.target = cfg.iters
        else:
            assert estimate is not None
            job.target = int(min(cfg.max_iters, max(cfg.min_iters, math.floor(cfg.budget_s / max(estimate, 1e-6)))))
        if estimate is not None:
            job.block = max(1, min(job.target, math.floor(cfg.block_s / max(estimate, 1e-6))))
    rnd = 0
    while any(len(j.times) < j.target for j in jobs):
        for job in _rotated(jobs, rnd):
            todo = min(job.target - len(job.times), job.block)
            if todo <= 0:
                continue
            time.sleep(cfg.settle_s)
            for _ in range(todo):
                job.times.append(timer(job.call, cfg.warmup + len(job.times)))
        rnd += 1

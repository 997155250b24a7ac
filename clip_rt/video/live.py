"""The real-time pipeline: decode, scale and encode overlapping, bounded, with the newest frame winning.

    pipe = LivePipeline(VideoSource("rtsp://cam/1"), FrameConverter(cfg), encode, on_result=print)
    pipe.run()          # until the source ends (or raises VideoError); Ctrl-C stops it cleanly
    pipe.summary()      # Summary(frames_in, encoded, dropped, latency p50 / p99, ...)

Three stages on three threads, joined by one-slot mailboxes:
    reader (demux + decode, pacing)  ->  [slot]  ->  scaler (frame -> uint8 crop)  ->  [slot]  ->  encoder (model)
Each slot holds at most one frame, so memory and latency are bounded whatever the source does. When frames are
dropped: a live source (camera, stream), or a file played in real time (realtime=True), has no use for an old
frame once a newer one exists: a put into a full slot replaces the waiting frame, which is counted as dropped. A file
with realtime=False is read as fast as the stages go, and a full slot blocks the stage before it: nothing is dropped.

Times: a file in real time releases each frame at its presentation time (start + pts: the frame's due time);
decoding runs at most one frame ahead of that. A live frame is due when the decoder returns it (its arrival); a
stream URL is always taken as live, so a file served over HTTP, which arrives faster than real time, is mostly
dropped (watch the file itself instead). Latency is from due to the encoder's result, so it holds every wait: a
slow decoder, the scaler, the slots, the model. Per-second Stats (fps in, fps encoded, dropped, latency p50 / p99)
go to on_stats, and a last shorter window's at the end of the source.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .frames import FrameConverter
from .sample import Sampler
from .source import VideoSource


@dataclass(frozen=True)
class LiveConfig:
    """How a source is paced and reported."""

    realtime: bool = True  # a file is played at its own rate, late frames dropped; False: as fast as it goes, no drops
    every: float | None = None  # keep one frame every this many seconds of presentation time (None: every frame)
    duration: float | None = None  # stop after this many seconds of presentation time (None: at the source's end)
    stats_interval: float = 1.0  # seconds between Stats reports
    warmup: int = 1  # model calls on a black frame before the source starts (a first call is slow: not a frame's)


@dataclass(frozen=True)
class FrameResult:
    index: int  # frame number in the source (decode order of the kept frames' source)
    time: float  # presentation time (s)
    due: float  # time.monotonic() the frame was due (file in real time) or arrived (live, or realtime=False)
    done: float  # time.monotonic() the encoder finished it
    output: np.ndarray  # the encode callback's row for this frame: [C] scores or [D] embedding

    @property
    def latency(self) -> float:
        return self.done - self.due


def _ms(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000.0, 2) if values else None


@dataclass(frozen=True)
class Stats:
    """One reporting window."""

    elapsed: float  # seconds since the pipeline started
    fps_in: float  # frames handed on by the reader per second (after sampling)
    fps_encoded: float  # results per second
    dropped: int  # frames dropped in this window
    dropped_total: int
    latency_p50_ms: float | None  # due -> result, over this window's results
    latency_p99_ms: float | None

    def text(self) -> str:
        lat = (f"latency p50 {self.latency_p50_ms:.0f} ms p99 {self.latency_p99_ms:.0f} ms"
               if self.latency_p50_ms is not None and self.latency_p99_ms is not None else "latency -")
        return (f"{self.elapsed:6.1f} s  in {self.fps_in:5.1f} fps  encoded {self.fps_encoded:5.1f} fps  "
                f"dropped {self.dropped} ({self.dropped_total} total)  {lat}")


@dataclass(frozen=True)
class Summary:
    """The whole run."""

    frames_in: int  # frames handed on by the reader (after sampling)
    encoded: int
    dropped: int
    seconds: float  # wall time of the run
    source_seconds: float  # presentation time covered
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    latency_max_ms: float | None
    reconnects: int
    corrupt_packets: int  # packets of a live source the decoder refused (skipped; see VideoSource)
    scaler: str
    realtime: bool
    live: bool
    stopped: str  # "end" (the source ended), "duration", "interrupted" or "error"

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    def text(self) -> str:
        lat = (f"latency p50 {self.latency_p50_ms:.0f} ms p99 {self.latency_p99_ms:.0f} ms max "
               f"{self.latency_max_ms:.0f} ms" if self.latency_max_ms is not None else "no latency measured")
        rate = self.encoded / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.frames_in} frames in {self.seconds:.1f} s ({self.source_seconds:.1f} s of video), "
                f"{self.encoded} encoded ({rate:.1f} fps), {self.dropped} dropped, {lat}, "
                f"{self.reconnects} reconnects, {self.corrupt_packets} corrupt packets skipped, {self.scaler} scaler; "
                f"stopped: {self.stopped}")


class Mailbox:
    """A one-slot hand-off between two threads. drop=True: a put replaces a waiting item (counted in `dropped`);
    drop=False: a put waits until the slot is free. close() ends the stream after the waiting item, with an
    optional error for the taker."""

    def __init__(self, drop: bool):
        self.drop = drop
        self.dropped = 0
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._item: Any = None
        self._full = False
        self._closed = False

    def put(self, item: Any) -> None:
        with self._cond:
            if not self.drop:
                while self._full and not self._closed:
                    self._cond.wait()
            if self._closed:
                return
            if self._full:
                self.dropped += 1
            self._item, self._full = item, True
            self._cond.notify_all()

    def close(self, error: BaseException | None = None) -> None:
        with self._cond:
            if not self._closed:
                self._closed, self.error = True, error
            self._cond.notify_all()

    def discard(self) -> None:
        """Close and forget a waiting item (shutting down)."""
        with self._cond:
            self._closed, self._item, self._full = True, None, False
            self._cond.notify_all()

    def get(self, timeout: float) -> tuple[str, Any]:
        """("item", x), ("end", error or None), or ("timeout", None) after `timeout` seconds without either."""
        with self._cond:
            deadline = time.monotonic() + timeout
            while not self._full and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return "timeout", None
                self._cond.wait(left)
            if self._full:
                item, self._item, self._full = self._item, None, False
                self._cond.notify_all()
                return "item", item
            return "end", self.error


@dataclass
class _Window:
    """The counters at the start of a stats window, and the latencies seen in it."""

    start: float
    frames_in: int = 0
    encoded: int = 0
    dropped: int = 0
    latencies: list[float] = field(default_factory=list)


@dataclass
class _Counters:
    frames_in: int = 0
    encoded: int = 0
    last_time: float = 0.0
    latencies: list[float] = field(default_factory=list)


class LivePipeline:
    """source -> converter -> encode, overlapped and bounded (see the module doc).

    encode: uint8 [1, S, S, 3] -> [1, X] (an embedding or the labels' scores). on_result: called on the encoder's
    thread (the caller's) with each FrameResult, in order. on_stats: called with a Stats every stats_interval.
    """

    def __init__(self, source: VideoSource, converter: FrameConverter, encode: Callable[[np.ndarray], np.ndarray],
                 *, config: LiveConfig = LiveConfig(), on_result: Callable[[FrameResult], None] | None = None,
                 on_stats: Callable[[Stats], None] | None = None):
        self.source, self.converter, self.encode, self.config = source, converter, encode, config
        self.on_result, self.on_stats = on_result, on_stats
        drop = source.live or config.realtime
        self._decoded, self._scaled = Mailbox(drop), Mailbox(drop)
        self._stop = threading.Event()
        self._count = _Counters()
        self._started = self._ended = 0.0
        self._stopped = "end"

    # -- stages ---------------------------------------------------------------------------------------------
    def _read(self) -> None:
        cfg, c = self.config, self._count
        keep = Sampler(cfg.every)
        paced = cfg.realtime and not self.source.live
        clock0: float | None = None  # monotonic time of presentation time 0 (paced files)
        error: BaseException | None = None
        try:
            for f in self.source.frames():
                if self._stop.is_set():
                    break
                if cfg.duration is not None and f.time >= cfg.duration:
                    self._stopped = "duration"
                    break
                if not keep(f.time):
                    continue
                due = f.arrival
                if paced:
                    if clock0 is None:
                        clock0 = f.arrival - f.time
                    due = clock0 + f.time
                    if self._stop.wait(max(0.0, due - time.monotonic())):
                        break
                c.frames_in += 1
                c.last_time = f.time
                self._decoded.put((f.index, f.time, due, f.frame))
        except BaseException as e:  # noqa: BLE001 - handed down the pipeline and re-raised by run()
            error = e
        finally:
            self._decoded.close(error)

    def _scale(self) -> None:
        error: BaseException | None = None
        try:
            while True:
                kind, item = self._decoded.get(timeout=0.5)
                if kind == "timeout":
                    continue
                if kind == "end":
                    error = item
                    return
                index, t, due, frame = item
                self._scaled.put((index, t, due, self.converter(frame)))
        except BaseException as e:  # noqa: BLE001 - as in _read
            error = e
        finally:
            self._scaled.close(error)

    # -- the encoder loop (the caller's thread) --------------------------------------------------------------
    def run(self) -> None:
        """Run until the source ends, `duration` is reached, or Ctrl-C (which stops the run without raising).
        Raises the reader's or scaler's error (VideoError for a broken or stopped source) after the results
        that came before it."""
        cfg, c = self.config, self._count
        size = self.converter.cfg.image_size
        for _ in range(cfg.warmup):
            self.encode(np.zeros((1, size, size, 3), dtype=np.uint8))  # [1, S, S, 3] uint8
        self._started = time.monotonic()
        threads = [threading.Thread(target=self._read, name="clip-rt-video-read", daemon=True),
                   threading.Thread(target=self._scale, name="clip-rt-video-scale", daemon=True)]
        for th in threads:
            th.start()
        window = _Window(self._started)
        try:
            while True:
                kind, item = self._scaled.get(timeout=max(0.01, window.start + cfg.stats_interval - time.monotonic()))
                if kind == "end":
                    if item is not None:
                        self._stopped = "error"
                        raise item
                    if window.latencies or c.frames_in > window.frames_in:  # the last, shorter window
                        self._report(window, time.monotonic())
                    break
                if kind == "item":
                    index, t, due, crop = item
                    out = self.encode(crop[None])[0]  # [1, S, S, 3] uint8 -> [X]
                    done = time.monotonic()
                    c.encoded += 1
                    c.latencies.append(done - due)
                    window.latencies.append(done - due)
                    if self.on_result is not None:
                        self.on_result(FrameResult(index, t, due, done, out))
                now = time.monotonic()
                if now - window.start >= cfg.stats_interval:
                    window = self._report(window, now)
        except KeyboardInterrupt:
            self._stopped = "interrupted"
        finally:
            self._stop.set()
            self._decoded.discard()
            self._scaled.discard()
            for th in threads:
                th.join(timeout=self.source.options.timeout + 1.0)
            self._ended = time.monotonic()

    def _report(self, w: "_Window", now: float) -> "_Window":
        """Stats for the window that ends now (to on_stats); returns the next window."""
        c, dropped = self._count, self.dropped
        if self.on_stats is not None:
            span = max(now - w.start, 1e-9)
            self.on_stats(Stats(round(now - self._started, 2), round((c.frames_in - w.frames_in) / span, 2),
                                round((c.encoded - w.encoded) / span, 2), dropped - w.dropped, dropped,
                                _ms(w.latencies, 50), _ms(w.latencies, 99)))
        return _Window(now, c.frames_in, c.encoded, dropped)

    @property
    def dropped(self) -> int:
        return self._decoded.dropped + self._scaled.dropped

    def summary(self) -> Summary:
        c = self._count
        end = self._ended or time.monotonic()
        return Summary(frames_in=c.frames_in, encoded=c.encoded, dropped=self.dropped,
                       seconds=round(end - self._started, 3) if self._started else 0.0,
                       source_seconds=round(c.last_time, 3), latency_p50_ms=_ms(c.latencies, 50),
                       latency_p99_ms=_ms(c.latencies, 99),
                       latency_max_ms=round(max(c.latencies) * 1000.0, 2) if c.latencies else None,
                       reconnects=self.source.reconnects, corrupt_packets=self.source.corrupt_packets,
                       scaler=self.converter.scaler,
                       realtime=self.config.realtime, live=self.source.live, stopped=self._stopped)

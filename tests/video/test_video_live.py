"""The real-time pipeline: a file played at its own rate, frames dropped (and counted) rather than queued when the
model is slower than the source, nothing dropped when not in real time, and events with hysteresis.

No speed is asserted: the slow-model cases add a fixed delay to the real model's call, so the outcome (drops,
bounded latency) follows from the arithmetic, not from this machine's speed."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av", reason="the video extra (PyAV) is not installed")

from clip_rt.video.events import EventDetector, segments  # noqa: E402
from clip_rt.video.frames import FrameConverter  # noqa: E402
from clip_rt.video.live import FrameResult, LiveConfig, LivePipeline, Mailbox, Stats  # noqa: E402
from clip_rt.video.source import SourceOptions, VideoError, VideoSource  # noqa: E402
from video_fixtures import HttpVideoServer, make_video, photos  # noqa: E402

SLOW = 0.1  # seconds added to each model call in the slow cases: 3 frame intervals at 30 fps


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, data_dir: Path):
    return make_video(tmp_path_factory.mktemp("video-live") / "a.ts", photos(2, start=9), size=(320, 180))


def run(model, spec, config: LiveConfig, delay: float = 0.0, options: SourceOptions = SourceOptions(timeout=3.0)):
    def encode(crops: np.ndarray) -> np.ndarray:
        out = model.encode_images(crops)  # the real model; `delay` stands for a slower CPU
        if delay:
            time.sleep(delay)
        return out

    results: list[FrameResult] = []
    stats: list[Stats] = []
    pipe = LivePipeline(VideoSource(spec, options), FrameConverter(model.preprocess_config), encode, config=config,
                        on_result=results.append, on_stats=stats.append)
    return pipe, results, stats


def test_real_time_file_is_paced_and_every_frame_accounted(clip, model) -> None:
    pipe, results, stats = run(model, clip.path, LiveConfig(realtime=True, stats_interval=0.5))
    t0 = time.monotonic()
    pipe.run()
    wall = time.monotonic() - t0
    s = pipe.summary()
    assert wall >= clip.times[-1] - 0.05  # played at its own rate, not faster
    assert s.frames_in == clip.frames == s.encoded + s.dropped and s.stopped == "end" and s.realtime
    assert [r.time for r in results] == sorted(r.time for r in results)
    assert all(r.output.shape == (model.embed_dim,) and r.latency >= 0 for r in results)
    assert s.latency_p50_ms is not None and s.latency_p50_ms <= s.latency_p99_ms <= s.latency_max_ms
    assert len(stats) >= 2 and sum(x.dropped for x in stats) <= s.dropped
    assert stats[-1].elapsed > stats[0].elapsed and all(x.fps_in >= 0 for x in stats)
    assert "frames in" in s.text() and "dropped" in stats[0].text()


def test_slow_model_drops_frames_instead_of_queueing(clip, model) -> None:
    """At 3 frame intervals a call, about 2 of 3 frames must go; the ones encoded stay fresh: latency stays near
    one call (plus the frame waiting for it), where a queue would grow to seconds by the end of the clip."""
    pipe, results, _ = run(model, clip.path, LiveConfig(realtime=True), delay=SLOW)
    pipe.run()
    s = pipe.summary()
    assert s.frames_in == clip.frames == s.encoded + s.dropped
    assert s.dropped >= clip.frames // 3 and s.encoded >= clip.frames // 6
    queued = (clip.frames * SLOW - clip.times[-1])  # the last frame's wait if every frame were queued (~4 s)
    assert s.latency_max_ms / 1000.0 < 0.5 < queued


def test_not_real_time_encodes_every_frame(clip, model) -> None:
    pipe, results, _ = run(model, clip.path, LiveConfig(realtime=False), delay=0.01)
    pipe.run()
    s = pipe.summary()
    assert s.dropped == 0 and s.encoded == s.frames_in == clip.frames and not s.realtime
    np.testing.assert_allclose([r.time for r in results], clip.times, atol=1e-3)


def test_sampling_and_duration(clip, model) -> None:
    pipe, results, _ = run(model, clip.path, LiveConfig(realtime=False, every=0.5, duration=1.4))
    pipe.run()
    np.testing.assert_allclose([r.time for r in results], [0.0, 0.5, 1.0], atol=1e-3)
    assert pipe.summary().stopped == "duration"


def test_live_stream_newest_frame_wins_and_a_stop_is_an_error_after_the_results(clip, model) -> None:
    """The stream is cut mid-way and its server goes away while the model works: the reconnect is refused, and
    the run ends with the error after the frames that came before."""
    with HttpVideoServer({"a.ts": clip.path}, cut_after=0.6) as srv:
        pipe, results, _ = run(model, srv.url("a.ts"), LiveConfig(realtime=False), delay=SLOW,
                               options=SourceOptions(timeout=3.0, retries=1, retry_delay=0.05))
        assert pipe.source.live
        stopper = threading.Thread(target=srv.stop)
        pipe.on_result = lambda r: (results.append(r), stopper.is_alive() or stopper.ident or stopper.start())
        with pytest.raises(VideoError, match="stream dropped at .*; 1 reconnect attempts failed"):
            pipe.run()
        stopper.join(5)
    s = pipe.summary()
    assert s.stopped == "error" and s.live and results and s.reconnects <= 1  # 1: it dropped before the stop
    assert s.dropped > 0  # a live source drops even with realtime=False: it does not wait for the model
    assert s.frames_in == s.encoded + s.dropped


def test_mailbox_bounds() -> None:
    box = Mailbox(drop=True)
    for i in range(5):
        box.put(i)
    assert box.get(0.1) == ("item", 4) and box.dropped == 4
    assert box.get(0.01) == ("timeout", None)
    box.close(VideoError("gone"))
    kind, err = box.get(0.1)
    assert kind == "end" and str(err) == "gone"
    blocking = Mailbox(drop=False)
    blocking.put(1)
    got: list = []
    th = threading.Thread(target=lambda: (blocking.put(2), got.append("put")))
    th.start()
    time.sleep(0.05)
    assert not got  # waits for the slot
    assert blocking.get(0.1) == ("item", 1)
    th.join(2)
    assert got == ["put"] and blocking.get(0.1) == ("item", 2) and blocking.dropped == 0


def test_hysteresis_gives_one_event_per_crossing() -> None:
    det = EventDetector(["dog", "cat"], threshold=0.6, release=0.4)
    scores = [(0.5, 0.5), (0.61, 0.39), (0.55, 0.45), (0.62, 0.38), (0.45, 0.55), (0.39, 0.61), (0.7, 0.3)]
    events = [e for t, sc in enumerate(scores) for e in det.update(float(t), np.array(sc))]
    assert [(e.kind, e.label, e.time) for e in events] == [
        ("start", "dog", 1.0),  # wobbling between 0.55 and 0.62 stays on
        ("end", "dog", 5.0), ("start", "cat", 5.0),
        ("start", "dog", 6.0), ("end", "cat", 6.0)]
    assert [(e.kind, e.label) for e in det.finish(7.0)] == [("end", "dog")]
    assert events[0].to_json() == {"event": "start", "label": "dog", "time": 1.0, "score": pytest.approx(0.61)}
    with pytest.raises(ValueError, match="release"):
        EventDetector(["a"], threshold=0.5, release=0.6)


def test_segments_merge_runs_of_a_label() -> None:
    segs = segments([0.0, 0.5, 1.0, 1.5, 2.0], ["a", "a", "b", "b", "a"], [0.9, 0.7, 0.6, 0.8, 0.5])
    assert [(s.label, s.start, s.end, s.frames) for s in segs] == [("a", 0.0, 1.0, 2), ("b", 1.0, 2.0, 2),
                                                                    ("a", 2.0, 2.5, 1)]
    assert segs[0].score == pytest.approx(0.8) and segments([], []) == []


def test_ctrl_c_stops_cleanly_with_a_summary(clip, model) -> None:
    """Ctrl-C arrives on the caller's thread (here: raised from the result callback after 5 frames): the run ends
    without raising, the reader and scaler threads are stopped, and the summary says why."""
    pipe, results, _ = run(model, clip.path, LiveConfig(realtime=False))

    def on_result(r: FrameResult) -> None:
        results.append(r)
        if len(results) == 5:
            raise KeyboardInterrupt

    pipe.on_result = on_result
    pipe.run()
    s = pipe.summary()
    assert s.stopped == "interrupted" and s.encoded == 5 and len(results) == 5
    assert not [t for t in threading.enumerate() if t.name.startswith("clip-rt-video")]

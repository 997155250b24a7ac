"""`clip-rt watch` end to end on the tiny package: events as JSON lines that follow the scores with hysteresis, stats
and a summary on stderr, and broken or stopping sources ending in one error line (exit 2), never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av", reason="the video extra (PyAV) is not installed")

from clip_rt.cli import main  # noqa: E402
from clip_rt.video.events import EventDetector  # noqa: E402
from video_fixtures import HttpVideoServer, make_video, not_video, photos, truncate  # noqa: E402

LABELS = ["a dog", "a plane"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict:
    d = tmp_path_factory.mktemp("video-cli")
    pics = photos(3, start=2)
    return {"plain": make_video(d / "a.mp4", pics), "ts": make_video(d / "a.ts", pics[:2]),
            "phone": make_video(d / "phone.mp4", pics[:1], size=(180, 320), rotation=90),
            "vfr": make_video(d / "vfr.mkv", pics[:1], vfr=True),
            "cut": truncate(make_video(d / "fast.mp4", pics[:2], faststart=True).path, d / "cut.mp4", 0.5),
            "text": not_video(d / "notes.mp4"), "dir": d}


def watch(capsys, package: Path, source, *args: str) -> tuple[int, list[dict], list[str]]:
    rc = main(["watch", str(package), str(source), "--labels", ",".join(LABELS), *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, [json.loads(line) for line in out.splitlines()], err.splitlines()


def test_events_follow_the_scores_with_hysteresis(clips: dict, tiny_package: Path, capsys) -> None:
    rc, lines, err = watch(capsys, tiny_package, clips["plain"].path, "--no-realtime", "--frames", "--threshold",
                           "0.5", "--release", "0.45", "--no-stats")
    assert rc == 0
    frames = [x for x in lines if "frame" in x]
    events = [x for x in lines if "event" in x]
    assert len(frames) == clips["plain"].frames  # --no-realtime: every frame
    # Replay the detector on the printed scores (two labels, softmax: the other one is 1 - the top one's)
    det = EventDetector(LABELS, 0.5, 0.45)
    expected = []
    for f in frames:
        top = LABELS.index(f["label"])
        scores = np.array([f["score"], 1.0 - f["score"]] if top == 0 else [1.0 - f["score"], f["score"]])
        expected += [e.to_json() for e in det.update(f["time"], scores)]
    expected += [e.to_json() for e in det.finish(frames[-1]["time"])]
    assert [(e["event"], e["label"], round(e["time"], 3)) for e in events] == \
        [(e["event"], e["label"], round(e["time"], 3)) for e in expected]
    assert events and events[0]["event"] == "start" and events[-1]["event"] == "end"
    assert len(err) == 1 and err[0].startswith("clip-rt watch: done: 90 frames") and "0 dropped" in err[0]


def test_real_time_with_json_stats_on_rotated_and_variable_rate_video(clips: dict, tiny_package: Path, capsys) -> None:
    for name in ("phone", "vfr"):
        rc, lines, err = watch(capsys, tiny_package, clips[name].path, "--stats-format", "json", "--threshold", "0.9")
        assert rc == 0
        docs = [json.loads(line.removeprefix("clip-rt watch: ")) for line in err]
        summary = docs[-1]["summary"]
        assert summary["realtime"] and not summary["live"] and summary["stopped"] == "end"
        assert summary["frames_in"] == clips[name].frames == summary["encoded"] + summary["dropped"]
        assert summary["source_seconds"] == pytest.approx(clips[name].times[-1], abs=1e-3)
        stats = [d["stats"] for d in docs[:-1]]
        assert stats and {"fps_in", "fps_encoded", "dropped", "latency_p50_ms", "latency_p99_ms"} <= set(stats[0])


def test_duration_and_every(clips: dict, tiny_package: Path, capsys) -> None:
    rc, lines, err = watch(capsys, tiny_package, clips["plain"].path, "--no-realtime", "--frames", "--every", "0.5",
                           "--duration", "2", "--no-stats")
    assert rc == 0
    assert [round(x["time"], 3) for x in lines if "frame" in x] == [0.0, 0.5, 1.0, 1.5]
    assert "stopped: duration" in err[-1]


@pytest.mark.parametrize("case,words", [("text", "not a video FFmpeg can read"), ("cut", "truncated"),
                                        ("missing", "file not found")])
def test_broken_files_end_in_one_error_line(clips: dict, tiny_package: Path, capsys, case: str, words: str) -> None:
    source = clips["dir"] / "missing.mp4" if case == "missing" else clips[case]
    rc, _, err = watch(capsys, tiny_package, source, "--no-realtime")
    assert rc == 2
    assert err[-1].startswith(f"clip-rt watch: error: {source}: ") and words in err[-1]
    if case == "cut":  # it failed mid-way: the summary of what came before is there too
        assert "stopped: error" in err[-2]
    else:  # it failed at open, before the model was loaded
        assert len(err) == 1


def test_stream_that_stops_mid_way(clips: dict, tiny_package: Path, capsys) -> None:
    with HttpVideoServer({"a.ts": clips["ts"].path}, cut_after=0.5) as srv:
        rc, _, err = watch(capsys, tiny_package, srv.url("a.ts"), "--retries", "0", "--timeout", "3", "--no-stats",
                           "--input-option", "user_agent=clip-rt-test/1")
    assert srv.agents == ["clip-rt-test/1"]  # --input-option reaches FFmpeg
    assert rc == 2
    assert "stream dropped at" in err[-1] and "retries=0" in err[-1]
    assert "stopped: error" in err[-2]


@pytest.mark.parametrize("args,words", [(["--threshold", "0.5", "--release", "0.6"], "--release"),
                                        (["--threshold", "1.5"], "--threshold")])
def test_bad_thresholds(clips: dict, tiny_package: Path, capsys, args: list[str], words: str) -> None:
    rc, _, err = watch(capsys, tiny_package, clips["plain"].path, *args)
    assert rc == 2 and len(err) == 1 and words in err[0]


def test_one_label_is_refused(clips: dict, tiny_package: Path, capsys) -> None:
    rc = main(["watch", str(tiny_package), str(clips["plain"].path), "--labels", "a dog"])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(err) == 1 and "two or more labels" in err[0]


def test_spinning_is_an_onnxruntime_setting(clips: dict, tiny_package: Path, capsys) -> None:
    rc, _, err = watch(capsys, tiny_package, clips["plain"].path, "--backend", "torch", "--spinning")
    assert rc == 2 and len(err) == 1 and "--spinning is an onnxruntime setting" in err[0]

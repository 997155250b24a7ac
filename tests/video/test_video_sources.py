"""Broken and stopping video sources end in one VideoError line (or a reconnect), never a hang or a traceback:
truncated files, files that are not video, a localhost HTTP stream that stops mid-way, that comes back, or whose
server is gone."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("av", reason="the video extra (PyAV) is not installed")

from clip_rt.errors import ClipRtError  # noqa: E402
from clip_rt.video.source import SourceOptions, VideoError, VideoSource, source_kind  # noqa: E402
from video_fixtures import HttpVideoServer, make_video, not_video, photos, truncate  # noqa: E402

FAST = SourceOptions(timeout=3.0, retries=0, retry_delay=0.05)  # local sources: nothing should take seconds


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict:
    d = tmp_path_factory.mktemp("video-sources")
    pics = photos(2, start=5)
    return {"mp4": make_video(d / "a.mp4", pics), "fast": make_video(d / "fast.mp4", pics, faststart=True),
            "ts": make_video(d / "a.ts", pics), "dir": d}


def read_all(spec: str | Path, options: SourceOptions = FAST) -> tuple[list[float], VideoSource]:
    src = VideoSource(spec, options)
    return [f.time for f in src.frames()], src


def one_line(e: BaseException) -> str:
    msg = str(e)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_kinds() -> None:
    assert source_kind("clip.mp4") == "file" and source_kind("/dev/video0") == "device"
    assert source_kind("rtsp://cam/1") == "stream" and source_kind("HTTPS://x/a.m3u8") == "stream"
    with pytest.raises(VideoError, match="unsupported URL scheme 'ftp'"):
        source_kind("ftp://host/a.mp4")
    assert issubclass(VideoError, ClipRtError)


def test_truncated_mp4_with_index_at_the_end(clips: dict) -> None:
    cut = truncate(clips["mp4"].path, clips["dir"] / "cut.mp4", 0.6)
    with pytest.raises(VideoError) as e:
        read_all(cut)
    assert "not a video FFmpeg can read" in one_line(e.value) and "cut short" in str(e.value)


def test_truncated_mp4_with_index_first_breaks_mid_way(clips: dict) -> None:
    cut = truncate(clips["fast"].path, clips["dir"] / "cut-fast.mp4", 0.5)
    src = VideoSource(cut, FAST)
    seen: list[float] = []
    with pytest.raises(VideoError) as e:
        for f in src.frames():
            seen.append(f.time)
    assert "truncated" in one_line(e.value)
    assert 0 < len(seen) < clips["fast"].frames  # the frames before the cut came through first


def test_truncated_transport_stream_ends_at_the_cut(clips: dict) -> None:
    """MPEG-TS has no index: a cut file decodes up to the cut and ends (the documented limit)."""
    cut = truncate(clips["ts"].path, clips["dir"] / "cut.ts", 0.5)
    times, _ = read_all(cut)
    assert 0.3 * clips["ts"].duration < times[-1] < 0.7 * clips["ts"].duration


def test_not_video_missing_empty_and_folder(clips: dict) -> None:
    d = clips["dir"]
    cases = {not_video(d / "list.mp4"): "not a video FFmpeg can read", not_video(d / "list.avi"): "not a video",
             d / "missing.mp4": "file not found", d: "is a folder"}
    (d / "empty.mkv").write_bytes(b"")
    cases[d / "empty.mkv"] = "empty file"
    for path, words in cases.items():
        with pytest.raises(VideoError, match=words) as e:
            read_all(path)
        assert one_line(e.value).startswith(str(path))


def test_stream_that_stops_mid_way_is_an_error_after_its_frames(clips: dict) -> None:
    with HttpVideoServer({"a.ts": clips["ts"].path}, cut_after=0.5) as srv:
        src = VideoSource(srv.url("a.ts"), FAST)
        assert src.live
        seen: list[float] = []
        t0 = time.monotonic()
        with pytest.raises(VideoError) as e:
            for f in src.frames():
                seen.append(f.time)
        assert "stream dropped at" in one_line(e.value) and "reconnects are off" in str(e.value)
        assert seen and time.monotonic() - t0 < 30


def test_stream_that_comes_back_is_reconnected(clips: dict) -> None:
    """The first request is cut half-way, the second serves the whole stream: one reconnect, times go on."""
    clip = clips["ts"]
    with HttpVideoServer({"a.ts": clip.path}, cut_after=0.5, cut_requests=1) as srv:
        times, src = read_all(srv.url("a.ts"), SourceOptions(timeout=3.0, retries=3, retry_delay=0.05))
    assert src.reconnects == 1 and srv.requests == 2
    assert times == sorted(times)  # no jump back to 0 after the reconnect
    assert 1.2 * clip.frames < len(times) < 1.7 * clip.frames  # about half, then all of it


def test_stream_whose_server_is_gone_gives_up_after_the_retries(clips: dict) -> None:
    srv = HttpVideoServer({"a.ts": clips["ts"].path}, cut_after=0.5)
    with srv:
        src = VideoSource(srv.url("a.ts"), SourceOptions(timeout=3.0, retries=2, retry_delay=0.05))
        frames = src.frames()
        next(frames)
        srv.stop()  # the rest of the first response is already buffered; every reconnect is refused
        t0 = time.monotonic()
        with pytest.raises(VideoError) as e:
            for _ in frames:
                pass
    msg = one_line(e.value)
    assert "stream dropped at" in msg and "2 reconnect attempts failed" in msg and "cannot connect" in msg
    assert time.monotonic() - t0 < 30


def test_connection_refused_at_open() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(VideoError, match="cannot connect"):
        VideoSource(f"http://127.0.0.1:{port}/a.ts", FAST).open()


def test_stream_that_hangs_times_out_and_a_flapping_one_gives_up(clips: dict) -> None:
    """Every connection sends half the stream and then nothing: each read times out (1 s, not the server's 60),
    the reconnect works but drops again at once, which counts against the retries."""
    with HttpVideoServer({"a.ts": clips["ts"].path}, cut_after=0.5, stall=True) as srv:
        src = VideoSource(srv.url("a.ts"), SourceOptions(timeout=1.0, retries=2, retry_delay=0.05))
        t0 = time.monotonic()
        with pytest.raises(VideoError) as e:
            for _ in src.frames():
                pass
        assert time.monotonic() - t0 < 20
    msg = one_line(e.value)
    assert "stream dropped at" in msg and "2 reconnect attempts failed (each reconnect dropped again" in msg
    assert src.reconnects == 2


def test_missing_camera() -> None:
    with pytest.raises(VideoError, match="/dev/video97: no such device"):
        VideoSource("/dev/video97", FAST).open()

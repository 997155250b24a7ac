"""Opening video with PyAV (FFmpeg): files, V4L2 cameras and network streams, decoded frames with their times.

    src = VideoSource("clip.mp4")                    # or "/dev/video0", "rtsp://cam/stream", "http://host/a.ts"
    for f in src.frames():                           # DecodedFrame(index, time, frame, arrival)
        ...

Kinds: a path is a "file"; /dev/video* (or v4l2:/dev/videoN) a "device"; a URL (rtsp, rtmp, http(s), udp, tcp,
srt) a "stream". Devices and streams are live: when a stream drops (a read error, a premature end, a read timeout)
it is reopened with a doubling delay, and the frame times go on from where they were. `retries` reconnects in a row
that fail, or that drop again within STABLE_SECONDS, end in a VideoError that says what happened in one line, as does
a file that breaks; a source that then runs for STABLE_SECONDS has its retries back (a camera that drops once a day
is reconnected every day). A live source that ends cleanly
(FFmpeg's end of file) simply ends.

Errors are VideoError (an InputError: bad input, reported as `clip-rt CMD: error: ...`). A file cut short: an MP4
without its index (written at the end) cannot be opened; one whose index came first, or a Matroska file, ends before
the duration its header declares, which is reported. Known limit: an MPEG-TS file cut short decodes cleanly up to
the cut (the format has no index to compare against).
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import InputError, missing_dependency

if TYPE_CHECKING:
    import av

KINDS = ("file", "device", "stream")
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "rtp")
INDEXED_FORMATS = ("mov", "mp4", "matroska", "webm")  # containers whose header declares the video's duration
MAX_RETRY_DELAY = 8.0  # seconds: the reconnect delay doubles up to this
STABLE_SECONDS = 10.0  # a live source that ran this long after a reconnect has its retry budget back


class VideoError(InputError):
    """A video file, camera or stream that cannot be opened or decoded, or a stream that stopped for good."""


def require_av() -> Any:
    """The av module, or BackendUnavailable with the install hint."""
    try:
        import av
    except ImportError:
        raise missing_dependency("av", "video", "video input (files, cameras, streams)") from None
    return av


def source_kind(spec: str) -> str:
    """'file', 'device' or 'stream' for a source as the user typed it."""
    scheme = spec.split("://", 1)[0].lower() if "://" in spec else ""
    if scheme in STREAM_SCHEMES:
        return "stream"
    if spec.startswith("v4l2:") or spec.startswith("/dev/video"):
        return "device"
    if scheme and scheme != "file":
        raise VideoError(f"{spec}: unsupported URL scheme {scheme!r}; use one of {', '.join(STREAM_SCHEMES)}, a "
                         f"/dev/video device or a file path")
    return "file"


@dataclass(frozen=True)
class SourceOptions:
    """How a source is opened and kept open."""

    timeout: float = 10.0  # seconds to wait for a stream or camera to open, and for each read after that
    retries: int = 5  # reconnect attempts after a live source drops (0: the first drop is an error)
    retry_delay: float = 0.5  # seconds before the first reconnect attempt; doubles each attempt, up to 8 s
    threads: int = 0  # decoder threads (0: FFmpeg picks)
    rtsp_transport: str = "tcp"  # RTSP over TCP: no lost UDP packets smearing frames
    # FFmpeg options for opening the source, e.g. (("video_size", "1280x720"), ("input_format", "mjpeg")) for a USB
    # camera (V4L2 picks its own default mode otherwise), or (("user_agent", "..."),) for HTTP
    input_options: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise InputError(f"timeout must be > 0 seconds, got {self.timeout!r}")
        if not (isinstance(self.retries, int) and self.retries >= 0):
            raise InputError(f"retries must be an int >= 0, got {self.retries!r}")
        if not self.retry_delay >= 0:
            raise InputError(f"retry_delay must be >= 0 seconds, got {self.retry_delay!r}")


@dataclass(frozen=True)
class StreamInfo:
    """What the container says about its first video stream (before any frame is decoded)."""

    width: int  # stored pixels (a rotated phone video is displayed the other way round)
    height: int
    fps: float | None  # the stream's average rate, None if unknown (live streams, variable rate)
    duration: float | None  # seconds, None if unknown (streams, cameras)
    codec: str


@dataclass(frozen=True)
class DecodedFrame:
    """One decoded frame: its position, its presentation time and the moment it left the decoder."""

    index: int  # frames decoded from this source so far (across reconnects), from 0
    time: float  # presentation time in seconds from the start of the source (goes on across reconnects)
    frame: "av.VideoFrame"  # the decoded picture (stored orientation; frame.rotation says how it is displayed)
    arrival: float  # time.monotonic() when the decoder returned it


def _reason(e: BaseException) -> str:
    strerror = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return str(strerror).rstrip(".")


def _open_error(spec: str, kind: str, e: BaseException) -> VideoError:
    import av

    if isinstance(e, av.error.FileNotFoundError):
        what = "no such device" if kind == "device" else "file not found" if kind == "file" else "not found (404)"
        return VideoError(f"{spec}: {what}")
    if isinstance(e, av.error.PermissionError):
        return VideoError(f"{spec}: permission denied")
    if isinstance(e, av.error.InvalidDataError):
        hint = (" (an MP4 cut short before its index was written reads like this too)" if kind == "file" else "")
        return VideoError(f"{spec}: not a video FFmpeg can read ({_reason(e)}){hint}")
    if isinstance(e, (ConnectionError, TimeoutError)) or getattr(e, "errno", None) in (110, 111, 113):
        return VideoError(f"{spec}: cannot connect ({_reason(e)})")
    return VideoError(f"{spec}: cannot open ({_reason(e)})")


class VideoSource:
    """A file, camera or stream -> decoded frames in presentation order, with reconnects for live sources.

    spec: a file path, /dev/videoN (or v4l2:/dev/videoN), or a URL. Opening happens in open() (called by frames()
    and info() when needed); VideoError if the source cannot be opened or has no video stream.
    """

    def __init__(self, spec: str | os.PathLike, options: SourceOptions = SourceOptions()):
        self.spec = os.fspath(spec)
        self.kind = source_kind(self.spec)
        self.options = options
        self.reconnects = 0  # successful reopenings after a drop
        self.corrupt_packets = 0  # packets of a live source the decoder refused and that were skipped
        self._container: Any = None
        self._info: StreamInfo | None = None
        self._declared: float | None = None  # seconds of video the file's index declares (files only)

    @property
    def live(self) -> bool:
        """Cameras and streams: frames come when they come, and the newest one wins (see clip_rt.video.live)."""
        return self.kind != "file"

    def _check_file(self) -> None:
        try:
            st = os.stat(self.spec)
        except FileNotFoundError:
            raise VideoError(f"{self.spec}: file not found") from None
        except PermissionError:
            raise VideoError(f"{self.spec}: permission denied") from None
        if stat.S_ISDIR(st.st_mode):
            raise VideoError(f"{self.spec}: is a folder, not a video file")
        if stat.S_ISREG(st.st_mode) and st.st_size == 0:
            raise VideoError(f"{self.spec}: empty file (0 bytes)")

    def _open_container(self) -> Any:
        av = require_av()
        kwargs: dict[str, Any] = {}
        if self.kind == "file":
            self._check_file()
        else:
            kwargs["timeout"] = (self.options.timeout, self.options.timeout)
        if self.kind == "device":
            target, kwargs["format"] = self.spec.removeprefix("v4l2:"), "v4l2"
        else:
            target = self.spec
        options = dict(self.options.input_options)
        if self.spec.lower().startswith(("rtsp://", "rtsps://")):
            options.setdefault("rtsp_transport", self.options.rtsp_transport)
        if options:
            kwargs["options"] = options
        try:
            container = av.open(target, **kwargs)
        except av.FFmpegError as e:
            raise _open_error(self.spec, self.kind, e) from None
        except OSError as e:
            raise VideoError(f"{self.spec}: cannot open ({e.strerror or e})") from None
        if not container.streams.video:
            container.close()
            raise VideoError(f"{self.spec}: has no video stream")
        stream = container.streams.video[0]
        # Files: frame + slice threads (throughput; frame threads hold a few frames back, which only shifts decoding
        # earlier). Live sources: slice threads only, so that no frame waits in the decoder for the next ones.
        stream.thread_type = "AUTO" if self.kind == "file" else "SLICE"
        if self.options.threads:
            stream.codec_context.thread_count = self.options.threads
        return container

    def open(self) -> StreamInfo:
        """Open the source (if not open yet) and describe its video stream."""
        if self._container is None:
            self._container = self._open_container()
            stream = self._container.streams.video[0]
            rate = stream.average_rate
            # the video stream's own duration where an index declares it (MP4 / MOV, Matroska / WebM); MPEG-TS and
            # others only estimate it from the bitrate, which cannot tell a cut file from a whole one
            indexed = any(name in INDEXED_FORMATS for name in self._container.format.name.split(","))
            self._declared = (float(stream.duration * stream.time_base)
                              if self.kind == "file" and indexed and stream.duration and stream.time_base else None)
            duration = self._declared or (self._container.duration / 1e6 if self._container.duration else None)
            self._info = StreamInfo(width=stream.codec_context.width, height=stream.codec_context.height,
                                    fps=float(rate) if rate else None,
                                    duration=duration if self.kind == "file" else None,
                                    codec=stream.codec_context.name)
        assert self._info is not None
        return self._info

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> "VideoSource":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def frames(self) -> Iterator[DecodedFrame]:
        """Decoded frames in presentation order. Raises VideoError when a file breaks mid-way, or when a live
        source cannot be kept up: `retries` reconnects in a row, each failing or dropping again within
        STABLE_SECONDS. Stopping the iteration early closes the source."""
        import av

        index, offset, last = 0, 0.0, None  # offset: time added after a reconnect so that times go on
        failures = 0  # reconnect attempts since the source last ran for STABLE_SECONDS
        self.open()
        try:
            while True:
                origin = None  # the first frame's own timestamp on this connection
                connected = time.monotonic()
                try:
                    stream = self._container.streams.video[0]
                    for frame in self._decode(stream):
                        t = frame.time
                        if t is None:  # no timestamp: count frames at the nominal rate
                            t = index / (self._info.fps or 30.0) if self._info else 0.0
                        if origin is None:  # a file's clock starts at its stream's start time, a live one's at frame 1
                            start = stream.start_time if self.kind == "file" else None
                            origin = float(start * stream.time_base) if start is not None and stream.time_base else t
                            origin = min(origin, t)
                        now = offset + (t - origin)
                        if last is not None and now < last:  # a timestamp going backwards (broken stream): keep order
                            now = last
                        last = now
                        yield DecodedFrame(index, now, frame, time.monotonic())
                        index += 1
                    self.close()
                    if self.kind == "file":
                        self._check_complete(last)
                    return  # a clean end of file, for files and live sources alike
                except av.FFmpegError as e:  # with slice threading, or a container-level failure
                    self.close()
                    at = f"at {last:.2f} s" if last is not None else "before the first frame"
                    if not self.live:
                        raise VideoError(f"{self.spec}: corrupt or truncated video data {at} ({_reason(e)})") from None
                    failure = f"stream dropped {at} ({_reason(e)})"
                if last is not None:
                    offset = last + 1.0 / (self._info.fps if self._info and self._info.fps else 30.0)
                if time.monotonic() - connected >= STABLE_SECONDS:
                    failures = 0
                failures = self._reconnect(failure, failures)
        finally:
            self.close()

    def _decode(self, stream: Any) -> Iterator[Any]:
        """The stream's frames. On a live source a packet the decoder refuses (lost data) is skipped and counted in
        corrupt_packets; the decoder conceals the damage in the frames after it. On a file it is an error."""
        import av

        for packet in self._container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                if not self.live:
                    raise
                self.corrupt_packets += 1
                continue
            yield from frames

    def _check_complete(self, last: float | None) -> None:
        """A file whose index declares more video than was decoded was cut short (with threaded decoding FFmpeg
        ends quietly at the broken packet instead of failing)."""
        declared, fps = self._declared, (self._info.fps if self._info else None) or 30.0
        if declared is None:
            return
        shown = 0.0 if last is None else last + 1.0 / fps  # the last frame lasts one interval
        if shown < declared - 1.0 / fps - 0.05:
            raise VideoError(f"{self.spec}: truncated: the video ends at {shown:.2f} s of the {declared:.2f} s its "
                             f"index declares (a file cut short, or corrupt data there)")

    def _reconnect(self, failure: str, failures: int) -> int:
        """Reopen a live source, waiting retry_delay (doubling) before each attempt. Returns the failure count
        (attempts so far, this one included); VideoError once `retries` attempts in a row have not held."""
        delay, last_error = self.options.retry_delay * 2 ** min(failures, 6), ""
        while failures < self.options.retries:
            time.sleep(min(delay, MAX_RETRY_DELAY))
            delay, failures = max(delay * 2, 0.1), failures + 1
            try:
                self._container = self._open_container()
            except VideoError as e:
                last_error = str(e).split(": ", 1)[-1]
                continue
            self.reconnects += 1
            return failures
        if not self.options.retries:
            raise VideoError(f"{self.spec}: {failure} (reconnects are off: retries=0)")
        why = f"last: {last_error}" if last_error else f"each reconnect dropped again within {STABLE_SECONDS:g} s"
        raise VideoError(f"{self.spec}: {failure}; {self.options.retries} reconnect attempts failed ({why})")

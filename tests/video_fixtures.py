"""Test videos made from ../shared photos with PyAV's libx264: pans and cuts between photos, sensor-like noise.

    clip = make_video(tmp / "a.mp4", photos(3), size=(320, 180), seconds_per_photo=1.0)
    clip.photo_at(1.5)  # -> the photo shown at 1.5 s

Broken inputs for the error tests: truncated copies, a file that is not video, a rotated phone-style video (a
display matrix in the MP4, as phones write it), variable frame rate (irregular timestamps), and a localhost HTTP
server that serves a file and can stop mid-way (the "stream that stops").
"""

from __future__ import annotations

import http.server
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from conftest import DATA_DIR

PHOTO_DIR = DATA_DIR / "caltech101" / "images"


def photos(n: int, start: int = 0) -> list[Path]:
    """n distinct real photos from ../shared (spread over the folder, so that neighbours differ in content)."""
    files = sorted(PHOTO_DIR.glob("*.jpg"))
    step = max(1, len(files) // max(n, 1))
    picked = files[start::step][:n]
    if len(picked) < n:
        raise FileNotFoundError(f"need {n} photos under {PHOTO_DIR}, found {len(files)}")
    return picked


@dataclass(frozen=True)
class Clip:
    """A generated video and what it shows: photo k fills [starts[k], starts[k] + seconds_per_photo)."""

    path: Path
    size: tuple[int, int]  # (width, height) as displayed
    fps: float  # nominal rate (the mean rate for a variable-frame-rate clip)
    frames: int
    photos: tuple[Path, ...]
    starts: tuple[float, ...]  # presentation time (s) of each photo's first frame
    seconds_per_photo: float
    times: tuple[float, ...] = field(default=(), repr=False)  # every frame's presentation time (s)

    @property
    def duration(self) -> float:
        return self.starts[-1] + self.seconds_per_photo

    def photo_at(self, t: float) -> Path:
        k = min(int(t // self.seconds_per_photo), len(self.photos) - 1)
        return self.photos[k]


def _cover(photo: Path, width: int, height: int, zoom: float) -> np.ndarray:
    """The photo resized to cover (width * zoom) x (height * zoom): room for a pan. uint8 [h, w, 3]."""
    img = Image.open(photo).convert("RGB")
    scale = max(width * zoom / img.width, height * zoom / img.height)
    size = (max(width + 1, round(img.width * scale)), max(height + 1, round(img.height * scale)))
    return np.asarray(img.resize(size, Image.Resampling.BILINEAR))


def _pan(canvas: np.ndarray, width: int, height: int, u: float) -> np.ndarray:
    """The width x height window at fraction u in [0, 1] of a diagonal pan across the canvas."""
    dx, dy = canvas.shape[1] - width, canvas.shape[0] - height
    x, y = int(round(u * dx)), int(round(u * dy))
    return canvas[y:y + height, x:x + width]


def _frame_times(n: int, fps: float, vfr: bool) -> list[float]:
    """Presentation times: regular 1/fps, or (vfr) alternating short and long gaps with the same mean."""
    if not vfr:
        return [i / fps for i in range(n)]
    gaps = [0.4 / fps if i % 2 else 1.6 / fps for i in range(n)]  # 40 % and 160 % of the mean interval
    return [float(x) for x in np.concatenate([[0.0], np.cumsum(gaps[:-1])])]


def make_video(path: Path, photo_files: Sequence[Path], *, size: tuple[int, int] = (320, 180), fps: int = 30,
               seconds_per_photo: float = 1.0, noise: float = 3.0, rotation: int = 0, vfr: bool = False,
               preset: str = "ultrafast", gop: int | None = None, faststart: bool = False, seed: int = 0) -> Clip:
    """Encode a clip: each photo is panned across for seconds_per_photo, then a hard cut to the next.

    noise: sigma of Gaussian noise per pixel and frame (sensor-like grain, in 8-bit steps).
    size: (width, height) as displayed. rotation: degrees (counterclockwise, a multiple of 90) of display rotation
        written into the container, as a phone does: the pixels are stored turned the other way (a portrait
        picture stored as landscape pixels plus a display matrix), so that a player that honours it shows `size`.
    faststart: the MP4 index (moov) before the data, as streaming files have it (a cut then breaks a packet).
    vfr: irregular timestamps (gaps alternate between 0.4 and 1.6 frame intervals, mean rate = fps).
    preset: x264 preset (ultrafast has no B-frames; veryfast and slower reorder frames like camera files do).
    The container follows the suffix (.mp4, .mkv, .ts).
    """
    import av

    width, height = size
    turns = (rotation // 90) % 4
    stored_w, stored_h = (height, width) if turns % 2 else (width, height)
    rng = np.random.default_rng(seed)
    per_photo = int(round(seconds_per_photo * fps))
    n = per_photo * len(photo_files)
    times = _frame_times(n, fps, vfr)
    time_base = Fraction(1, 90000)
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = stored_w, stored_h, "yuv420p"
        stream.time_base = time_base
        stream.codec_context.time_base = time_base  # frame pts in 1/90000 s, so that irregular gaps survive
        stream.options = {"preset": preset, "crf": "23"}
        if gop is not None:
            stream.codec_context.gop_size = gop
        if rotation:
            stream.set_display_rotation(rotation)
        i = 0
        for photo in photo_files:
            canvas = _cover(photo, width, height, zoom=1.15)
            for j in range(per_photo):
                rgb = _pan(canvas, width, height, j / max(per_photo - 1, 1)).astype(np.float32)
                rgb += rng.normal(0.0, noise, rgb.shape).astype(np.float32)
                stored = np.ascontiguousarray(np.rot90(np.clip(rgb, 0, 255).astype(np.uint8), -turns))
                frame = av.VideoFrame.from_ndarray(stored, format="rgb24")
                frame.pts = int(round(times[i] / time_base))
                frame.time_base = time_base
                out.mux(stream.encode(frame))
                i += 1
        out.mux(stream.encode(None))
    starts = tuple(times[k * per_photo] for k in range(len(photo_files)))
    if vfr:  # the photo boundaries follow the frames, not the nominal seconds
        starts = tuple(k * seconds_per_photo for k in range(len(photo_files)))
    return Clip(Path(path), size, float(fps), n, tuple(photo_files), starts, seconds_per_photo, tuple(times))


def truncate(src: Path, dst: Path, fraction: float) -> Path:
    """The first `fraction` of src's bytes (a download cut short, a camera that lost power)."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def not_video(path: Path) -> Path:
    """A file with a video name whose bytes are text."""
    path.write_text("this is a shopping list, not a video\n" * 200)
    return path


# -- a localhost HTTP server: serves files, optionally stopping mid-way ------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_Server"

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        data = self.server.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        self.server.requests += 1
        self.server.agents.append(self.headers.get("User-Agent", ""))
        cut = self.server.cut_after
        limit = self.server.cut_requests
        stop = cut is not None and (limit is None or self.server.requests <= limit)
        self.send_response(200)
        self.send_header("Content-Type", "video/mp2t")
        self.send_header("Content-Length", str(len(data)))  # the full size: a cut is a premature end
        self.end_headers()
        try:
            self.wfile.write(data[: int(len(data) * cut)] if stop and cut is not None else data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return
        if stop and self.server.stall:  # a stream that hangs: the connection stays open, nothing more comes
            self.server.stopping.wait(60)
        if stop:
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    files: dict[str, bytes]
    cut_after: float | None
    cut_requests: int | None
    stall: bool
    stopping: threading.Event
    agents: list[str]  # the User-Agent of each request
    requests: int


class HttpVideoServer:
    """`with HttpVideoServer({"a.ts": path}, cut_after=0.5, cut_requests=1) as srv: srv.url("a.ts")`.

    cut_after: serve only this fraction of the bytes (while announcing the full length), then close: FFmpeg sees
    a premature end. cut_requests: cut only the first N requests (a dropped stream that comes back); None cuts all.
    stall: after the cut, keep the connection open and send nothing (a hung stream) instead of closing it.
    stop() shuts the server down (a stream whose server is gone: reconnects are refused).
    """

    def __init__(self, files: dict[str, Path], cut_after: float | None = None, cut_requests: int | None = None,
                 stall: bool = False):
        self._srv = _Server(("127.0.0.1", 0), _Handler)
        self._srv.files = {name: Path(p).read_bytes() for name, p in files.items()}
        self._srv.cut_after, self._srv.cut_requests, self._srv.requests = cut_after, cut_requests, 0
        self._srv.stall, self._srv.stopping, self._srv.agents = stall, threading.Event(), []
        self._thread = threading.Thread(target=self._srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def requests(self) -> int:
        return self._srv.requests

    @property
    def agents(self) -> list[str]:
        return self._srv.agents

    def url(self, name: str) -> str:
        host, port = self._srv.server_address[:2]
        return f"http://{host}:{port}/{name}"

    def __enter__(self) -> "HttpVideoServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._srv.stopping.set()
        if self._thread.is_alive():
            self._srv.shutdown()
            self._thread.join(timeout=5)
        self._srv.server_close()

    def __exit__(self, *exc: object) -> None:
        self.stop()


"""The search page over an index with videos: a frame's thumbnail, its video served by item id only (Range requests
for seeking), its details with the video and the time, /search answers with the time; the no-escape rules on the
new /video route (no ../, absolute paths, encoded slashes, unknown or removed ids); and in Chromium, a hit on a
frame opens a <video> that plays from the frame's time."""

from __future__ import annotations

import base64
import io
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("av", reason="video input needs clip-rt[video] (PyAV)")

from video_fixtures import make_video, photos  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def video_index(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two videos (an .mp4 and an .mkv, 256 x 256, two photos each), one photo, and a secret file beside them."""
    import clip_rt
    from clip_rt.search import update_images
    from clip_rt.video.index_frames import VideoFrameReader

    base = tmp_path_factory.mktemp("page-video")
    media = base / "media"
    media.mkdir()
    ph = photos(5)
    clips = [make_video(media / "a.mp4", ph[0:2], size=(256, 256), fps=10, seconds_per_photo=1.5),
             make_video(media / "b.mkv", ph[2:4], size=(256, 256), fps=10, seconds_per_photo=1.5, seed=1)]
    shutil.copyfile(ph[4], media / "photo.jpg")
    (base / "secret.txt").write_text("not a photo")
    model = clip_rt.load(tiny_package)
    root = base / "media.index"
    update_images(root, model, [media], videos=VideoFrameReader(model, max_cosine=0.995))[0].close()
    conn = sqlite3.connect(f"file:{root / 'index.sqlite'}?mode=ro", uri=True)
    frames = conn.execute("SELECT vector_id, video, time FROM frames ORDER BY vector_id").fetchall()
    (photo_id,) = conn.execute("SELECT vector_id FROM items WHERE item = ?", (str(media / "photo.jpg"),)).fetchone()
    conn.close()
    return {"root": root, "base": base, "clips": clips, "frames": frames, "photo_id": photo_id, "photos": ph}


def _client(root: Path):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from clip_rt.serve.page import install_page

    app = FastAPI()
    install_page(app, root)
    return TestClient(app)


def test_frames_serve_their_thumbnail_video_and_details(video_index: dict) -> None:
    client = _client(video_index["root"])
    assert {f[1] for f in video_index["frames"]} == {str(c.path) for c in video_index["clips"]}
    for vid, video, t in video_index["frames"]:
        r = client.get(f"/thumb/{vid}")
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (256, 256)
        assert r.headers["etag"].endswith(f'@{t:.3f}"')  # the frames of one video share its sha256
        r = client.get(f"/video/{vid}")
        assert r.status_code == 200 and r.content == Path(video).read_bytes()
        assert r.headers["content-type"] == ("video/mp4" if video.endswith(".mp4") else "video/x-matroska")
        part = client.get(f"/video/{vid}", headers={"range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == Path(video).read_bytes()[100:200]
        d = client.get(f"/item/{vid}").json()
        assert (d["id"], d["file"], d["time"], d["video"], d["width"], d["height"]) == (vid, video, t, True, 256, 256)
        assert client.get(f"/photo/{vid}").status_code == 404  # a frame's item is not a file
    photo = video_index["photo_id"]
    assert client.get(f"/video/{photo}").status_code == 404 and client.get(f"/photo/{photo}").status_code == 200
    assert "time" not in client.get(f"/item/{photo}").json()
    f = client.get("/facets").json()
    assert (f["count"], f["videos"], f["frames"]) == (1 + len(video_index["frames"]), 2, len(video_index["frames"]))


def test_the_video_route_reads_no_other_file(video_index: dict) -> None:
    client = _client(video_index["root"])
    secret = video_index["base"] / "secret.txt"
    video = str(video_index["clips"][0].path)
    bad = ["../secret.txt", "..%2Fsecret.txt", "..%2F..%2Fsecret.txt", "%2E%2E%2Fsecret.txt", str(secret),
           "%2F" + str(secret).lstrip("/").replace("/", "%2F"), "/etc/passwd", "%2Fetc%2Fpasswd", "1.0", "-1", "0x1",
           "1%00", " 1", "99999", "999999999999999999999", "abc", "1;2", "index.sqlite", video,
           video.replace("/", "%2F"), "a.mp4", f"{video_index['frames'][0][0]}%2F..%2F..%2Fsecret.txt",
           f"{video_index['frames'][0][0]}#t=1"]
    for raw in bad:
        r = client.get(f"/video/{raw}")
        assert r.status_code == 404 or (raw.endswith("#t=1") and r.status_code == 200), (raw, r.status_code)
        assert b"not a photo" not in r.content


def test_removed_and_deleted_videos_are_gone(video_index: dict, tmp_path: Path) -> None:
    from clip_rt.search import remove_items

    copy = tmp_path / "copy.index"
    shutil.copytree(video_index["root"], copy)
    client = _client(copy)  # serving while the index changes
    a = str(video_index["clips"][0].path)
    gone = [vid for vid, video, _ in video_index["frames"] if video == a]
    assert client.get(f"/video/{gone[0]}").status_code == 200
    remove_items(copy, [a])
    for vid in gone:
        for route in ("thumb", "video", "item"):
            assert client.get(f"/{route}/{vid}").status_code == 404, (route, vid)
    assert Path(a).is_file()  # the index forgot it; the file is still there
    kept = [vid for vid, video, _ in video_index["frames"] if video != a]
    assert all(client.get(f"/video/{vid}").status_code == 200 for vid in kept)


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"{CHROMIUM} is missing (apt-get install chromium)")
def test_a_frame_hit_plays_the_video_from_its_time(video_index: dict) -> None:
    """`clip-rt ui` on the index: /search answers a frame with its video and time; on the page, the photo of the
    second shot of a.mp4 as the query, a click on the hit opens the video at the frame's time."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (clip-rt[test])")
    import httpx
    from test_page_browser import _start, _stop

    clip = video_index["clips"][0]
    frame_id, _, t = [f for f in video_index["frames"] if f[1] == str(clip.path)][-1]
    thumb = httpx.Client()
    proc, url = _start(video_index["root"])
    try:
        query = base64.b64encode(thumb.get(f"{url}/thumb/{frame_id}").content).decode()
        hits = thumb.post(url + "/search", json={"image": query, "top_k": 3}, timeout=60).json()["results"]
        assert hits[0]["id"] == frame_id and hits[0]["file"] == str(clip.path) and hits[0]["time"] == t
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready='1']")
            n = len(video_index["frames"])
            assert page.inner_text("#status") == f"1 photo and 2 videos ({n} frames) indexed"
            shot = video_index["base"] / "frame.jpg"
            shot.write_bytes(base64.b64decode(query))
            page.set_input_files("#file", str(shot))
            page.wait_for_selector(f"#grid li[data-id='{frame_id}'] .time")
            assert page.inner_text(f"#grid li[data-id='{frame_id}'] .time").endswith(f"{t:.1f}".rjust(3, "0"))
            page.click(f"#grid li[data-id='{frame_id}']")
            page.wait_for_selector("#detail-video:not([hidden])")
            assert page.is_hidden("#detail-img")
            src = page.get_attribute("#detail-video", "src")
            assert src == f"video/{frame_id}#t={t:.3f}"
            # the browser decodes the video and stands at the frame's time (H.264 in Chromium)
            page.wait_for_function("document.getElementById('detail-video').readyState >= 1", timeout=20000)
            at = page.evaluate("document.getElementById('detail-video').currentTime")
            assert abs(at - t) < 0.5, (at, t)
            assert page.inner_text("#detail-path") == str(clip.path)
            page.keyboard.press("Escape")
            assert page.get_attribute("#detail-video", "src") is None
            browser.close()
        assert errors == []
    finally:
        thumb.close()
        _stop(proc)

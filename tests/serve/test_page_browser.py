"""The search page in a real browser: Playwright driving Debian's Chromium (/usr/bin/chromium) against `clip-rt ui`
serving an index of ../shared photos (the tiny test package). What a person does on the page, checked against the
HTTP API and the index's SQLite file: a caption, a photo on the file input, "more like this", each filter and their
combination, a reloaded URL, the back button, the keyboard, a text pool, and no file outside the index readable.
Skipped with the reason where Chromium or Playwright is missing (README: apt-get install chromium)."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import http.client
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "search-page.png"
CAMERAS = [("Canon", "Canon EOS 5D"), ("NIKON CORPORATION", "NIKON D750"), ("Apple", "iPhone 12"), ("", "")]
FOLDERS = ["2019/summer", "2019/winter", "2021/trip", "2023"]
N_PHOTOS = 240

pytestmark = [pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                                 reason=f"{CHROMIUM} is missing (apt-get install chromium)")]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (clip-rt[test])")
httpx = pytest.importorskip("httpx")

from clip_rt.serve.loadgen import free_port  # noqa: E402


# -- fixtures: photos with EXIF, the index, the server, the browser ---------------------------------------------------
def _photos(data_dir: Path, out: Path) -> list[Path]:
    """N_PHOTOS copies of the shared photos in four folders, with EXIF cameras (three, and none), dates for four in
    five (2018-2023; the rest dated by their mtime) and a few rotated by their EXIF orientation."""
    sources = sorted((data_dir / "flickr8k" / "images").glob("*.jpg"))[:150]
    sources += sorted((data_dir / "imagenet_sample" / "images").glob("*"))[:N_PHOTOS - len(sources)]
    made = []
    for i, src in enumerate(sources):
        folder = out / FOLDERS[i % 4]
        folder.mkdir(parents=True, exist_ok=True)
        ex = Image.Exif()
        make, model = CAMERAS[i % 4 if i % 7 else 3]
        if make:
            ex[0x010F], ex[0x0110] = make, model
        if i % 5:
            ex.get_ifd(0x8769)[0x9003] = f"{2018 + i % 6}:{1 + i % 12:02d}:{1 + i % 28:02d} 12:00:00"
        if i % 17 == 0:
            ex[0x0112] = 6
        path = folder / f"{src.stem}-{i:03d}.jpg"
        with Image.open(src) as im:
            im.convert("RGB").save(path, quality=88, exif=ex)
        made.append(path)
    return made


@pytest.fixture(scope="module")
def photo_set(tiny_package: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from clip_rt.cli import main

    base = tmp_path_factory.mktemp("page-browser")
    files = _photos(data_dir, base / "photos")
    (base / "secret.txt").write_text("not a photo")
    index = base / "photos.index"
    assert main(["index", str(tiny_package), str(base / "photos"), "-o", str(index), "--decode", "exact"]) == 0
    captions = {}
    with open(data_dir / "flickr8k" / "captions.csv", newline="") as f:
        for row in csv.DictReader(f):
            captions.setdefault(Path(row["file"]).stem, row["caption"])
    return {"base": base, "index": index, "files": files, "captions": captions}


def _start(index: Path, *extra: str):
    proc = subprocess.Popen([sys.executable, "-m", "clip_rt.cli", "ui", str(index), "--port", str(free_port()), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()  # the URL, once the server accepts connections
    if not line.startswith("http://"):
        proc.kill()
        raise AssertionError(f"clip-rt ui did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return proc, line.rstrip("/")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def server(photo_set: dict):
    proc, url = _start(photo_set["index"])
    yield url
    _stop(proc)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, server: str):
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(server + "/")
    pg.wait_for_selector("body[data-ready='1']")
    yield pg
    context.close()
    assert errors == []


# -- helpers ------------------------------------------------------------------------------------------------------
def settle(pg, action) -> None:
    """Run `action` and wait until the search it starts has rendered (and its first thumbnails painted)."""
    before = pg.evaluate("document.body.dataset.seq || ''")
    action()
    pg.wait_for_function(f"document.body.dataset.seq && document.body.dataset.seq !== {before!r} "
                         f"&& !document.body.dataset.busy")


def grid(pg) -> list[tuple[int, float]]:
    return pg.eval_on_selector_all("#grid li", "els => els.map(e => [Number(e.dataset.id), Number(e.dataset.score)])")


def api(server: str, **body) -> list[dict]:
    r = httpx.post(server + "/search", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["results"]


def same(pg, hits: list[dict]) -> None:
    got = grid(pg)
    assert [i for i, _ in got] == [h["id"] for h in hits]
    assert all(abs(s - round(h["score"], 4)) < 1e-4 for (_, s), h in zip(got, hits))


def load_all(pg) -> int:
    """Scroll until the page has every result (no '+' after the count); the number of tiles."""
    for _ in range(20):
        if "+" not in pg.inner_text("#status"):
            break
        settle(pg, lambda: pg.evaluate("window.scrollTo(0, document.body.scrollHeight)"))
    return pg.locator("#grid li").count()


def allowed_count(index: Path, folder: str | None = None, after: str | None = None, before: str | None = None,
                  camera: str | None = None) -> int:
    """How many items a filter allows, from the index's SQLite file, computed here in Python."""
    conn = sqlite3.connect(f"file:{index / 'index.sqlite'}?mode=ro", uri=True)
    n = 0
    for item, mtime_ns, taken, cam in conn.execute(
            "SELECT i.item, i.mtime_ns, p.taken, p.camera FROM items i LEFT JOIN photos p USING (vector_id)"):
        day = dt.datetime.fromtimestamp(taken if taken is not None else mtime_ns // 10**9, dt.timezone.utc).date()
        if folder and not item.startswith(folder.rstrip("/") + "/"):
            continue
        if (after and day < dt.date.fromisoformat(after)) or (before and day > dt.date.fromisoformat(before)):
            continue
        if camera and cam != camera:
            continue
        n += 1
    conn.close()
    return n


# -- the tests ----------------------------------------------------------------------------------------------------
def test_caption_shows_the_api_results_in_order(page, server: str, photo_set: dict) -> None:
    caption = photo_set["captions"][photo_set["files"][3].stem.rsplit("-", 1)[0]]
    settle(page, lambda: (page.fill("#q", caption), page.press("#q", "Enter")))
    same(page, api(server, text=caption, top_k=60))
    assert page.evaluate("window.clipRtLastMs") > 0  # Enter -> first thumbnails painted, measured in the page
    assert page.eval_on_selector_all("#grid li img", "els => els.slice(0, 8).every(i => i.complete && "
                                                     "i.naturalWidth > 0)")
    assert "q=" in page.url
    n = load_all(page)  # scrolling loads the rest
    assert n == N_PHOTOS and [i for i, _ in grid(page)] == [h["id"] for h in api(server, text=caption, top_k=n)]
    page.evaluate("window.scrollTo(0, 0)")
    shot = photo_set["base"] / "search-page.png"
    page.set_viewport_size({"width": 1000, "height": 620})
    page.screenshot(path=str(shot))
    if not SCREENSHOT.is_file() or os.environ.get("CLIP_RT_UPDATE_SCREENSHOT"):  # the README's picture
        with Image.open(shot) as im:  # a 256-colour palette: about a third of the bytes of the full-colour PNG
            im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(SCREENSHOT, optimize=True)


def test_a_photo_on_the_file_input(page, server: str, photo_set: dict) -> None:
    photo = photo_set["files"][10]
    settle(page, lambda: page.set_input_files("#file", str(photo)))
    hits = api(server, image=base64.b64encode(photo.read_bytes()).decode(), top_k=60)
    same(page, hits)
    assert hits[0]["file"] == str(photo) and hits[0]["score"] > 0.999  # the photo itself first
    assert page.is_visible("#query-image")
    settle(page, lambda: (page.fill("#q", "a dog"), page.press("#q", "Enter")))  # text and photo together
    assert page.is_visible("#weight-box")
    same(page, api(server, text="a dog", image=base64.b64encode(photo.read_bytes()).decode(), text_weight=0.5,
                   top_k=60))


@pytest.mark.parametrize("how", ["drop", "paste"])
def test_a_photo_dropped_or_pasted(page, server: str, photo_set: dict, how: str) -> None:
    """The drop and paste handlers, with a real File in a DataTransfer (what a drag from the desktop or a paste of
    a copied image gives the page)."""
    photo = photo_set["files"][20]
    b64 = base64.b64encode(photo.read_bytes()).decode()
    script = """([b64, how]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "query.jpg", {type: "image/jpeg"}));
        const ev = how === "drop" ? new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true})
                                  : new ClipboardEvent("paste", {clipboardData: dt, bubbles: true, cancelable: true});
        document.body.dispatchEvent(ev);
    }"""
    settle(page, lambda: page.evaluate(script, [b64, how]))
    hits = api(server, image=b64, top_k=60)
    same(page, hits)
    assert hits[0]["file"] == str(photo)


def test_detail_and_more_like_this(page, server: str) -> None:
    settle(page, lambda: (page.fill("#q", "a child playing"), page.press("#q", "Enter")))
    third = grid(page)[2][0]
    page.click("#grid li >> nth=2")
    page.wait_for_selector("#detail:not([hidden])")
    item = httpx.get(f"{server}/item/{third}").json()
    page.wait_for_function("document.getElementById('detail-camera').textContent !== '\u2026'")
    assert page.inner_text("#detail-path") == item["file"]
    assert page.inner_text("#detail-camera") == (item["camera"] or "unknown")
    assert item["date"].replace("T", " ") in page.inner_text("#detail-date")
    assert page.evaluate("document.getElementById('detail-img').naturalWidth") > 0 or \
        page.wait_for_function("document.getElementById('detail-img').naturalWidth > 0")
    settle(page, lambda: page.click("#like"))
    assert f"like={third}" in page.url and page.is_hidden("#detail") and page.is_visible("#like-banner")
    page.wait_for_function(f"document.getElementById('like-name').textContent === {Path(item['file']).name!r}")
    hits = api(server, like=third, top_k=60)
    same(page, hits)
    assert hits[0]["id"] == third  # its own stored vector: itself first, nothing re-embedded


@pytest.mark.parametrize("filters", [
    {"folder": "2019"}, {"folder": "2021/trip"}, {"after": "2019-01-01", "before": "2020-12-31"},
    {"camera": "NIKON D750"}, {"folder": "2019/summer", "camera": "Canon EOS 5D", "after": "2018-06-01"}])
def test_each_filter_against_sqlite(page, server: str, photo_set: dict, filters: dict) -> None:
    base = photo_set["base"] / "photos"
    values = {**filters, **({"folder": str(base / filters["folder"])} if "folder" in filters else {})}
    settle(page, lambda: (page.fill("#q", "people outside"), page.press("#q", "Enter")))
    for key, value in values.items():
        if key in ("folder", "camera"):
            settle(page, lambda: page.select_option(f"#{key}", value))
        else:
            settle(page, lambda: (page.fill(f"#{key}", value), page.dispatch_event(f"#{key}", "change")))
    want = allowed_count(photo_set["index"], **values)
    assert 0 < want < N_PHOTOS
    assert load_all(page) == want
    ids = [i for i, _ in grid(page)]
    assert ids == [h["id"] for h in api(server, text="people outside", top_k=N_PHOTOS, **values)]
    for key, value in values.items():
        assert f"{key}=" in page.url
    page.reload()  # the URL alone brings the same state back
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_function("document.body.dataset.seq && !document.body.dataset.busy")
    assert page.input_value("#q") == "people outside"
    for key, value in values.items():
        assert page.input_value(f"#{key}") == value
    assert [i for i, _ in grid(page)] == ids[:len(grid(page))]


def test_shared_link_and_back_button(page, server: str, photo_set: dict) -> None:
    folder = str(photo_set["base"] / "photos" / "2023")
    link = f"{server}/?q=a+red+car&camera=Apple+iPhone+12&folder={folder}"
    settle(page, lambda: page.goto(link))
    assert page.input_value("#q") == "a red car" and page.input_value("#camera") == "Apple iPhone 12"
    same(page, api(server, text="a red car", camera="Apple iPhone 12", folder=folder, top_k=60))
    settle(page, lambda: (page.fill("#q", "a boat"), page.press("#q", "Enter")))
    settle(page, lambda: page.go_back())
    assert page.input_value("#q") == "a red car"
    same(page, api(server, text="a red car", camera="Apple iPhone 12", folder=folder, top_k=60))
    settle(page, lambda: page.go_forward())
    assert page.input_value("#q") == "a boat"


def test_keyboard(page) -> None:
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "q"
    settle(page, lambda: (page.keyboard.type("a dog in the snow"), page.keyboard.press("Enter")))
    page.keyboard.press("ArrowDown")
    assert page.evaluate("document.activeElement.dataset.index") == "0"
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.dataset.index") == "1"
    page.keyboard.press("ArrowDown")  # one row down: as many tiles on as the grid has columns
    cols = page.evaluate("Math.round(document.getElementById('grid').clientWidth / "
                         "document.querySelector('#grid li').getBoundingClientRect().width)")
    assert int(page.evaluate("document.activeElement.dataset.index")) in (1 + cols, cols, 2 + cols)
    page.keyboard.press("Enter")
    page.wait_for_selector("#detail:not([hidden])")
    name = page.inner_text("#detail-name")
    page.keyboard.press("ArrowRight")
    page.wait_for_function(f"document.getElementById('detail-name').textContent !== {name!r}")
    page.keyboard.press("Escape")
    assert page.is_hidden("#detail") and page.evaluate("document.activeElement.tagName") == "LI"


def _raw_get(server: str, path: str) -> tuple[int, bytes]:
    """A GET with the path sent exactly as written (no client-side normalization of ../ or %2F)."""
    u = urlsplit(server)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.putrequest("GET", path, skip_host=False, skip_accept_encoding=True)
    conn.endheaders()
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body


def test_no_request_reads_another_file(server: str, photo_set: dict) -> None:
    secret = photo_set["base"] / "secret.txt"
    index_db = photo_set["index"] / "index.sqlite"
    tries = ["../secret.txt", "..%2Fsecret.txt", "%2E%2E/%2E%2E/secret.txt", str(secret).lstrip("/"),
             "%2F" + str(secret).lstrip("/").replace("/", "%2F"), str(index_db).lstrip("/"), "..%2F..%2Fetc%2Fpasswd",
             "-1", "1e3", "0x1", "99999", "1.0"]
    for route in ("thumb", "photo", "item"):
        for t in tries:
            status, body = _raw_get(server, f"/{route}/{t}")
            assert status == 404, (route, t, status)
            assert b"not a photo" not in body and b"SQLite format" not in body
    for t in ["../page.py", "..%2Fpage.py", "%2E%2E%2F%2E%2E%2Fsearch%2Fstore.py", "/etc/passwd", "x/../page.js"]:
        assert _raw_get(server, f"/static/{t}")[0] == 404, t
    status, body = _raw_get(server, f"/static/../../{secret.name}")
    assert status == 404 and b"not a photo" not in body


def test_removed_items_are_404(photo_set: dict, tiny_package: Path, tmp_path: Path) -> None:
    """Items removed with --remove (and the files still on disk): their ids answer 404 on the running server."""
    from clip_rt.cli import main

    index = tmp_path / "copy.index"
    shutil.copytree(photo_set["index"], index)
    proc, url = _start(index)
    try:
        conn = sqlite3.connect(f"file:{index / 'index.sqlite'}?mode=ro", uri=True)
        gone = [r[0] for r in conn.execute("SELECT vector_id FROM items WHERE item LIKE ?", ("%/2023/%",))]
        conn.close()
        assert gone and httpx.get(f"{url}/photo/{gone[0]}").status_code == 200
        assert main(["index", "-o", str(index), "--remove", str(photo_set["base"] / "photos" / "2023")]) == 0
        for vid in gone:
            for route in ("thumb", "photo", "item"):
                assert httpx.get(f"{url}/{route}/{vid}").status_code == 404, (route, vid)
    finally:
        _stop(proc)


def test_text_pool_shows_texts(browser, tiny_package: Path, photo_set: dict, tmp_path: Path) -> None:
    from clip_rt.cli import main

    texts = tmp_path / "captions.txt"
    texts.write_text("\n".join(sorted(set(photo_set["captions"].values()))[:80]) + "\n")
    pool = tmp_path / "captions.index"
    assert main(["index", str(tiny_package), "--texts", str(texts), "-o", str(pool)]) == 0
    proc, url = _start(pool)
    try:
        context = browser.new_context()
        pg = context.new_page()
        pg.goto(url)
        pg.wait_for_selector("body[data-ready='1']")
        assert pg.evaluate("document.body.classList.contains('texts')") and pg.is_hidden("#filters")
        photo = photo_set["files"][0]
        settle(pg, lambda: pg.set_input_files("#file", str(photo)))  # image -> text
        hits = api(url, image=base64.b64encode(photo.read_bytes()).decode(), top_k=60)
        shown = pg.eval_on_selector_all("#grid li", "els => els.map(e => e.firstChild.textContent)")
        assert shown == [h["file"] for h in hits] and pg.locator("#grid li img").count() == 0
        context.close()
    finally:
        _stop(proc)


def test_token_and_warning(photo_set: dict, browser) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "clip_rt.cli", "ui", str(photo_set["index"]), "--port",
                             str(free_port()), "--host", "0.0.0.0", "--token", "s3cret"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        link = proc.stdout.readline().strip()
        assert link.endswith("/?token=s3cret"), link
        base = link.split("/?")[0]
        assert httpx.get(base + "/facets").status_code == 401
        assert httpx.post(base + "/search", json={"text": "a dog"}).status_code == 401
        context = browser.new_context()
        pg = context.new_page()
        pg.goto(link)
        pg.wait_for_selector("body[data-ready='1']")
        assert "token" not in pg.url  # kept for the tab, out of the address bar
        settle(pg, lambda: (pg.fill("#q", "a dog"), pg.press("#q", "Enter")))
        assert pg.locator("#grid li").count() == 60
        assert pg.eval_on_selector_all("#grid li img", "els => els.slice(0, 4).every(i => i.naturalWidth > 0)")
        context.close()
    finally:
        _stop(proc)
        err = proc.stderr.read()
    assert "warning: --host 0.0.0.0" in err and "photos" in err


def test_serve_with_an_index_serves_the_page(photo_set: dict, tiny_package: Path) -> None:
    """`clip-rt serve PKG --index INDEX`: the page at / beside the API, and /search with filters and ids."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "clip_rt.cli", "serve", str(tiny_package), "--index",
                             str(photo_set["index"]), "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for line in proc.stderr:  # "clip-rt serve: PKG at URL ..." once it accepts connections
            seen.append(line)
            if f"127.0.0.1:{port}" in line:
                break
        else:
            raise AssertionError("clip-rt serve did not start: " + "".join(seen)[-2000:])
        url = f"http://127.0.0.1:{port}"
        page = httpx.get(url + "/")
        assert page.status_code == 200 and "static/page.js" in page.text
        assert httpx.get(url + "/facets").json()["count"] == N_PHOTOS
        hits = httpx.post(url + "/search", json={"text": "a dog", "top_k": 5, "camera": "NIKON D750"}).json()["results"]
        assert len(hits) == 5
        for h in hits:
            assert httpx.get(f"{url}/item/{h['id']}").json()["camera"] == "NIKON D750"
        assert httpx.get(url + "/healthz").status_code == 200  # the API is still there
    finally:
        _stop(proc)
    assert "warning" not in "".join(seen)  # on 127.0.0.1: nothing to warn about

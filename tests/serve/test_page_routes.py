"""The search page's routes over a real photo index: thumbnails and photos by item id only, 404 for traversal,
absolute paths, encoded slashes, unknown and removed ids; item details, facets, the static files, the token."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def photo_index(tiny_package: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 photos in two folders, indexed with metadata and thumbnails; a secret file beside them."""
    import clip_rt
    from clip_rt.search import update_images
    from clip_rt.search.photo_index import encode_photo_files
    from clip_rt.search.photo_store import ensure_schema, write_photos
    from clip_rt.search.store import Store

    base = tmp_path_factory.mktemp("page")
    photos = base / "photos"
    for i, src in enumerate(sorted((data_dir / "flickr8k" / "images").glob("*.jpg"))[:12]):
        folder = photos / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, folder / f"p{i:02d}.jpg")
    (base / "secret.txt").write_text("not a photo")
    model = clip_rt.load(tiny_package)
    root = base / "photos.index"
    update_images(root, model, [photos])
    store = Store.open(root, writable=True)
    ensure_schema(store.conn)
    rows = list(store.rows())
    _, ok, _, extras = encode_photo_files(model, [r[1] for r in rows])
    ids = {r[1]: r[0] for r in rows}
    store.conn.execute("BEGIN IMMEDIATE")
    write_photos(store.conn, [(ids[f], meta, thumb) for f, (meta, thumb) in zip(ok, extras)])
    store.conn.execute("COMMIT")
    store.close()
    return root


def _client(root: Path, token: str | None = None):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from clip_rt.serve.page import install_page

    app = FastAPI()
    install_page(app, root, token)
    return TestClient(app)


def test_thumbs_photos_and_details_by_id(photo_index: Path) -> None:
    from clip_rt.search.store import Store

    client = _client(photo_index)
    store = Store.open(photo_index)
    rows = list(store.rows())
    store.close()
    for vid, path, size, *_ in rows:
        r = client.get(f"/thumb/{vid}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert Image.open(__import__("io").BytesIO(r.content)).format == "JPEG"
        r = client.get(f"/photo/{vid}")
        assert r.status_code == 200 and r.content == Path(path).read_bytes()
        d = client.get(f"/item/{vid}").json()
        assert (d["id"], d["file"], d["size"], d["thumbnail"]) == (vid, path, size, True)
        assert d["width"] > 0 and d["height"] > 0 and d["date_source"] == "file"
    f = client.get("/facets").json()
    assert f["kind"] == "images" and f["count"] == 12
    counts = {x["folder"]: x["count"] for x in f["folders"]}
    assert counts[str(photo_index.parent / "photos")] == 12 and counts[str(photo_index.parent / "photos" / "a")] == 6


def test_no_request_reads_another_file(photo_index: Path) -> None:
    client = _client(photo_index)
    secret = photo_index.parent / "secret.txt"
    bad = ["../secret.txt", "..%2Fsecret.txt", "..%2F..%2Fsecret.txt", "%2E%2E%2Fsecret.txt", str(secret),
           "%2F" + str(secret).lstrip("/").replace("/", "%2F"), "/etc/passwd", "%2Fetc%2Fpasswd", "1.0", "-1", "0x1",
           "1%00", " 1", "99999", "999999999999999999999", "abc", "1;2", "index.sqlite"]
    for route in ("thumb", "photo", "item"):
        for raw in bad:
            r = client.get(f"/{route}/{raw}")
            assert r.status_code == 404, (route, raw, r.status_code)
            assert b"not a photo" not in r.content
    for raw in ["../page.py", "..%2Fpage.py", "%2E%2E%2Fpage.py", "/etc/passwd", "..%2F..%2Fsearch%2Findex.py"]:
        r = client.get(f"/static/{raw}")
        assert r.status_code == 404, raw
    assert client.get("/static/page.js").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "static/page.js" in page.text and "http" not in page.text.replace(
        "http-equiv", "")  # nothing from another host


def test_removed_items_are_gone(photo_index: Path, tmp_path: Path) -> None:
    from clip_rt.search import remove_items
    from clip_rt.search.store import Store

    copy = tmp_path / "copy.index"
    shutil.copytree(photo_index, copy)
    client = _client(copy)  # serving while the index changes
    store = Store.open(copy)
    gone = [(vid, path) for vid, path, *_ in store.rows() if "/a/" in path]
    store.close()
    assert client.get(f"/photo/{gone[0][0]}").status_code == 200
    remove_items(copy, [str(Path(gone[0][1]).parent)])
    for vid, path in gone:
        for route in ("thumb", "photo", "item"):
            assert client.get(f"/{route}/{vid}").status_code == 404, (route, vid)
        assert Path(path).is_file()  # the file is still there; only the index forgot it
    assert client.get("/facets").json()["count"] == 6


def test_token(photo_index: Path) -> None:
    client = _client(photo_index, token="s3cret")
    assert client.get("/").status_code == 200 and client.get("/static/page.css").status_code == 200
    for path in ("/thumb/0", "/photo/0", "/item/0", "/facets"):
        assert client.get(path).status_code == 401 and "token" in client.get(path).json()["error"]
        assert client.get(path, headers={"authorization": "Bearer wrong"}).status_code == 401
        assert client.get(path, params={"token": "s3cret"}).status_code == 200
        assert client.get(path, headers={"authorization": "Bearer s3cret"}).status_code == 200


def test_thumbnails_revalidate_by_content(photo_index: Path) -> None:
    """No stale thumbnail after ids are renumbered: each answer carries the content's sha256 as its ETag and
    no-cache, and a matching If-None-Match gets a 304 without a body."""
    client = _client(photo_index)
    first = client.get("/thumb/0")
    tag = first.headers["etag"]
    assert first.headers["cache-control"] == "no-cache" and len(tag) == 66
    again = client.get("/thumb/0", headers={"if-none-match": tag})
    assert again.status_code == 304 and again.content == b""
    other = client.get("/thumb/1", headers={"if-none-match": tag})
    assert other.status_code == 200 and other.headers["etag"] != tag


def test_a_clip_rt_01_index_gets_no_page(model, data_dir: Path, tmp_path: Path, caplog, capsys) -> None:
    """A clip-rt 0.1 index folder still serves /search (no page, a warning how to convert); clip-rt ui refuses it
    in one line with the convert command."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from legacy_index import v1_of

    from clip_rt.cli import main
    from clip_rt.serve.page import install_page

    photos = sorted(str(p) for p in (data_dir / "flickr8k" / "images").glob("*.jpg"))[:4]
    old = v1_of(model, photos, tmp_path / "old.index")
    app = FastAPI()
    with caplog.at_level("WARNING", logger="clip_rt.serve"):
        install_page(app, old)
    assert "clip-rt index --convert" in caplog.text
    assert TestClient(app).get("/facets").status_code == 404
    capsys.readouterr()  # the warning above, where another test left a log handler on stderr
    assert main(["ui", str(old)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("clip-rt ui: error: ") and f"--convert {old}" in err[0]

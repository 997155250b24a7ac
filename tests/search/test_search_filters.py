"""Photo metadata, thumbnails and filtered search: EXIF reading, thumbnails, the photo tables kept in step with the
item table, and filtered top-10 equal to exact filtered search on 100 queries for the flat and FAISS engines."""

from __future__ import annotations

import datetime as dt
import io
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_rt.errors import InputError
from clip_rt.search.filtered import exact_subset, filtered_search
from clip_rt.search.photo_meta import PhotoMeta, camera_name, parse_exif_date, read_meta
from clip_rt.search.photo_store import (PhotoFilter, allowed_ids, ensure_schema, facets, item_details, read_photos,
                                        write_photos)
from clip_rt.search.thumbs import THUMB_EDGE, get_thumb, make_thumbnail, thumb_bytes


def exif_jpeg(img: Image.Image, make: str = "", model: str = "", orientation: int = 1, taken: str | None = None,
              offset: str | None = None) -> bytes:
    ex = Image.Exif()
    if make:
        ex[0x010F] = make
    if model:
        ex[0x0110] = model
    if orientation != 1:
        ex[0x0112] = orientation
    if taken is not None:
        ex.get_ifd(0x8769)[0x9003] = taken
    if offset is not None:
        ex.get_ifd(0x8769)[0x9011] = offset
    out = io.BytesIO()
    img.save(out, "JPEG", exif=ex, quality=90)
    return out.getvalue()


def _utc(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=dt.timezone.utc).timestamp())


# -- EXIF ---------------------------------------------------------------------------------------------------------
def test_read_meta_exif_fields_and_orientation() -> None:
    img = Image.new("RGB", (400, 300), (200, 30, 30))
    meta = read_meta(Image.open(io.BytesIO(exif_jpeg(img, "Canon", "Canon EOS 5D", 6, "2019:06:01 10:00:00",
                                                     "+02:00"))))
    assert meta == PhotoMeta(width=300, height=400, orientation=6, taken=_utc(2019, 6, 1, 8, 0, 0), make="Canon",
                             model="Canon EOS 5D")  # rotated 90 degrees: shown 300 wide; +02:00 is 08:00 UTC
    assert meta.camera == "Canon EOS 5D"
    plain = read_meta(Image.open(io.BytesIO(exif_jpeg(img, "FUJIFILM", "X-T3", 1, "2021:12:31 23:59:59"))))
    assert (plain.width, plain.height, plain.taken, plain.camera) == (400, 300, _utc(2021, 12, 31, 23, 59, 59),
                                                                       "FUJIFILM X-T3")
    bare = Image.new("RGB", (64, 48))
    buf = io.BytesIO()
    bare.save(buf, "PNG")
    assert read_meta(Image.open(buf)) == PhotoMeta(width=64, height=48)


def test_exif_dates_and_camera_names() -> None:
    assert parse_exif_date("0000:00:00 00:00:00") is None  # an unset camera clock
    assert parse_exif_date("    :  :     :  :  ") is None
    assert parse_exif_date(b"2020:02:29 12:00:00\x00") == _utc(2020, 2, 29, 12)
    assert parse_exif_date("2021:02:29 12:00:00") is None  # no such day
    assert parse_exif_date("2020:01:01 00:30:00", "-01:00") == _utc(2020, 1, 1, 1, 30)
    assert camera_name("NIKON CORPORATION", "NIKON D750") == "NIKON D750"
    assert camera_name("Apple", "iPhone 12") == "Apple iPhone 12"
    assert camera_name("", "X100V") == "X100V" and camera_name("Leica", "") == "Leica"


def test_damaged_exif_keeps_the_photo() -> None:
    img = Image.new("RGB", (40, 30))
    data = bytearray(exif_jpeg(img, "Canon", "EOS", 1, "2019:06:01 10:00:00"))
    at = data.find(b"Exif\x00\x00")
    data[at + 6:at + 40] = b"\xff" * 34  # the TIFF header and first IFD entries overwritten
    meta = read_meta(Image.open(io.BytesIO(bytes(data))))
    assert (meta.width, meta.height) == (40, 30)


# -- thumbnails ---------------------------------------------------------------------------------------------------
def test_thumbnail_is_upright_and_small(data_dir: Path) -> None:
    from clip_rt.decode import open_image

    photo = next((data_dir / "imagenet_sample" / "images").glob("*.JPEG"))
    src = Image.open(photo).convert("RGB")
    rotated = exif_jpeg(src, orientation=6)  # stored landscape, shown portrait
    shown = open_image(rotated)  # the indexer's decode: EXIF orientation applied
    thumb = Image.open(io.BytesIO(make_thumbnail(shown)))
    assert thumb.format == "JPEG"
    assert max(thumb.size) == min(THUMB_EDGE, max(src.size))
    assert (thumb.width < thumb.height) == (src.width > src.height)  # turned as the photo is shown
    tiny = Image.open(io.BytesIO(make_thumbnail(Image.new("RGB", (30, 20)))))
    assert tiny.size == (30, 20)  # never enlarged


# -- the photo tables ---------------------------------------------------------------------------------------------
def _store_with_photos(root: Path, n: int, dim: int, seed: int = 0, index_type: str = "flat"):
    """An index of n synthetic clustered vectors with synthetic photo rows: 8 folders, 4 cameras (and none), dates
    over 2015-2024 (a quarter without EXIF: dated by their mtime)."""
    from clip_rt.search import import_vectors
    from clip_rt.search.store import Store

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(32, dim))
    vecs = centres[rng.integers(0, 32, n)] + 0.35 * rng.normal(size=(n, dim))
    items = [f"/photos/{'abcdefgh'[i % 8]}/{'xy'[i % 3 % 2]}/img{i:06d}.jpg" for i in range(n)]
    import_vectors(root, items, vecs.astype(np.float32), {"kind": "images"}, index_type=index_type)
    store = Store.open(root, writable=True)
    ensure_schema(store.conn)
    cams = ["Canon EOS 5D", "NIKON D750", "Apple iPhone 12", "X100V", ""]
    taken = rng.integers(_utc(2015, 1, 1), _utc(2025, 1, 1), n)
    mtimes = rng.integers(_utc(2015, 1, 1), _utc(2025, 1, 1), n) * 1_000_000_000
    rows = []
    for vid, _item in enumerate(items):
        cam = cams[int(rng.integers(0, len(cams)))]
        exif_date = None if vid % 4 == 0 else int(taken[vid])
        rows.append((vid, PhotoMeta(width=640, height=480, taken=exif_date, make="", model=cam), None))
    store.conn.execute("BEGIN IMMEDIATE")
    write_photos(store.conn, rows)
    store.conn.executemany("UPDATE items SET mtime_ns = ? WHERE vector_id = ?",
                           [(int(m), i) for i, m in enumerate(mtimes)])
    store.conn.execute("COMMIT")
    return store, np.asarray(vecs, np.float32)


FILTERS = [PhotoFilter(folder="/photos/c"), PhotoFilter(folder="/photos/c/x"),
           PhotoFilter(after="2019-01-01", before="2019-12-31"), PhotoFilter(camera="NIKON D750"),
           PhotoFilter(folder="/photos/a", camera="X100V", after="2020-06-01"),
           PhotoFilter(before="2015-03-31"), PhotoFilter(camera="Apple iPhone 12", before="2018-01-01"),
           PhotoFilter(folder="/photos/e", after="2016-01-01", before="2022-12-31", camera="Canon EOS 5D")]


def _reference(conn: sqlite3.Connection, f: PhotoFilter) -> set[int]:
    """The allowed ids computed in Python from the raw rows (not through PhotoFilter.sql)."""
    out = set()
    for vid, item, mtime_ns, taken, camera in conn.execute(
            "SELECT i.vector_id, i.item, i.mtime_ns, p.taken, p.camera FROM items i JOIN photos p USING (vector_id)"):
        day = dt.datetime.fromtimestamp(taken if taken is not None else mtime_ns // 10**9, dt.timezone.utc).date()
        if f.folder and not item.startswith(f.folder + "/"):
            continue
        if (f.after and day < f.after) or (f.before and day > f.before) or (f.camera and camera != f.camera):
            continue
        out.add(vid)
    return out


def _exact_top(q: np.ndarray, vecs: np.ndarray, allowed: np.ndarray, k: int) -> list[list[int]]:
    """Exact filtered search by a full sort: score descending, then id."""
    s = q @ vecs[allowed].T  # [nq, n]
    return [[int(allowed[j]) for j in np.lexsort((allowed, -row))[:k]] for row in s]


@pytest.mark.parametrize("index_type", ["flat", "ivfsq"])
def test_filtered_top10_equals_exact_on_100_queries(tmp_path: Path, index_type: str) -> None:
    from clip_rt.search import Index

    store, vecs = _store_with_photos(tmp_path / "x.index", 20000 if index_type != "flat" else 6000, 64,
                                     index_type=index_type)
    try:
        for f in FILTERS:
            assert set(allowed_ids(store.conn, f).tolist()) == _reference(store.conn, f), f
    finally:
        store.close()
    index = Index.open(tmp_path / "x.index")
    assert index.engine.kind == index_type
    rng = np.random.default_rng(1)
    q = vecs[rng.choice(len(vecs), 100, replace=False)] + 0.2 * rng.normal(size=(100, vecs.shape[1]))
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    normed = np.asarray(index.vectors, np.float32)
    for f in FILTERS:
        allowed = allowed_ids(index.store.conn, f)
        assert len(allowed) > 0, f
        s, ids = filtered_search(index.engine, q, 10, index.vectors, index.live, allowed)
        want = _exact_top(q, normed, allowed, 10)
        assert [[int(x) for x in row if x >= 0] for row in ids] == want, f
        assert np.all(np.diff(s[ids >= 0].reshape(len(q), -1), axis=1) <= 1e-6)
    index.close()


def test_engine_path_is_never_short_and_keeps_recall(tmp_path: Path) -> None:
    """Forced through the FAISS engine (exact_rows=0): every result row has min(10, allowed) allowed items, and the
    top-10 agree with exact filtered search as the engine's own tuned recall says."""
    from clip_rt.search import Index

    store, vecs = _store_with_photos(tmp_path / "x.index", 20000, 64, seed=3, index_type="ivfsq")
    store.close()
    index = Index.open(tmp_path / "x.index")
    rng = np.random.default_rng(2)
    q = vecs[rng.choice(len(vecs), 100, replace=False)] + 0.2 * rng.normal(size=(100, vecs.shape[1]))
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    normed = np.asarray(index.vectors, np.float32)
    calls = []
    engine_search = index.engine.search
    index.engine.search = lambda *a, **kw: calls.append(a[1]) or engine_search(*a, **kw)  # counts, still searches
    for f in FILTERS + [PhotoFilter(after="2015-01-01"), PhotoFilter(folder="/photos/c")]:
        allowed = allowed_ids(index.store.conn, f)
        before = len(calls)
        s, ids = filtered_search(index.engine, q, 10, index.vectors, index.live, allowed, exact_rows=0)
        if len(allowed) >= 2000:  # a broad filter goes through the engine (narrow ones are cheaper scanned exactly)
            assert len(calls) > before, f
        allowed_set = set(allowed.tolist())
        for row in ids:
            got = [int(x) for x in row if x >= 0]
            assert len(got) == min(10, len(allowed)) and set(got) <= allowed_set, f
        want = _exact_top(q, normed, allowed, 10)
        recall = np.mean([len(set(a.tolist()) & set(b)) / len(b) for a, b in zip(ids, want)])
        assert recall >= 0.9, (f, recall)
    index.close()


def test_exact_subset_breaks_ties_by_id() -> None:
    vecs = np.zeros((50, 4), np.float32)
    vecs[:, 0] = 1.0  # every row scores the same
    s, ids = exact_subset(np.array([[1, 0, 0, 0]], np.float32), 5, vecs, np.arange(10, 50, dtype=np.int64))
    assert ids.tolist() == [[10, 11, 12, 13, 14]]


def test_filter_input_errors() -> None:
    with pytest.raises(InputError, match="after must be a date"):
        PhotoFilter(after="June 2019")
    with pytest.raises(InputError, match="empty"):
        PhotoFilter(after="2020-01-02", before="2020-01-01")
    assert not PhotoFilter(camera="").active and PhotoFilter(folder="/x").active


def test_photo_rows_follow_items_through_remove_and_compaction(tmp_path: Path) -> None:
    """The triggers: removing items takes their photo and thumbnail rows along; compaction renumbers them with
    their items. Facets and details read the result."""
    from clip_rt.search import remove_items
    from clip_rt.search.store import Store

    store, _ = _store_with_photos(tmp_path / "x.index", 200, 16)
    jpeg = make_thumbnail(Image.new("RGB", (300, 200), (0, 128, 255)))
    store.conn.execute("BEGIN IMMEDIATE")
    write_photos(store.conn, [(vid, None, jpeg) for vid in range(200)])
    store.conn.execute("COMMIT")
    first = store.conn.execute("SELECT item FROM items WHERE vector_id = 150").fetchone()[0]
    store.close()
    remove_items(tmp_path / "x.index", ["/photos/a", "/photos/b"])  # 50 of 200
    store = Store.open(tmp_path / "x.index", writable=True)
    assert store.conn.execute("SELECT COUNT(*) FROM photos").fetchone()[0] == 150
    assert thumb_bytes(store.conn) == (150, 150 * len(jpeg))
    before = {row[1]: read_photos(store.conn, [row[0]])[row[0]] for row in store.rows()}
    store.compact()  # ids renumbered 0..149
    assert store.live_ids().tolist() == list(range(150))
    after = {row[1]: read_photos(store.conn, [row[0]])[row[0]] for row in store.rows()}
    assert after == before
    vid = store.conn.execute("SELECT vector_id FROM items WHERE item = ?", (first,)).fetchone()[0]
    assert vid < 150 and get_thumb(store.conn, vid) == jpeg
    details = item_details(store.conn, vid)
    assert details is not None and details["file"] == first and details["thumbnail"] is True
    assert item_details(store.conn, 10_000) is None
    fac = facets(store.conn)
    counts = {f["folder"]: f["count"] for f in fac["folders"]}
    assert set(counts) == ({f"/photos/{c}/{s}" for c in "cdefgh" for s in "xy"} | {f"/photos/{c}" for c in "cdefgh"}
                           | {"/photos"})  # every folder with photos, and its parents up to the shared root
    assert counts["/photos"] == 150 and counts["/photos/c"] == counts["/photos/c/x"] + counts["/photos/c/y"] == 25
    assert {c["camera"] for c in fac["cameras"]} <= {"Canon EOS 5D", "NIKON D750", "Apple iPhone 12", "X100V"}
    assert fac["dates"]["first"] >= "2015-01-01" and fac["dates"]["last"] <= "2024-12-31"
    store.close()


def test_old_index_without_photo_tables(tmp_path: Path) -> None:
    """An index built before the photo tables: folder and date filters work from the item table, a camera filter
    allows nothing, details carry the file's date, facets list no cameras."""
    from clip_rt.search import import_vectors
    from clip_rt.search.store import Store

    import_vectors(tmp_path / "old.index", ["/p/a/1.jpg", "/p/b/2.jpg"], np.eye(2, 8, dtype=np.float32),
                   {"kind": "images"}, index_type="flat")
    store = Store.open(tmp_path / "old.index")
    assert allowed_ids(store.conn, PhotoFilter(folder="/p/a")).tolist() == [0]
    assert allowed_ids(store.conn, PhotoFilter(camera="X")).tolist() == []
    assert item_details(store.conn, 1)["file"] == "/p/b/2.jpg"
    assert facets(store.conn)["cameras"] == []
    assert get_thumb(store.conn, 0) is None and thumb_bytes(store.conn) == (0, 0)
    store.close()


# -- one decode for the embedding, the metadata and the thumbnail -------------------------------------------------
@pytest.mark.parametrize("decode", ["fast", "exact"])
def test_photo_files_embed_as_the_plain_path(model, data_dir: Path, tmp_path: Path, decode: str) -> None:
    """encode_photo_files gives the embeddings encode_image_files gives (same crops), the same per-file errors, and
    each photo's EXIF facts (full size even when decoded at a reduced scale) and an upright thumbnail."""
    from clip_rt.search.photo_index import encode_photo_files

    files = sorted(str(p) for p in (data_dir / "imagenet_sample" / "images").glob("*"))[:20]
    src = Image.open(files[0]).convert("RGB")
    turned = tmp_path / "turned.jpg"
    turned.write_bytes(exif_jpeg(src, "Canon", "Canon EOS 5D", 6, "2019:06:01 10:00:00"))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    files += [str(turned), str(tmp_path / "broken.jpg")]
    want, ok_want, err_want = model.encode_image_files(files, batch_size=8, decode=decode)
    emb, ok, errors, extras = encode_photo_files(model, files, batch_size=8, decode=decode)
    assert ok == ok_want and np.array_equal(emb, want)
    assert [(e.file, e.reason) for e in errors] == [(e.file, e.reason) for e in err_want]
    meta, thumb = extras[ok.index(str(turned))]
    assert (meta.width, meta.height, meta.camera, meta.taken) == (src.height, src.width, "Canon EOS 5D",
                                                                  _utc(2019, 6, 1, 10))
    small = Image.open(io.BytesIO(thumb))
    assert (small.width < small.height) == (src.width > src.height) and max(small.size) <= THUMB_EDGE
    for f, (m, t) in zip(ok, extras):
        with Image.open(f) as im:
            assert {m.width, m.height} == set(im.size)
        assert t is not None


# -- indexing keeps the photo rows in step ------------------------------------------------------------------------
def _exif_folder(data_dir: Path, folder: Path, n: int = 8) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, src in enumerate(sorted((data_dir / "flickr8k" / "images").glob("*.jpg"))[:n]):
        with Image.open(src) as im:
            data = exif_jpeg(im.convert("RGB"), "Canon" if i % 2 else "Apple", "Canon EOS 5D" if i % 2 else "iPhone 12",
                             6 if i == 0 else 1, f"201{i}:0{1 + i}:1{i} 08:00:00" if i < 6 else None)
        path = folder / ("sub" if i >= 4 else "") / f"p{i}.jpg"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        out.append(path)
    return out


def _rows(index_root: Path) -> dict[str, tuple]:
    conn = sqlite3.connect(f"file:{index_root / 'index.sqlite'}?mode=ro", uri=True)
    rows = {item: (taken, camera, w, h, orient, thumb is not None) for item, taken, camera, w, h, orient, thumb in
            conn.execute("SELECT i.item, p.taken, p.camera, p.width, p.height, p.orientation, t.data FROM items i "
                         "LEFT JOIN photos p USING (vector_id) LEFT JOIN thumbs t USING (vector_id)")}
    conn.close()
    return rows


def test_update_keeps_photo_rows_in_step(model, data_dir: Path, tmp_path: Path) -> None:
    import os

    from clip_rt.search import update_images

    files = _exif_folder(data_dir, tmp_path / "photos")
    root = tmp_path / "p.index"
    update_images(root, model, [tmp_path / "photos"])
    rows = _rows(root)
    assert len(rows) == 8 and all(r[5] for r in rows.values())  # every photo has metadata and a thumbnail
    first = rows[str(files[0])]
    with Image.open(files[0]) as im:
        assert (first[2], first[3], first[4]) == (im.height, im.width, 6)  # shown turned: width and height swap
    assert first[:2] == (_utc(2010, 1, 10, 8), "Apple iPhone 12") and rows[str(files[7])][0] is None
    moved = files[1].with_name("moved.jpg")
    os.rename(files[1], moved)  # same content, new path: its vector and its facts move along
    with Image.open(files[2]) as im:  # new content: re-read
        files[2].write_bytes(exif_jpeg(im.convert("RGB"), "FUJIFILM", "X-T3", 1, "2022:02:02 10:00:00"))
    files[3].unlink()
    os.utime(files[7], ns=(0, _utc(2020, 5, 5) * 10**9))  # touched, no EXIF date: dated by the new mtime
    _, report = update_images(root, model, [tmp_path / "photos"])
    assert (report.moved, report.changed, report.removed, report.touched) == (1, 1, 1, 1)
    after = _rows(root)
    assert set(after) == set(rows) - {str(files[1]), str(files[3])} | {str(moved)}
    assert after[str(moved)] == rows[str(files[1])]
    assert after[str(files[2])][:2] == (_utc(2022, 2, 2, 10), "FUJIFILM X-T3")
    from clip_rt.search.store import Store

    store = Store.open(root)
    vid = store.conn.execute("SELECT vector_id FROM items WHERE item = ?", (str(files[7]),)).fetchone()[0]
    assert item_details(store.conn, vid)["date"] == "2020-05-05T00:00:00"
    assert allowed_ids(store.conn, PhotoFilter(after="2020-05-05", before="2020-05-05")).tolist() == [vid]
    store.close()


def test_old_index_is_migrated_on_update(model, data_dir: Path, tmp_path: Path) -> None:
    """An index from before the photo tables (dropped here): read-only it searches with folder filters and no
    cameras; its next update adds every photo's facts and thumbnail without embedding anything."""
    from clip_rt.search import Index, update_images

    _exif_folder(data_dir, tmp_path / "photos")
    root = tmp_path / "old.index"
    update_images(root, model, [tmp_path / "photos"])
    conn = sqlite3.connect(root / "index.sqlite")
    conn.executescript("DROP TRIGGER photos_item_deleted; DROP TRIGGER photos_item_renumbered; DROP TABLE photos; "
                       "DROP TABLE thumbs;")
    conn.close()
    with Index.open(root) as index:
        q = index.item_vector(0)
        sub = index.search_vector(q, 10, PhotoFilter(folder=str(tmp_path / "photos" / "sub")))
        assert len(sub) == 4 and all("/sub/" in h.item for h in sub)
        assert index.search_vector(q, 10, PhotoFilter(camera="Canon EOS 5D")) == []
    _, report = update_images(root, model, [tmp_path / "photos"])
    assert report.embedded == 0
    rows = _rows(root)
    assert len(rows) == 8 and all(r[5] and r[1] for r in rows.values())
    with Index.open(root) as index:
        hits = index.search_vector(index.item_vector(0), 10, PhotoFilter(camera="Canon EOS 5D"))
        assert len(hits) == 4 and all(rows[h.item][1] == "Canon EOS 5D" for h in hits)


def test_cli_search_filters(model, tiny_package: Path, data_dir: Path, tmp_path: Path, capsys) -> None:
    import json

    from clip_rt.cli import main
    from clip_rt.search import Index

    _exif_folder(data_dir, tmp_path / "photos")
    root = tmp_path / "c.index"
    assert main(["index", str(tiny_package), str(tmp_path / "photos"), "-o", str(root), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["search", str(root), "--text", "a dog", "--camera", "Canon EOS 5D", "--after", "2011-01-01",
                 "--before", "2015-12-31", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["query"]["camera"] == "Canon EOS 5D"
    with Index.open(root) as index:
        want = index.search(model, text="a dog", top_k=10, where=PhotoFilter(camera="Canon EOS 5D",
                                                                             after="2011-01-01", before="2015-12-31"))
    assert [r["file"] for r in doc["results"]] == [h.file for h in want]
    assert sorted(Path(h.file).name for h in want) == ["p1.jpg", "p3.jpg", "p5.jpg"]  # p7: no EXIF date, mtime now
    assert main(["search", str(root), "--text", "a dog", "--before", "May 2019"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("clip-rt search: error: before must be a date")


def test_thumbnails_off_is_recorded(model, data_dir: Path, tmp_path: Path) -> None:
    """update_images(thumbnails=False): metadata still kept, no thumbnails, and later updates keep that choice."""
    from clip_rt.search import update_images

    files = _exif_folder(data_dir, tmp_path / "photos", n=6)
    root = tmp_path / "t.index"
    update_images(root, model, [tmp_path / "photos"], thumbnails=False)
    rows = _rows(root)
    assert len(rows) == 6 and all(r[1] is not None and not r[5] for r in rows.values())  # camera known, no thumb
    with Image.open(files[0]) as im:
        (tmp_path / "photos" / "new.jpg").write_bytes(exif_jpeg(im.convert("RGB"), "Leica", "M6"))
    update_images(root, model, [tmp_path / "photos"])  # the recorded choice: still none
    rows = _rows(root)
    assert rows[str(tmp_path / "photos" / "new.jpg")][1] == "Leica M6" and not any(r[5] for r in rows.values())

"""Photo metadata beside the item table: the `photos` and `thumbs` tables, the filters over them, the facets.

    ensure_schema(conn)                                   # writers: add the tables (old indexes are migrated)
    write_photos(conn, [(vector_id, meta, jpeg), ...])    # inside the commit that adds those items
    allowed_ids(conn, PhotoFilter(folder="/p/2019", after=date(2019, 6, 1), camera="Canon EOS 5D"))  # int64 [n]
    item_details(conn, vector_id)                         # path, size, date, camera, pixels: the page's detail view
    facets(conn)                                          # folders, cameras, date range: the page's filter controls

Both tables are keyed by items.vector_id, and two triggers keep them in step with the item table whatever changes
it: a deleted item (--remove, --update dropping or replacing a file) takes its rows along in the same transaction,
and compaction's renumbering carries them to the new ids. An index built before these tables opens as it is
(read-only: metadata and thumbnails are absent, date and folder filters still work from the item table); its first
--update adds the tables.

A photo's date is EXIF DateTimeOriginal when it has one, else the file's modification time
(COALESCE(photos.taken, items.mtime_ns)), so a touched file's date follows its mtime without a rewrite.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import InputError
from .photo_meta import PhotoMeta
from .sql import id_parts
from .thumbs import SCHEMA as THUMBS_SCHEMA
from .thumbs import put_thumbs

SCHEMA = THUMBS_SCHEMA + """
CREATE TABLE IF NOT EXISTS photos (
    vector_id INTEGER PRIMARY KEY,   -- items.vector_id
    taken INTEGER,                   -- EXIF DateTimeOriginal, Unix seconds (NULL: items.mtime_ns dates the photo)
    camera TEXT NOT NULL DEFAULT '', -- make and model as one name ('' when the EXIF has neither)
    make TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL DEFAULT '',
    width INTEGER,                   -- pixels as shown (EXIF orientation applied)
    height INTEGER,
    orientation INTEGER              -- EXIF orientation 1-8
);
CREATE INDEX IF NOT EXISTS photos_camera ON photos (camera);
CREATE TRIGGER IF NOT EXISTS photos_item_deleted AFTER DELETE ON items BEGIN
    DELETE FROM photos WHERE vector_id = OLD.vector_id;
    DELETE FROM thumbs WHERE vector_id = OLD.vector_id;
END;
CREATE TRIGGER IF NOT EXISTS photos_item_renumbered AFTER UPDATE OF vector_id ON items BEGIN
    UPDATE photos SET vector_id = NEW.vector_id WHERE vector_id = OLD.vector_id;
    UPDATE thumbs SET vector_id = NEW.vector_id WHERE vector_id = OLD.vector_id;
END;
"""

# The photo's date in Unix seconds, for SQL over items i LEFT JOIN photos p.
DATE_SQL = "COALESCE(p.taken, i.mtime_ns / 1000000000)"


def has_photo_tables(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'photos'").fetchone()[0] > 0


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the photo tables and their triggers when absent (a writable connection; idempotent)."""
    if not has_photo_tables(conn):
        conn.executescript("BEGIN IMMEDIATE;" + SCHEMA + "COMMIT;")


def write_photos(conn: sqlite3.Connection, rows: Iterable[tuple[int, PhotoMeta | None, bytes | None]]) -> None:
    """Insert the metadata and thumbnail of newly added items: (vector_id, meta or None, JPEG bytes or None).
    Call inside the transaction that inserts those items."""
    rows = list(rows)
    conn.executemany("INSERT OR REPLACE INTO photos (vector_id, taken, camera, make, model, width, height, "
                     "orientation) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     [(vid, m.taken, m.camera, m.make, m.model, m.width, m.height, m.orientation)
                      for vid, m, _ in rows if m is not None])
    put_thumbs(conn, [(vid, t) for vid, _, t in rows if t is not None])


def photo_writer(rows: Sequence[tuple[PhotoMeta | None, bytes | None]]
                 ) -> Callable[[sqlite3.Connection, list[int]], None]:
    """The hook for Store.commit(also=...) that writes these (metadata, thumbnail) rows for the ids the commit gives
    its new items, in its transaction."""
    def write(conn: sqlite3.Connection, ids: list[int]) -> None:
        write_photos(conn, [(vid, meta, thumb) for vid, (meta, thumb) in zip(ids, rows)])
    return write


def read_photos(conn: sqlite3.Connection, ids: Iterable[int]) -> dict[int, tuple[PhotoMeta | None, bytes | None]]:
    """vector id -> (meta, thumbnail) as stored, for carrying them to a new id (a moved file keeps its vector)."""
    out: dict[int, tuple[PhotoMeta | None, bytes | None]] = {}
    if not has_photo_tables(conn):
        return out
    for part, marks in id_parts(ids):
        metas = {r[0]: PhotoMeta(width=r[5], height=r[6], orientation=r[7], taken=r[1], make=r[3], model=r[4])
                 for r in conn.execute(f"SELECT vector_id, taken, camera, make, model, width, height, orientation "
                                       f"FROM photos WHERE vector_id IN ({marks})", part)}
        thumbs = dict(conn.execute(f"SELECT vector_id, data FROM thumbs WHERE vector_id IN ({marks})", part))
        for vid in part:
            if vid in metas or vid in thumbs:
                out[vid] = (metas.get(vid), thumbs.get(vid))
    return out


def parse_day(value: str | dt.date | None, what: str) -> dt.date | None:
    """A filter date: "YYYY-MM-DD" (or a date) -> date; InputError naming the flag otherwise."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value).strip())
    except ValueError:
        raise InputError(f"{what} must be a date like 2021-06-30, got {value!r}") from None


def _day_start(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp())


@dataclass(frozen=True)
class PhotoFilter:
    """Which photos a search may return. Every given field must hold (AND); None fields do not filter."""

    folder: str | None = None  # an absolute folder: photos in it or any folder under it
    after: dt.date | str | None = None  # photos dated on or after this day, a date or "YYYY-MM-DD" (module doc)
    before: dt.date | str | None = None  # photos dated on or before this day
    camera: str | None = None  # the camera name exactly as facets() lists it

    def __post_init__(self) -> None:
        object.__setattr__(self, "after", parse_day(self.after, "after"))
        object.__setattr__(self, "before", parse_day(self.before, "before"))
        if self.folder is not None:
            object.__setattr__(self, "folder", os.path.abspath(self.folder) if self.folder else None)
        if self.camera == "":
            object.__setattr__(self, "camera", None)
        if isinstance(self.after, dt.date) and isinstance(self.before, dt.date) and self.after > self.before:
            raise InputError(f"the date range is empty: after {self.after} is later than before {self.before}")

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.folder, self.after, self.before, self.camera))

    def sql(self) -> tuple[str, list[Any]]:
        """The WHERE clause over `items i LEFT JOIN photos p` and its parameters."""
        terms: list[str] = []
        params: list[Any] = []
        if self.folder is not None:
            prefix = self.folder.rstrip(os.sep) + os.sep
            terms.append("i.item >= ? AND i.item < ?")  # a range on the item index: '0' sorts right after '/'
            params += [prefix, prefix[:-1] + chr(ord(os.sep) + 1)]
        after, before = parse_day(self.after, "after"), parse_day(self.before, "before")  # dates since __post_init__
        if after is not None:
            terms.append(f"{DATE_SQL} >= ?")
            params.append(_day_start(after))
        if before is not None:
            terms.append(f"{DATE_SQL} < ?")
            params.append(_day_start(before + dt.timedelta(days=1)))
        if self.camera is not None:
            terms.append("p.camera = ?")
            params.append(self.camera)
        return (" AND ".join(terms) or "1"), params


def allowed_ids(conn: sqlite3.Connection, where: PhotoFilter) -> np.ndarray:
    """The vector ids of the items `where` allows, ascending: int64 [n]."""
    if where.camera is not None and not has_photo_tables(conn):
        return np.zeros(0, np.int64)  # an index from before metadata knows no cameras
    clause, params = where.sql()
    join = "LEFT JOIN photos p ON p.vector_id = i.vector_id" if has_photo_tables(conn) else \
        "LEFT JOIN (SELECT NULL AS vector_id, NULL AS taken, '' AS camera) p ON 0"
    rows = conn.execute(f"SELECT i.vector_id FROM items i {join} WHERE {clause} ORDER BY i.vector_id",
                        params).fetchall()
    return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))


def _iso(seconds: int | None) -> str | None:
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(int(seconds), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def item_details(conn: sqlite3.Connection, vector_id: int) -> dict[str, Any] | None:
    """What the page's detail view shows about one item, or None when no item has that id."""
    base = conn.execute("SELECT vector_id, item, size, mtime_ns FROM items WHERE vector_id = ?",
                        (int(vector_id),)).fetchone()
    if base is None:
        return None
    vid, item, size, mtime_ns = base
    out: dict[str, Any] = {"id": vid, "file": item, "size": size, "date": None, "date_source": None, "camera": "",
                           "width": None, "height": None, "orientation": None, "thumbnail": False}
    if mtime_ns is not None:
        out.update(date=_iso(mtime_ns // 1_000_000_000), date_source="file")
    if has_photo_tables(conn):
        row = conn.execute("SELECT taken, camera, width, height, orientation FROM photos WHERE vector_id = ?",
                           (vid,)).fetchone()
        if row is not None:
            taken, camera, width, height, orientation = row
            if taken is not None:
                out.update(date=_iso(taken), date_source="exif")
            out.update(camera=camera, width=width, height=height, orientation=orientation)
        out["thumbnail"] = conn.execute("SELECT 1 FROM thumbs WHERE vector_id = ?", (vid,)).fetchone() is not None
    return out


def item_path(conn: sqlite3.Connection, vector_id: int) -> str | None:
    """The file the index recorded for this id (None when no item has it)."""
    row = conn.execute("SELECT item FROM items WHERE vector_id = ?", (int(vector_id),)).fetchone()
    return None if row is None else str(row[0])


def facets(conn: sqlite3.Connection) -> dict[str, Any]:
    """The values the page's filter controls offer: folders (those holding photos and their parents up to the folder
    all photos share, each with the count of photos under it),
    cameras (with counts) and the first and last photo date (YYYY-MM-DD)."""
    parents: dict[str, int] = {}
    for (item,) in conn.execute("SELECT item FROM items"):
        parent = os.path.dirname(item)
        parents[parent] = parents.get(parent, 0) + 1
    folders = dict(parents)  # each folder counts the photos under it, subfolders included, up to the common root
    top = os.path.commonpath(list(parents)) if parents else ""
    for parent, n in parents.items():
        while parent != top and os.path.dirname(parent) != parent:
            parent = os.path.dirname(parent)
            folders[parent] = folders.get(parent, 0) + n
    photos = has_photo_tables(conn)
    cameras = conn.execute("SELECT camera, COUNT(*) FROM photos WHERE camera != '' GROUP BY camera "
                           "ORDER BY camera").fetchall() if photos else []
    join = "LEFT JOIN photos p ON p.vector_id = i.vector_id" if photos else \
        "LEFT JOIN (SELECT NULL AS vector_id, NULL AS taken) p ON 0"
    first, last = conn.execute(f"SELECT MIN({DATE_SQL}), MAX({DATE_SQL}) FROM items i {join}").fetchone()
    return {"folders": [{"folder": f, "count": n} for f, n in sorted(folders.items())],
            "cameras": [{"camera": c, "count": n} for c, n in cameras],
            "dates": {"first": (_iso(first) or "")[:10] or None, "last": (_iso(last) or "")[:10] or None}}

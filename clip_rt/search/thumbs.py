"""Thumbnails kept with the index: made from the image indexing has already decoded, stored as BLOBs in index.sqlite.

    data = make_thumbnail(img)            # img: the decoded RGB image, EXIF orientation applied -> JPEG bytes
    put_thumbs(conn, [(vector_id, data)]) # inside the commit that adds the items (clip_rt.search.photo_store)
    get_thumb(conn, vector_id)            # bytes or None

Why BLOBs in the index's own SQLite file rather than a folder of files: they are added and removed in the same
transaction as their items (a crash never leaves a thumbnail without its item or the reverse), a removed item's
thumbnail goes with it (a trigger, clip_rt.search.photo_store), there is one file to copy, and they count in the
index's size (`thumb_bytes`). At ~256 px a thumbnail is ~10-15 KiB, well inside SQLite's sweet spot for BLOBs
(reading them from the database beats the file system below ~100 KiB, sqlite.org/intern-v-extern-blob.html).

Why JPEG rather than WebP: on the shared photos (~500 x 375 decoded) Pillow's JPEG at quality 80 takes ~2 ms per
thumbnail and WebP (method 2) ~4 ms for ~25% fewer bytes; the build-time budget (thumbnails within 15% of an index
build without them) favours the faster one, and every browser shows both.
"""

from __future__ import annotations

import io
import sqlite3
from typing import Iterable

from PIL import Image

THUMB_EDGE = 256  # longest edge of a thumbnail, in pixels (a photo smaller than this is kept at its size; a JPEG
#                   decoded fast keeps a short edge of at least the model's resize edge, 224 for CLIP, so only a
#                   near-square photo's thumbnail comes out a little under 256)
THUMB_QUALITY = 80  # JPEG quality
THUMB_MIME = "image/jpeg"

SCHEMA = """
CREATE TABLE IF NOT EXISTS thumbs (
    vector_id INTEGER PRIMARY KEY,  -- items.vector_id of the photo
    data BLOB NOT NULL              -- JPEG, longest edge THUMB_EDGE, EXIF orientation applied
);
"""


def thumb_size(width: int, height: int, edge: int = THUMB_EDGE) -> tuple[int, int]:
    """(width, height) scaled so that the longest edge is `edge` (never enlarged), each at least 1 pixel."""
    scale = min(1.0, edge / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def make_thumbnail(img: Image.Image, edge: int = THUMB_EDGE, quality: int = THUMB_QUALITY) -> bytes:
    """A decoded image (RGB, already turned upright by its EXIF orientation) -> JPEG bytes, longest edge `edge`.
    Pillow's reducing_gap resizes a large image in two steps (a box reduce, then bicubic), the quality of a plain
    bicubic resize at a fraction of its cost."""
    rgb = img if img.mode in ("RGB", "L") else img.convert("RGB")
    small = rgb.resize(thumb_size(*rgb.size, edge), Image.Resampling.BICUBIC, reducing_gap=3.0)
    out = io.BytesIO()
    small.save(out, "JPEG", quality=quality, optimize=False)
    return out.getvalue()


def put_thumbs(conn: sqlite3.Connection, rows: Iterable[tuple[int, bytes]]) -> None:
    """Insert (vector_id, JPEG bytes) rows; call inside the transaction that adds those items."""
    conn.executemany("INSERT OR REPLACE INTO thumbs (vector_id, data) VALUES (?, ?)", rows)


def get_thumb(conn: sqlite3.Connection, vector_id: int) -> bytes | None:
    """The thumbnail of an item, or None (no such item, a text, or an index built before thumbnails)."""
    try:
        row = conn.execute("SELECT data FROM thumbs WHERE vector_id = ?", (int(vector_id),)).fetchone()
    except sqlite3.OperationalError:  # an index from before thumbnails: no table
        return None
    return None if row is None else bytes(row[0])


def thumb_bytes(conn: sqlite3.Connection) -> tuple[int, int]:
    """(thumbnails, their total bytes) in the index; (0, 0) for an index without them."""
    try:
        n, total = conn.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0) FROM thumbs").fetchone()
    except sqlite3.OperationalError:
        return 0, 0
    return int(n), int(total)

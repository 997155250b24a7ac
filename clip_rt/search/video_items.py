"""Videos in an image index: one item per kept frame, the `frames` table that ties each to its video and time.

    update_videos(store, reader, roots, videos, report)   # inside update_images: new, changed, vanished videos
    frames_by_id(conn, ids)                               # {vector_id: (video, seconds)} for a search's hits
    video_frame(conn, vector_id)                          # (video, seconds) of one item, or None (a photo)

A video's frames are rows of the item table like photos, so the engines, filters, compaction and thumbnails need
nothing new. Each frame's item is "VIDEO#t=SECONDS" (the W3C media-fragment form a browser plays from; the item
column is UNIQUE, so a video cannot hold one row per frame under its own path), with the video's size, mtime and
sha256. The `frames` table says which items are frames, of which video, at what time, and how many frames the video
kept when it was indexed (fewer live rows: a damaged vector was dropped, the video is embedded again). Two triggers
keep it in step with the item table, as the photo tables' do. An index from before videos has no `frames` table:
it opens and searches as before (every item is a photo); an update that meets a video adds the table.

Decoding lives above this floor (clip_rt.video.index_frames, which imports this module): an update is handed a
FrameReader and asks it for the kept frames of each video, so this module never imports PyAV.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import numpy as np

from ..errors import ClipRtError, ImageError
from ..fsutil import sha256_file
from .photo_meta import PhotoMeta
from .photo_store import write_photos
from .sql import id_parts
from .store import Item

if TYPE_CHECKING:
    from .maintain import UpdateReport
    from .store import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    vector_id INTEGER PRIMARY KEY,  -- items.vector_id of the frame's item ("VIDEO#t=SECONDS")
    video TEXT NOT NULL,            -- the video file's absolute path
    time REAL NOT NULL,             -- the frame's presentation time, seconds from the video's start
    frames INTEGER NOT NULL         -- frames the video kept when it was indexed (all its rows carry the same count)
);
CREATE INDEX IF NOT EXISTS frames_video ON frames (video);
CREATE TRIGGER IF NOT EXISTS frames_item_deleted AFTER DELETE ON items BEGIN
    DELETE FROM frames WHERE vector_id = OLD.vector_id;
END;
CREATE TRIGGER IF NOT EXISTS frames_item_renumbered AFTER UPDATE OF vector_id ON items BEGIN
    UPDATE frames SET vector_id = NEW.vector_id WHERE vector_id = OLD.vector_id;
END;
"""


@dataclass(frozen=True)
class FrameSet:
    """The kept frames of one video, as a FrameReader hands them over."""

    times: np.ndarray  # [K] float64, presentation time (s) of each kept frame, ascending
    embeddings: np.ndarray  # [K, D] float32, L2-normalized
    thumbnails: Sequence[bytes | None]  # [K] JPEG of each kept frame (None: thumbnails off)
    width: int  # pixels across as displayed (rotation applied)
    height: int
    sampled: int  # frames sampled before near-duplicates were skipped


class FrameReader(Protocol):
    """What update_images asks of the video decoder it is given (clip_rt.video.index_frames.VideoFrameReader)."""

    settings: dict[str, Any]  # how frames are chosen (sampling interval, near-duplicate cosine): kept in the header

    def read(self, path: str, thumbnails: bool) -> FrameSet:
        """The kept frames of the video at `path`; a ClipRtError (VideoError) when it cannot be read."""
        ...


def frame_item(video: str, seconds: float) -> str:
    """The item name of a frame: VIDEO#t=SECONDS (milliseconds)."""
    return f"{video}#t={seconds:.3f}"


def has_frames_table(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'frames'").fetchone()[0] > 0


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the frames table and its triggers when absent (a writable connection; idempotent)."""
    if not has_frames_table(conn):
        conn.executescript("BEGIN IMMEDIATE;" + SCHEMA + "COMMIT;")


def frame_ids(conn: sqlite3.Connection) -> set[int]:
    """Vector ids of every video frame (empty for an index without videos)."""
    if not has_frames_table(conn):
        return set()
    return {int(r[0]) for r in conn.execute("SELECT vector_id FROM frames")}


def frames_by_id(conn: sqlite3.Connection, ids: Sequence[int]) -> dict[int, tuple[str, float]]:
    """vector id -> (video path, seconds) for the ids that are video frames."""
    out: dict[int, tuple[str, float]] = {}
    if not has_frames_table(conn):
        return out
    for part, marks in id_parts(ids):
        out.update({int(v): (str(f), float(t)) for v, f, t in
                    conn.execute(f"SELECT vector_id, video, time FROM frames WHERE vector_id IN ({marks})", part)})
    return out


def video_frame(conn: sqlite3.Connection, vector_id: int) -> tuple[str, float] | None:
    """(video path, seconds) of the item with this id, or None when it is not a video frame."""
    return frames_by_id(conn, [int(vector_id)]).get(int(vector_id))


def video_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """{"videos": distinct videos, "frames": their frames} in the index (zeros without the frames table)."""
    if not has_frames_table(conn):
        return {"videos": 0, "frames": 0}
    videos, frames = conn.execute("SELECT COUNT(DISTINCT video), COUNT(*) FROM frames").fetchone()
    return {"videos": int(videos), "frames": int(frames)}


def frame_writer(video: str, kept: FrameSet) -> Callable[[sqlite3.Connection, list[int]], None]:
    """The hook for Store.commit(also=...) that records the frames, their size and their thumbnails."""
    meta = PhotoMeta(width=kept.width, height=kept.height)

    def write(conn: sqlite3.Connection, ids: list[int]) -> None:
        conn.executemany("INSERT INTO frames (vector_id, video, time, frames) VALUES (?, ?, ?, ?)",
                         [(vid, video, float(t), len(ids)) for vid, t in zip(ids, kept.times)])
        write_photos(conn, [(vid, meta, thumb) for vid, thumb in zip(ids, kept.thumbnails)])
    return write


def _indexed(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """video -> its items, (size, mtime_ns), sha256, recorded frame count and live frame count."""
    out: dict[str, dict[str, Any]] = {}
    for video, item, size, mtime, sha, frames in conn.execute(
            "SELECT f.video, i.item, i.size, i.mtime_ns, i.sha256, f.frames FROM frames f "
            "JOIN items i ON i.vector_id = f.vector_id ORDER BY f.video, f.time"):
        v = out.setdefault(video, {"items": [], "stat": (size, mtime), "sha256": sha, "frames": frames})
        v["items"].append(item)
    return out


def _stat(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def update_videos(store: "Store", reader: FrameReader, in_scope: Callable[[str], bool], videos: list[str],
                  report: "UpdateReport", thumbnails: bool = True) -> None:
    """Bring the frames of `videos` (absolute paths the scan found) up to date in a writable index.

    A video whose size and mtime (else sha256) match the table, with all its frames alive, is left alone; a new or
    changed one is read by `reader` and its frames replace the old ones in one commit (a video that cannot be read
    now keeps the frames it had and is reported); an indexed video the scan no longer finds
    but in_scope(path) says it looked for (under the scanned folders) loses its frames.
    Counts go to report (added / changed / removed / unchanged count videos; frames counts the frames stored)."""
    ensure_schema(store.conn)
    known = _indexed(store.conn)
    key = store.meta["keys"]["image"]
    for video in videos:
        old = known.get(video)
        try:
            st = _stat(video)
            whole = old is not None and len(old["items"]) == old["frames"]
            if whole and old is not None and old["stat"] == st:
                report.unchanged += 1
                continue
            sha = sha256_file(video)
            if whole and old is not None and old["sha256"] == sha:  # touched: same content, new size or time
                store.touch([(item, st[0], st[1]) for item in old["items"]])
                report.unchanged += 1
                report.touched += 1
                continue
            kept = reader.read(video, thumbnails)
            if _stat(video) != st:
                raise ImageError(video, "changed while it was being indexed; run the update again")
        except ImageError as e:
            report.errors.append(e)
            continue
        except ClipRtError as e:  # VideoError: the message starts with the path already
            report.errors.append(ImageError.of(video, e))
            continue
        except OSError as e:
            report.errors.append(ImageError(video, f"cannot read file ({e.strerror or e})"))
            continue
        names: dict[str, int] = {}
        for i, t in enumerate(kept.times):  # two frames within a millisecond: the first one stands for both
            names.setdefault(frame_item(video, float(t)), i)
        rows = np.fromiter(names.values(), dtype=np.int64, count=len(names))
        kept = FrameSet(kept.times[rows], kept.embeddings[rows], [kept.thumbnails[i] for i in rows], kept.width,
                        kept.height, kept.sampled)
        items = [Item(name, sha, key, st[0], st[1]) for name in names]
        store.commit(items, kept.embeddings, remove=old["items"] if old else (), also=frame_writer(video, kept))
        report.frames += len(items)
        report.embedded += kept.sampled
        if old is None:
            report.added += 1
        else:
            report.changed += 1
    found = set(videos)
    vanished = [v for v in known if in_scope(v) and v not in found]
    if vanished:
        store.commit(remove=[item for v in vanished for item in known[v]["items"]])
        report.removed += len(vanished)

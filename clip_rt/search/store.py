"""An index folder on disk: the SQLite item table (standard library) and the vectors file it names.

    photos.index/
      index.sqlite        meta (format, kind, model keys, generation, ...) and one row per item (schema below)
      vectors.<E>.f32     float32 little-endian [rows, D]: row r is the vector with vector_id r; append-only
      engine.npz          the FAISS structure built from the vectors (clip_rt.search.engine); derived, optional

Why the vectors are not BLOBs in SQLite: a search memory-maps them (exact scan, reranking of approximate candidates)
without reading a million rows through SQL, and an append-only file needs no rewrite to commit.

The commit protocol, which keeps rows and vectors in step whatever point a process dies at:
  1. the vectors file is cut back to the committed row count (dropping what a crashed writer appended), the new
     vectors are appended and fsynced;
  2. one SQLite transaction (synchronous=FULL) inserts and deletes item rows pointing at them and bumps
     `rows` and `generation` in meta. That commit is the only point where the index changes.
A crash before 2 leaves the previous index (the appended tail is not referenced); after it, the new one. Rows are
never rewritten in place and vector ids are never reused, so a reader's memory map stays valid. compact() writes a
new vectors file (epoch E+1) and switches to it in one transaction; the old file is deleted afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import ClipRtError
from .sql import id_parts

FORMAT = "clip-rt-index"
FORMAT_VERSION = 2
DB = "index.sqlite"
LOCK = ".write.lock"
LEGACY_HEADER = "header.json"  # a clip-rt 0.1 index folder has this and no DB (clip_rt.search.legacy reads it)
ITEM_KINDS = ("images", "texts")  # what an index holds: image files or a text pool (meta "kind")
ENCODER_OF = {"images": "image", "texts": "text"}  # which encoder made an index's vectors

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);  -- JSON values
CREATE TABLE items (
    vector_id INTEGER PRIMARY KEY,  -- the vector's row in the vectors file; never reused
    item TEXT NOT NULL UNIQUE,      -- image index: the file's absolute path; text pool: the text
    size INTEGER,                   -- image: file size in bytes when embedded (NULL for texts)
    mtime_ns INTEGER,               -- image: modification time when embedded, in ns (NULL for texts)
    sha256 TEXT NOT NULL,           -- image: of the file's bytes; text: of its UTF-8 bytes
    model TEXT NOT NULL,            -- Package.embedding_key of the encoder that produced the vector
    crc32 INTEGER NOT NULL          -- of the vector's 4 * D bytes
);
CREATE INDEX items_sha256 ON items (sha256);
"""


class IndexFileError(ClipRtError):
    """An index folder is missing, truncated, corrupt, or was built with another model."""


@dataclass(frozen=True)
class Item:
    """One row of the item table, without its vector id (assigned at commit)."""

    item: str  # absolute path (images) or the text (text pools)
    sha256: str  # content hash
    model: str  # embedding key
    size: int | None = None  # images: bytes
    mtime_ns: int | None = None  # images: modification time


def is_legacy(root: Path) -> bool:
    """True for a clip-rt 0.1 index folder (read-only until converted: clip-rt index --convert)."""
    return (root / LEGACY_HEADER).is_file() and not (root / DB).is_file()


def roll_back_hot_journal(path: Path) -> None:
    """A writer killed inside a transaction leaves a hot journal, which a read-only connection cannot roll back
    (SQLite answers "attempt to write a readonly database"): roll it back through a short read-write connection
    when the file allows one. A journal of a writer still at work is not hot (it holds its lock): left alone."""
    journal = path.with_name(path.name + "-journal")
    if not journal.is_file() or journal.stat().st_size == 0 or not os.access(path, os.W_OK):
        return
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True)
    try:
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # the first read rolls a hot journal back
    except sqlite3.DatabaseError:
        pass  # the read-only open that follows says what is wrong
    finally:
        conn.close()


def vector_crc(vectors: np.ndarray) -> list[int]:
    """zlib.crc32 of each row's little-endian float32 bytes."""
    data = np.ascontiguousarray(vectors, dtype="<f4")  # [n, D]
    return [zlib.crc32(row.tobytes()) for row in data]


class Store:
    """An opened index folder. Writers hold the folder's write lock (one writer at a time); readers never lock."""

    def __init__(self, root: Path, conn: sqlite3.Connection, writable: bool):
        self.root = root
        self.conn = conn
        self.writable = writable
        self._lock_fd: int | None = None
        self._read_lock = threading.Lock()  # one connection, shared by the threads searching this index
        self.meta: dict[str, Any] = {}
        self.reload()

    # -- opening ---------------------------------------------------------------------------------------------
    @staticmethod
    def _connect(path: Path, writable: bool) -> sqlite3.Connection:
        if not writable:
            roll_back_hot_journal(path)
        uri = f"{path.resolve().as_uri()}?mode={'rw' if writable else 'ro'}"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA synchronous=FULL")  # a commit is on disk before it returns
        conn.execute("PRAGMA busy_timeout=30000")  # a reader waits out a writer's commit
        return conn

    @classmethod
    def create(cls, root: Path, meta: dict[str, Any]) -> "Store":
        """A new, empty index in `root` (an absent or empty folder)."""
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{DB}.creating"
        tmp.unlink(missing_ok=True)
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.executescript(SCHEMA)
            full = {"format": FORMAT, "format_version": FORMAT_VERSION, "generation": 0, "rows": 0, "epoch": 0,
                    "created": _now(), **meta}
            conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in full.items()])
        finally:
            conn.close()
        with open(root / _vectors_name(0), "wb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, root / DB)  # the index exists from here on, whole
        return cls.open(root, writable=True)

    @classmethod
    def open(cls, root: Path, writable: bool = False) -> "Store":
        path = root / DB
        if not path.is_file():
            raise IndexFileError(f"{root} has no {DB}")
        try:
            conn = cls._connect(path, writable)
            store = cls(root, conn, writable)
        except sqlite3.DatabaseError as e:
            raise IndexFileError(f"{path} is not a readable SQLite database ({e}); rebuild the index") from None
        if store.meta.get("format") != FORMAT:
            raise IndexFileError(f"{path} is not a clip-rt index database")
        version = store.meta.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise IndexFileError(f"{root} has index format version {version}, newer than this clip-rt reads "
                                 f"({FORMAT_VERSION}); upgrade clip-rt or rebuild the index")
        if writable:
            store._take_lock()
            store._drop_stale_files()
        return store

    def _take_lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: one writer at a time is then the caller's business
            return
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            self.conn.close()
            raise IndexFileError(f"another process is updating {self.root}; wait for it to finish") from None
        self._lock_fd = fd

    def _drop_stale_files(self) -> None:
        """Vectors files of other epochs (a compaction that crashed before or after its switch) and temp files."""
        keep = self.vectors_path.name
        for p in self.root.iterdir():
            if (p.name.startswith("vectors.") and p.suffix == ".f32" and p.name != keep) or p.name.endswith(".tmp"):
                p.unlink(missing_ok=True)

    def release(self) -> None:
        """Stop writing: the write lock goes back, the connection stays open for reading (an update hands back the
        index it just wrote this way, instead of opening it again)."""
        self.writable = False
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def close(self) -> None:
        self.conn.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- reading ---------------------------------------------------------------------------------------------
    def reload(self) -> None:
        try:
            rows = self.conn.execute("SELECT key, value FROM meta").fetchall()
        except sqlite3.DatabaseError as e:
            raise IndexFileError(f"{self.root / DB} cannot be read ({e}); rebuild the index") from None
        self.meta = {k: json.loads(v) for k, v in rows}

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def vectors_path(self) -> Path:
        return self.root / _vectors_name(int(self.meta.get("epoch", 0)))

    def vectors(self) -> np.ndarray:
        """The committed vectors, memory-mapped read-only: float32 [rows, D] (dead rows included)."""
        rows, dim = int(self.meta["rows"]), self.dim
        path = self.vectors_path
        have = path.stat().st_size if path.is_file() else -1
        if have < rows * dim * 4:
            raise IndexFileError(f"{path} holds {max(have, 0) // (4 * dim)} vectors but the item table refers to "
                                 f"{rows} (truncated or missing); repair the index with: clip-rt index PKG DIR... "
                                 f"-o {self.root} --update")
        if rows == 0:
            return np.zeros((0, dim), dtype=np.float32)  # [0, D]
        return np.memmap(path, dtype="<f4", mode="r", shape=(rows, dim))  # [rows, D]

    def count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def live_ids(self) -> np.ndarray:
        """Vector ids of every item, ascending: int64 [N]."""
        ids = self.conn.execute("SELECT vector_id FROM items ORDER BY vector_id").fetchall()
        return np.fromiter((r[0] for r in ids), dtype=np.int64, count=len(ids))

    def items_by_id(self, ids: Sequence[int]) -> dict[int, str]:
        """vector id -> item (path or text) for the ids that still exist."""
        out: dict[int, str] = {}
        for part, marks in id_parts(ids):
            with self._read_lock:
                out.update(self.conn.execute(f"SELECT vector_id, item FROM items WHERE vector_id IN ({marks})",
                                             part).fetchall())
        return out

    def photo_ids(self, where: Any) -> np.ndarray:
        """Vector ids of the photos a PhotoFilter allows (clip_rt.search.photo_store), ascending: int64 [n]."""
        from .photo_store import allowed_ids

        with self._read_lock:
            return allowed_ids(self.conn, where)

    def check_key(self, model: Any, encoder: str) -> None:
        """IndexFileError unless `model`'s `encoder` makes the embeddings this index was keyed with
        (Package.embedding_key: artifact sha256, precision, backend, preprocessing or tokenizer)."""
        want = (self.meta.get("keys") or {}).get(encoder)
        got = model.package.embedding_key(encoder, model.backend.precision, model.backend.name)
        if want != got:
            m = self.meta
            raise IndexFileError(f"the index {self.root} was built with {m.get('package')} ({m.get('backend')}, "
                                 f"{m.get('precision')}); {model.package.root} ({model.backend.name}, "
                                 f"{model.backend.precision}) makes other {encoder} embeddings (embedding key {got}, "
                                 f"the index's {want}); search with the package, backend and precision it was built "
                                 f"with, or rebuild the index")

    def rows(self) -> Iterator[tuple[int, str, int | None, int | None, str, str, int]]:
        """(vector_id, item, size, mtime_ns, sha256, model, crc32) of every item, by vector id."""
        yield from self.conn.execute("SELECT vector_id, item, size, mtime_ns, sha256, model, crc32 FROM items "
                                     "ORDER BY vector_id")

    def verify(self) -> list[str]:
        """Items whose vector is missing from the vectors file or fails its crc32 (read in full: ~1 s per GB)."""
        rows, dim = int(self.meta["rows"]), self.dim
        have = self.vectors_path.stat().st_size // (4 * dim) if self.vectors_path.is_file() else 0
        data = np.memmap(self.vectors_path, dtype="<f4", mode="r", shape=(min(have, rows), dim)) if min(have, rows) \
            else np.zeros((0, dim), "<f4")
        bad = []
        for vid, item, *_, crc in self.rows():
            if vid >= len(data) or zlib.crc32(np.asarray(data[vid]).tobytes()) != crc:
                bad.append(item)
        return bad

    # -- writing ---------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        if not self.writable:
            raise IndexFileError(f"{self.root} is open read-only")
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def commit(self, add: Sequence[Item] = (), vectors: np.ndarray | None = None, remove: Sequence[str] = (),
               meta: dict[str, Any] | None = None,
               also: Callable[[sqlite3.Connection, list[int]], None] | None = None) -> list[int]:
        """One atomic change: drop the items named in `remove`, add `add` with `vectors` [len(add), D], update meta.
        Returns the new items' vector ids. An item both removed and added is replaced. also(conn, ids): more writes
        for the new items in the same transaction (their photo metadata and thumbnails, clip_rt.search.photo_store)."""
        n = len(add)
        vecs = np.zeros((0, self.dim), "<f4") if vectors is None else np.ascontiguousarray(vectors, dtype="<f4")
        if vecs.shape != (n, self.dim):
            raise ValueError(f"commit needs vectors [{n}, {self.dim}], got {vecs.shape}")
        first = int(self.meta["rows"])
        if n:
            self._append(first, vecs)
        ids = list(range(first, first + n))
        with self._transaction() as conn:
            conn.executemany("DELETE FROM items WHERE item = ?", [(x,) for x in remove])
            conn.executemany("INSERT INTO items (vector_id, item, size, mtime_ns, sha256, model, crc32) VALUES "
                             "(?, ?, ?, ?, ?, ?, ?)",
                             [(i, it.item, it.size, it.mtime_ns, it.sha256, it.model, c)
                              for i, it, c in zip(ids, add, vector_crc(vecs))])
            if also is not None:
                also(conn, ids)
            updates = {"rows": first + n, "generation": int(self.meta["generation"]) + 1, "updated": _now(),
                       **(meta or {})}
            conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in updates.items()])
        self.meta.update(updates)
        return ids

    def set_meta(self, **values: Any) -> None:
        """Update meta entries in one transaction (the generation is left alone: items did not change)."""
        with self._transaction() as conn:
            conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in values.items()])
        self.meta.update(values)

    def touch(self, updates: Sequence[tuple[str, int, int]]) -> None:
        """Record a new (size, mtime_ns) for items whose content hash did not change: [(item, size, mtime_ns)]."""
        with self._transaction() as conn:
            conn.executemany("UPDATE items SET size = ?, mtime_ns = ? WHERE item = ?", [(s, m, i) for i, s, m in updates])

    def _append(self, first: int, vecs: np.ndarray) -> None:
        """Cut the vectors file back to `first` committed rows, append `vecs`, and fsync."""
        row_bytes = 4 * self.dim
        with open(self.vectors_path, "r+b") as f:
            f.truncate(first * row_bytes)  # what a crashed writer appended after the last commit goes
            f.seek(first * row_bytes)
            f.write(vecs.tobytes())
            f.flush()
            os.fsync(f.fileno())

    def compact(self) -> None:
        """Rewrite the vectors file without dead rows (ids renumbered 0..N-1) and switch to it in one transaction."""
        live = self.live_ids()
        old = self.vectors()
        epoch = int(self.meta.get("epoch", 0)) + 1
        new_path = self.root / _vectors_name(epoch)
        with open(new_path, "wb") as f:
            for start in range(0, len(live), 65536):
                f.write(np.ascontiguousarray(old[live[start:start + 65536]], dtype="<f4").tobytes())
            f.flush()
            os.fsync(f.fileno())
        del old
        with self._transaction() as conn:
            # Renumber through negative ids so that no two items ever share a vector_id inside the transaction.
            conn.executemany("UPDATE items SET vector_id = ? WHERE vector_id = ?",
                             [(-1 - new, int(old_id)) for new, old_id in enumerate(live)])
            conn.execute("UPDATE items SET vector_id = -1 - vector_id")
            updates = {"rows": len(live), "epoch": epoch, "generation": int(self.meta["generation"]) + 1,
                       "updated": _now()}
            conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in updates.items()])
        old_path = self.vectors_path
        self.meta.update(updates)
        old_path.unlink(missing_ok=True)


def _vectors_name(epoch: int) -> str:
    return f"vectors.{epoch}.f32"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

"""File helpers shared by the package writer, the embedding cache and the index: hashing and atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half of either.

    The bytes go to a temporary file in the same folder, are fsynced, and replace the target with
    os.replace (atomic on POSIX and Windows within one file system). The file gets the mode a plain open()
    would give it (0666 less the umask), so an index or embeddings file can be shared like any other output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _create_temp(path: Path) -> tuple[int, str]:
    """A new, empty temporary file beside `path`, opened for writing, created with mode 0666 so the kernel applies
    the umask. (tempfile.mkstemp creates 0600 files whatever the umask, and reading the umask means setting it,
    which races with other threads; so the exclusive create with a random name is done here.)"""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(path.parent, f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}")


def make_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A new empty folder `parent/PREFIX<random>` created with mode 0777 less the umask (tempfile.mkdtemp makes
    0700 ones), for output that is built aside and then renamed into place."""
    for _ in range(100):
        folder = Path(parent) / f"{prefix}{secrets.token_hex(6)}"
        try:
            folder.mkdir(mode=0o777)
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary folder in {parent}")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def cache_dir() -> Path:
    """clip-rt's cache folder: $CLIP_RT_CACHE if set, else ~/.cache/clip-rt (not created here)."""
    env = os.environ.get("CLIP_RT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "clip-rt"

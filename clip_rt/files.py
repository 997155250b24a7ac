"""Files and folders -> the image files in them: folders walked (hidden entries skipped, symlink loops and unreadable
folders reported), named files kept whatever their name, duplicates dropped. Problems come back as ImageError entries,
never raised.
"""

from __future__ import annotations

import errno
import os
from typing import Iterable

from .errors import ImageError

# File name endings picked up when a folder is expanded (explicitly named files are taken whatever their name).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".bmp", ".dib", ".gif", ".tif",
                              ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".avif",
                              ".heic", ".heif", ".jxl"})  # the last three: picked up to be reported as unsupported


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk(root: str, recursive: bool, errors: list[ImageError]) -> list[str]:
    """Image files under `root`, skipping hidden entries; loops and unreadable folders go to `errors`."""
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    # Depth-first with an explicit stack; each entry carries the (dev, inode) chain of its parents,
    # so a link back to an ancestor is reported as a loop and a folder reached twice is listed once.
    stack: list[tuple[str, frozenset[tuple[int, int]]]] = [(root, frozenset())]
    while stack:
        folder, parents = stack.pop()
        try:
            st = os.stat(folder)
        except OSError as e:
            errors.append(ImageError(folder, f"cannot open folder ({e.strerror or e})"))
            continue
        key = (st.st_dev, st.st_ino)
        if key in parents:
            errors.append(ImageError(folder, f"symlink loop: links back to its parent folder {os.path.realpath(folder)}"))
            continue
        if key in seen:
            continue
        seen.add(key)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except PermissionError:
            errors.append(ImageError(folder, "permission denied (cannot list folder)"))
            continue
        except OSError as e:
            errors.append(ImageError(folder, f"cannot list folder ({e.strerror or e})"))
            continue
        for entry in reversed(entries):  # reversed: the stack pops them in name order
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
                is_file = not is_dir and entry.is_file()
            except OSError as e:  # ELOOP: a link that points (through links) to itself
                errors.append(ImageError(entry.path, f"symlink loop ({e.strerror or e})"))
                continue
            if is_dir:
                if recursive:
                    stack.append((entry.path, parents | {key}))
            elif is_file:
                if _is_image_name(entry.name):
                    found.append(entry.path)
            elif entry.is_symlink() and _is_image_name(entry.name):
                errors.append(ImageError(entry.path, "broken symbolic link"))
    return sorted(found)


def iter_image_files(paths: Iterable[str | os.PathLike], recursive: bool = True) -> tuple[list[str], list[ImageError]]:
    """Files and folders -> (image files, problems).

    A named file is kept whatever its extension (decoding reports it if it is not an image); a folder is
    expanded to its image files (by extension, hidden entries skipped), recursively unless recursive=False,
    sorted by path. Arguments keep their order; a file listed twice is kept once. Missing paths, symlink loops
    and unreadable folders are returned as ImageError entries, never raised.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[str] = []
    errors: list[ImageError] = []
    for p in paths:
        path = os.fspath(p)
        if os.path.isdir(path):
            files.extend(_walk(path, recursive, errors))
        elif os.path.isfile(path):
            files.append(path)
        elif os.path.islink(path):
            try:
                os.stat(path)
                reason = "not a file or folder"
            except OSError as e:
                reason = "symlink loop" if e.errno == errno.ELOOP else "broken symbolic link"
            errors.append(ImageError(path, reason))
        elif os.path.exists(path):
            errors.append(ImageError(path, "not a regular file or folder"))
        else:
            errors.append(ImageError(path, "no such file or folder"))
    unique: dict[str, str] = {}  # normalized path -> the path as first given
    for f in files:
        unique.setdefault(os.path.normpath(f), f)
    return list(unique.values()), errors

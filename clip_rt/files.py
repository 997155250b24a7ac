"""Files and folders -> the image files in them: folders walked (hidden entries skipped, symlink loops and unreadable
folders reported), named files kept whatever their name, duplicates dropped. Problems come back as ImageError entries,
never raised. With videos=True a folder walk also picks up video files (by name: VIDEO_EXTENSIONS, is_video_path).
"""

from __future__ import annotations

import errno
import os
from typing import Iterable, Sequence

from .errors import ImageError

# File name endings picked up when a folder is expanded (explicitly named files are taken whatever their name).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".bmp", ".dib", ".gif", ".tif",
                              ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".avif",
                              ".heic", ".heif", ".jxl"})  # the last three: picked up to be reported as unsupported


# Video file name endings (clip_rt.video decodes them; here only names are compared, nothing is imported).
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".3gp",
                              ".flv", ".wmv", ".mpg", ".mpeg", ".ogv"})


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_video_path(path: str | os.PathLike) -> bool:
    """True for a file name with a video ending (.mp4, .mov, .mkv, ...): how a walk and the CLI tell videos apart."""
    return os.path.splitext(os.fspath(path))[1].lower() in VIDEO_EXTENSIONS


def split_videos(files: Sequence[str]) -> tuple[list[str], list[str]]:
    """Files as listed -> (the others, the videos), each in listing order; videos are told by name (is_video_path)."""
    return [f for f in files if not is_video_path(f)], [f for f in files if is_video_path(f)]


def _walk(root: str, recursive: bool, errors: list[ImageError], videos: bool = False) -> list[str]:
    """Image files (and with videos=True video files) under `root`, skipping hidden entries; loops and unreadable
    folders go to `errors`."""
    wanted = (lambda name: _is_image_name(name) or is_video_path(name)) if videos else _is_image_name
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
                if wanted(entry.name):
                    found.append(entry.path)
            elif entry.is_symlink() and wanted(entry.name):
                errors.append(ImageError(entry.path, "broken symbolic link"))
    return sorted(found)


def iter_image_files(paths: Iterable[str | os.PathLike], recursive: bool = True,
                     videos: bool = False) -> tuple[list[str], list[ImageError]]:
    """Files and folders -> (image files, problems).

    A named file is kept whatever its extension (decoding reports it if it is not an image); a folder is
    expanded to its image files (by extension, hidden entries skipped), recursively unless recursive=False,
    sorted by path. Arguments keep their order; a file listed twice is kept once. Missing paths, symlink loops
    and unreadable folders are returned as ImageError entries, never raised. videos=True: folders also yield their
    video files (is_video_path), in the same sorted order.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[str] = []
    errors: list[ImageError] = []
    for p in paths:
        path = os.fspath(p)
        if os.path.isdir(path):
            files.extend(_walk(path, recursive, errors, videos))
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

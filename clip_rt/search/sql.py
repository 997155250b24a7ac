"""SQLite helpers shared by the index's item table (store) and its side tables (photo_store, video_items)."""

from __future__ import annotations

from typing import Iterable, Iterator

ID_PART = 500  # ids per `IN (...)` list: well under SQLite's bound-parameter limit (999 in older builds)


def id_parts(ids: Iterable[int]) -> Iterator[tuple[list[int], str]]:
    """Vector ids in parts of at most ID_PART, each with its "?,?,..." placeholders for one `IN (...)` query."""
    listed = [int(i) for i in ids]
    for start in range(0, len(listed), ID_PART):
        part = listed[start:start + ID_PART]
        yield part, ",".join("?" * len(part))

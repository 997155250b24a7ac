"""Text pools: an index of captions or labels, searched with an image (annotation, image-to-text retrieval) or a text.

    index, report = update_texts("captions.index", model, "captions.txt")
    index.search(model, image="photo.jpg", top_k=5)     # the 5 captions nearest the photo

A text file holds one text per line (blank lines skipped, a UTF-8 byte-order mark dropped); a .csv or .tsv file
with a header row gives the column named caption, text or label. Each distinct text is one item; an update embeds
only the texts that are new to the pool and drops those no longer in the file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import InputError
from .index import Index
from .maintain import UpdateReport, open_for_update, refresh
from .plan import parse_memory
from .store import Item

if TYPE_CHECKING:
    from ..model import ClipModel

TEXT_COLUMNS = ("caption", "text", "label")  # CSV/TSV columns read, first present wins
COMMIT_EVERY = 8192  # texts embedded per transaction


def read_texts(path: str | os.PathLike) -> list[str]:
    """The distinct texts of a text file (one per line) or of a CSV/TSV file's caption/text/label column, in order."""
    p = Path(path)
    try:
        content = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read texts file {p}: {e}") from None
    if p.suffix.lower() in (".csv", ".tsv"):
        rows = csv.DictReader(io.StringIO(content), delimiter="\t" if p.suffix.lower() == ".tsv" else ",")
        column = next((c for c in TEXT_COLUMNS if c in (rows.fieldnames or [])), None)
        if column is None:
            raise InputError(f"{p} has no column named {', '.join(TEXT_COLUMNS)} (its header: {rows.fieldnames})")
        texts = [(r.get(column) or "").strip() for r in rows]
    else:
        texts = [line.strip() for line in content.splitlines()]
    out = list(dict.fromkeys(t for t in texts if t))
    if not out:
        raise InputError(f"texts file {p} has no texts")
    return out


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def update_texts(path: str | os.PathLike, model: "ClipModel", texts_file: str | os.PathLike, *,
                 index_type: str | None = None, memory_budget: int | str | None = None, batch_size: int = 64,
                 progress: Callable[[int, int], None] | None = None,
                 log: Callable[[str], None] | None = None) -> tuple[Index, UpdateReport]:
    """Make the text pool at `path` (created when absent) hold exactly the texts of `texts_file`.
    Returns the pool (the one just written, handed back for reading, not opened again) and what changed."""
    root = Path(path)
    texts = read_texts(texts_file)
    budget = parse_memory(memory_budget) if memory_budget is not None else None
    store = open_for_update(root, model, "texts", {"source": str(Path(texts_file).resolve())})
    try:
        known = {item for _, item, *_ in store.rows()}
        wanted = set(texts)
        new = [t for t in texts if t not in known]
        gone = sorted(known - wanted)
        report = UpdateReport(unchanged=len(texts) - len(new))
        key = store.meta["keys"]["text"]
        for start in range(0, len(new), COMMIT_EVERY):
            chunk = new[start:start + COMMIT_EVERY]
            # progress per batch of the encoder (not per commit), so that a bar moves with the work
            step = None if progress is None else (lambda done, _n, base=start: progress(base + done, len(new)))
            emb = model.encode_texts(chunk, batch_size=batch_size, progress=step)  # [n, D]
            store.commit([Item(t, text_sha256(t), key) for t in chunk], emb)
            report.embedded += len(chunk)
        if gone:
            store.commit(remove=gone)
        report.added, report.removed = len(new), len(gone)
        report.engine, engine = refresh(store, index_type, budget, log)
        store.release()  # the write lock goes; the pool handed back reads on through the same connection
        return Index(store, engine), report
    except BaseException:
        store.close()
        raise

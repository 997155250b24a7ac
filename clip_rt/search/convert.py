"""Converting a clip-rt 0.1 index folder (clip_rt.search.legacy) to the current format in place, without
re-embedding anything: `clip-rt index --convert PATH`. File stats and content hashes are taken now: the files are
assumed unchanged since the index was built."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ..fsutil import sha256_file
from ..package import Package
from .index import Index
from .legacy import EMBEDDINGS, FILES, HEADER, STAGED, LegacyStore
from .maintain import model_meta, refresh_engine
from .store import DB, Item, Store


def convert(path: str | os.PathLike, package: str | os.PathLike | None = None) -> Index:
    """Rewrite a 0.1 index folder in the current format, in place, without re-embedding anything.

    The new files are written into a hidden subfolder, then moved in with the database last (its arrival is the
    commit point: until then the folder still opens as the old index); the old files are removed after."""
    root = Path(path)
    legacy = LegacyStore.load(root)
    meta = legacy.meta
    pkg = Package.open(package or str(meta.get("package")))
    backend, precision = str(meta.get("backend") or "onnxruntime"), str(meta.get("precision") or "fp32")

    class _Probe:  # what check_key and model_meta read from a model, without loading a backend
        def __init__(self) -> None:
            self.package, self.embed_dim = pkg, pkg.embed_dim
            self.backend = type("B", (), {"name": backend, "precision": precision})()
    probe: Any = _Probe()
    legacy.check_key(probe, "image")
    work = root / ".convert"
    shutil.rmtree(work, ignore_errors=True)
    store = Store.create(work, {**model_meta(probe, "images"), "decode": "exact", "converted_from": 1})
    try:
        key = store.meta["keys"]["image"]
        items = []
        for f in legacy._files:
            try:
                st = os.stat(f)
                items.append(Item(f, sha256_file(f), key, st.st_size, st.st_mtime_ns))
            except OSError:  # gone since: kept with no stat, dropped by the next --update that scans its folder
                items.append(Item(f, "", key))
        store.commit(items, legacy.vectors())
        refresh_engine(store)
    finally:
        store.close()
    for p in sorted(work.iterdir(), key=lambda p: p.name == DB):  # the database last
        if p.name != ".write.lock":
            os.replace(p, root / p.name)
    shutil.rmtree(work, ignore_errors=True)
    for name in (HEADER, EMBEDDINGS, FILES, EMBEDDINGS + STAGED, FILES + STAGED):
        (root / name).unlink(missing_ok=True)
    return Index.open(root)

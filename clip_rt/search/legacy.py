"""clip-rt 0.1 index folders (header.json + embeddings.npy + files.json): read them as they are, or convert them.

Such a folder opens read-only (exact search) through LegacyStore, which offers what Index reads from a Store.
Its header keys the embeddings to the whole package's fingerprint, a hash over every artifact, so a package that
gained INT8 artifacts or a TensorRT engine since no longer reproduces it. check_key therefore accepts a package
when a subset of its artifacts that contains the ones the model runs reproduces the old fingerprint: the
package then still holds the very files the index was built with. clip_rt.search.convert writes the current
format in place.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from ..fsutil import sha256_bytes, sha256_file
from .store import FORMAT, LEGACY_HEADER, IndexFileError

if TYPE_CHECKING:
    from ..package import Package

HEADER, EMBEDDINGS, FILES = LEGACY_HEADER, "embeddings.npy", "files.json"
STAGED = ".new"  # a 0.1 save() staged its data files under this suffix before committing the header
MAX_SUBSET_ARTIFACTS = 16  # beyond this many extra artifacts the subset search (2^n hashes) is not attempted


def legacy_fingerprint(pkg: "Package", shas: Sequence[str]) -> str:
    """clip-rt 0.1's Package.fingerprint, over the given artifact hashes."""
    blob = json.dumps({"artifacts": sorted(shas), "model": pkg.model, "preprocess": pkg.preprocess,
                       "tokenizer": pkg.manifest["tokenizer"]}, sort_keys=True)
    return sha256_bytes(blob.encode())[:16]


def package_matches(pkg: "Package", fingerprint: str, required: Sequence[str]) -> bool:
    """True if some subset of the package's artifacts that includes `required` (sha256s) has the 0.1 fingerprint."""
    shas = [a.sha256 for a in pkg.artifacts]
    if not set(required) <= set(shas):
        return False
    optional = [s for s in shas if s not in set(required)]
    if len(optional) > MAX_SUBSET_ARTIFACTS:
        return legacy_fingerprint(pkg, shas) == fingerprint
    for r in range(len(optional) + 1):
        for extra in itertools.combinations(optional, r):
            if legacy_fingerprint(pkg, [*required, *extra]) == fingerprint:
                return True
    return False


class LegacyStore:
    """A 0.1 index folder loaded into memory, checked against the checksums in its header."""

    writable = False

    def __init__(self, root: Path, header: dict[str, Any], embeddings: np.ndarray, files: list[str]):
        self.root = root
        self.header = header
        self._emb = embeddings  # [N, D] float32
        self._files = files
        self.meta = {"format": FORMAT, "format_version": 1, "kind": "images", "dim": int(embeddings.shape[1]),
                     "rows": len(files), "generation": 0, "epoch": 0, "engine": {"kind": "flat"},
                     **{k: header.get(k) for k in ("package", "fingerprint", "backend", "precision", "created")}}

    @classmethod
    def load(cls, root: Path) -> "LegacyStore":
        try:
            header = json.loads((root / HEADER).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise IndexFileError(f"{root / HEADER} is corrupt ({e}); rebuild the index") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise IndexFileError(f"{root / HEADER} is not a clip-rt index header")
        if not isinstance(header.get("format_version"), int) or header["format_version"] > 1:
            raise IndexFileError(f"{root} has index format version {header.get('format_version')}, newer than this "
                                 f"clip-rt reads in a header.json folder; upgrade clip-rt or rebuild the index")
        data: dict[str, Path] = {}
        for name, key in ((EMBEDDINGS, "embeddings_sha256"), (FILES, "files_sha256")):
            p, staged = root / name, root / (name + STAGED)
            if staged.is_file() and sha256_file(staged) == header.get(key):
                data[name] = staged  # a save that committed its header but crashed before renaming this file
                continue
            if not p.is_file():
                raise IndexFileError(f"{p} is missing; rebuild the index")
            if sha256_file(p) != header.get(key):
                raise IndexFileError(f"{p} does not match the checksum in {HEADER} (truncated, corrupt or edited); "
                                     f"rebuild the index")
            data[name] = p
        try:
            emb = np.load(data[EMBEDDINGS], allow_pickle=False)
            files = json.loads(data[FILES].read_text(encoding="utf-8"))
        except (OSError, ValueError, EOFError) as e:
            raise IndexFileError(f"{root} cannot be read ({e}); rebuild the index") from None
        count, dim = header.get("count"), header.get("dim")
        if emb.dtype != np.float32 or emb.shape != (count, dim) or not isinstance(files, list) or len(files) != count:
            raise IndexFileError(f"{root}: data ({emb.dtype} {emb.shape}, {len(files)} files) does not match its header "
                                 f"(float32 ({count}, {dim})); rebuild the index")
        return cls(root, header, np.ascontiguousarray(emb), [str(f) for f in files])

    # -- what Index reads ---------------------------------------------------------------------------------------
    def vectors(self) -> np.ndarray:
        return self._emb

    def live_ids(self) -> np.ndarray:
        return np.arange(len(self._files), dtype=np.int64)

    def count(self) -> int:
        return len(self._files)

    def items_by_id(self, ids: Sequence[int]) -> dict[int, str]:
        return {int(i): self._files[int(i)] for i in ids}

    def rows(self) -> Iterator[tuple[int, str, None, None, str, str, int]]:
        for i, f in enumerate(self._files):
            yield i, f, None, None, "", str(self.meta.get("fingerprint")), 0

    def check_key(self, model: Any, encoder: str) -> None:
        pkg, precision = model.package, model.backend.precision
        fp = self.meta.get("fingerprint")
        used = [a.sha256 for e in ("image", "text") for a in pkg.find(e, precision, "onnxruntime")]
        same_setup = precision == self.meta.get("precision") and model.backend.name == self.meta.get("backend")
        if pkg.fingerprint == fp or (same_setup and package_matches(pkg, str(fp), used)):
            return
        raise IndexFileError(f"the index {self.root} was built with package {self.meta.get('package')} (fingerprint "
                             f"{fp}, {self.meta.get('backend')} {self.meta.get('precision')}); none of the artifact "
                             f"sets of {pkg.root} ({model.backend.name} {precision}) reproduces it: search with the "
                             f"package it was built with, or rebuild the index")

    def close(self) -> None:
        pass

"""clip-rt 0.1's index folder, written byte for byte as its ImageIndex.save did (embeddings.npy, files.json,
header.json): the legacy format that tests/search/test_search_legacy.py, the README's `--convert` line
(tests/cli/test_readme.py) and the page's refusal of old indexes (tests/serve/test_page_routes.py) start from."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from clip_rt.fsutil import sha256_bytes


def write_v1(root: Path, emb: np.ndarray, files: list[str], info: dict) -> Path:
    """An index folder exactly as clip-rt 0.1's ImageIndex.save wrote it."""
    import io

    root.mkdir(parents=True)
    buf = io.BytesIO()
    np.save(buf, np.asarray(emb, np.float32), allow_pickle=False)
    data, names = buf.getvalue(), (json.dumps(files, ensure_ascii=False) + "\n").encode()
    (root / "embeddings.npy").write_bytes(data)
    (root / "files.json").write_bytes(names)
    header = {"format": "clip-rt-index", "format_version": 1, "count": len(files), "dim": int(emb.shape[1]),
              "dtype": "float32", **info, "embeddings_sha256": sha256_bytes(data), "files_sha256": sha256_bytes(names),
              "created": "2026-01-01T00:00:00Z"}
    (root / "header.json").write_text(json.dumps(header, indent=2))
    return root


def v1_of(model, files: list[str], root: Path) -> Path:
    info = {"package": str(Path(model.package.root).resolve()), "fingerprint": model.package.fingerprint,
            "backend": "onnxruntime", "precision": "fp32"}
    return write_v1(root, model.encode_images(files), [os.path.abspath(f) for f in files], info)

"""A retrieval index over image files: embed a folder, save, load, and search by text, image or a mix.

    index, errors = ImageIndex.build(model, ["photos/"])     # folders walked recursively
    index.save("photos.index")                                # a folder: header.json, embeddings.npy, files.json
    index = ImageIndex.load("photos.index")
    index.search(model, text="a dog on a beach", top_k=5)     # [Hit(file, score), ...], best first

Search is exact: one matrix-vector product with numpy. The header records the package fingerprint and
path, backend and precision, the dimensions and the sha256 of both data files; a truncated, edited or
mismatched index is refused with a message saying which.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .errors import ClipRtError, ImageError, InputError, PackageError
from .fsutil import atomic_write_bytes, atomic_write_json, sha256_bytes, sha256_file

if TYPE_CHECKING:
    from .model import ClipModel, ImageInput

FORMAT = "clip-rt-index"
FORMAT_VERSION = 1
HEADER, EMBEDDINGS, FILES = "header.json", "embeddings.npy", "files.json"
STAGED = ".new"  # suffix of a data file written by save() before its header commits it


class IndexFileError(ClipRtError):
    """An index folder is missing, truncated, corrupt, or was built with another model."""


@dataclass(frozen=True)
class Hit:
    file: str
    score: float  # cosine similarity between the query and the image


def progress_printer(label: str = "embedded") -> Callable[[int, int], None]:
    """A progress(done, total) callback: a tqdm bar on stderr if tqdm is installed, else count lines on stderr."""
    try:
        from tqdm import tqdm  # type: ignore[import-untyped]
    except ImportError:
        state = {"last": 0.0}

        def count(done: int, total: int) -> None:
            now = time.monotonic()
            if done == total or now - state["last"] >= 2.0:
                state["last"] = now
                print(f"{label} {done}/{total} images", file=sys.stderr, flush=True)
        return count
    bar: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, unit="img", desc=label, file=sys.stderr)
        bar["bar"].update(done - bar["bar"].n)
        if done >= total:
            bar["bar"].close()
    return update


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


class ImageIndex:
    """Normalized image embeddings [N, D] float32 and the N files they came from."""

    def __init__(self, embeddings: np.ndarray, files: Sequence[str], info: dict[str, Any]):
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(files):
            raise InputError(f"index needs embeddings [N, D] for N files, got {embeddings.shape} for {len(files)} files")
        self.embeddings = embeddings  # [N, D] float32, rows L2-normalized
        self.files = list(files)
        self.info = dict(info)  # package fingerprint + path, backend, precision (what made the embeddings)

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return (f"ImageIndex({len(self)} images, dim {self.dim}, backend={self.info.get('backend')!r}, "
                f"precision={self.info.get('precision')!r}, package={self.info.get('package')!r})")

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @classmethod
    def build(cls, model: "ClipModel", paths: Sequence[str | os.PathLike], batch_size: int = 32,
              progress: bool | Callable[[int, int], None] = False) -> tuple["ImageIndex", list[ImageError]]:
        """Embed files and folders (walked recursively). Returns the index of every readable image and the
        per-file errors of the rest. progress: True for a bar (tqdm if installed, else counts on stderr)."""
        callback = progress_printer() if progress is True else (progress or None)
        embeds, files, errors = model.encode_image_files(paths, batch_size=batch_size, progress=callback)
        info = {"package": str(Path(model.package.root).resolve()), "fingerprint": model.package.fingerprint,
                "backend": model.backend.name, "precision": model.backend.precision}
        return cls(embeds, [os.path.abspath(f) for f in files], info), errors

    # -- saving and loading ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the index folder so that a crash at any point leaves the old index or the new one, whole.

        The data files are first staged as EMBEDDINGS.new / FILES.new (each written atomically), then the header
        (holding their sha256) replaces the old one atomically: that is the commit point. Then the staged files
        are renamed into place. A reader whose header does not match the data files uses the staged ones when
        they match (a save interrupted after its commit), else refuses the index."""
        root = Path(path)
        if root.exists() and not root.is_dir():
            raise InputError(f"{root} exists and is not a folder; choose another index path")
        emb = _npy_bytes(self.embeddings)
        files = (json.dumps(self.files, ensure_ascii=False) + "\n").encode("utf-8")
        atomic_write_bytes(root / (EMBEDDINGS + STAGED), emb)
        atomic_write_bytes(root / (FILES + STAGED), files)
        header = {"format": FORMAT, "format_version": FORMAT_VERSION, "count": len(self), "dim": self.dim,
                  "dtype": "float32", **self.info, "embeddings_sha256": sha256_bytes(emb),
                  "files_sha256": sha256_bytes(files), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        atomic_write_json(root / HEADER, header)
        os.replace(root / (EMBEDDINGS + STAGED), root / EMBEDDINGS)
        os.replace(root / (FILES + STAGED), root / FILES)
        return root

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ImageIndex":
        """Read an index folder, checking its format, both checksums and the dimensions."""
        root = Path(path)
        if not (root / HEADER).is_file():
            raise IndexFileError(f"{root} is not a clip-rt index (no {HEADER}); build one with: clip-rt index PKG DIR -o {root}")
        try:
            header = json.loads((root / HEADER).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise IndexFileError(f"{root / HEADER} is corrupt ({e}); rebuild the index") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise IndexFileError(f"{root / HEADER} is not a clip-rt index header")
        if not isinstance(header.get("format_version"), int) or header["format_version"] > FORMAT_VERSION:
            raise IndexFileError(f"{root} has index format version {header.get('format_version')}, newer than this "
                                 f"clip-rt reads ({FORMAT_VERSION}); upgrade clip-rt or rebuild the index")
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
        info = {k: header.get(k) for k in ("package", "fingerprint", "backend", "precision")}
        return cls(emb, files, info)

    def check_model(self, model: "ClipModel") -> None:
        """Refuse a model whose embeddings are not comparable with this index's."""
        if model.package.fingerprint != self.info.get("fingerprint"):
            raise IndexFileError(f"the index was built with package {self.info.get('package')} (fingerprint "
                                 f"{self.info.get('fingerprint')}), not {model.package.root} (fingerprint "
                                 f"{model.package.fingerprint}); search with the same package or rebuild the index")
        if model.embed_dim != self.dim:
            raise IndexFileError(f"the index holds {self.dim}-d embeddings, the model makes {model.embed_dim}-d ones")

    def open_model(self, **kwargs: Any) -> "ClipModel":
        """Load the package this index was built with (from the path in its header), with its backend and
        precision unless given in kwargs."""
        from .model import load

        opts: dict[str, Any] = {"backend": self.info.get("backend") or "onnxruntime", "precision": self.info.get("precision") or "fp32"}
        opts.update(kwargs)
        try:
            model = load(str(self.info.get("package")), **opts)
        except PackageError as e:
            raise PackageError(f"{e} (the index was built with that package; if it moved, name it: "
                               f"clip-rt search INDEX --package PKG)") from None
        self.check_model(model)
        return model

    # -- searching ---------------------------------------------------------------------------------------
    def search_embedding(self, query: np.ndarray, top_k: int = 10) -> list[Hit]:
        """A query embedding [D] (normalized here) -> the top_k files by cosine similarity, best first."""
        if top_k < 1:
            raise InputError(f"top_k must be >= 1, got {top_k}")
        q = np.asarray(query, dtype=np.float32).reshape(-1)  # [D]
        if q.shape[0] != self.dim:
            raise InputError(f"query has {q.shape[0]} dims, the index {self.dim}")
        norm = float(np.linalg.norm(q))
        if not np.isfinite(norm) or norm == 0.0:
            raise InputError("query embedding is zero or not finite (text and image cancel out?)")
        scores = self.embeddings @ (q / norm)  # [N]
        k = min(top_k, len(scores))
        if k == 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        return [Hit(self.files[i], float(scores[i])) for i in top]

    def query_embedding(self, model: "ClipModel", text: str | None = None, image: "ImageInput | None" = None,
                        text_weight: float = 0.5) -> np.ndarray:
        """The normalized query vector [D]: the text's, the image's, or normalize(w * text + (1 - w) * image)."""
        if text is None and image is None:
            raise InputError("give a text, an image, or both")
        if not 0.0 <= text_weight <= 1.0:
            raise InputError(f"text_weight must be in [0, 1], got {text_weight}")
        self.check_model(model)
        parts = []
        if text is not None:
            parts.append((text_weight if image is not None else 1.0, model.encode_texts([text])[0]))  # [D]
        if image is not None:
            parts.append((1.0 - text_weight if text is not None else 1.0, model.encode_images([image])[0]))  # [D]
        q = sum(w * v for w, v in parts)
        return np.asarray(q / np.linalg.norm(q), dtype=np.float32)  # [D]

    def search(self, model: "ClipModel", text: str | None = None, image: "ImageInput | None" = None,
               text_weight: float = 0.5, top_k: int = 10) -> list[Hit]:
        """Search by text, by image (path, PIL image or array), or by both mixed with text_weight in [0, 1]."""
        return self.search_embedding(self.query_embedding(model, text, image, text_weight), top_k)


def recall_at_k(image_embeds: np.ndarray, text_embeds: np.ndarray, text_image: Sequence[int],
                ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Retrieval recall in percent. text_image[j] is the row of caption j's image in image_embeds [N, D].

    Text-to-image: a caption counts if its image is among the k images most similar to it.
    Image-to-text: an image counts if any of its captions is among the k captions most similar to it.
    Returns {"t2i@k": ..., "i2t@k": ...} for each k.
    """
    owner = np.asarray(text_image)  # [M]
    sims = image_embeds @ text_embeds.T  # [N, M]
    out: dict[str, float] = {}
    t2i_rank = np.argsort(-sims.T, axis=1, kind="stable")  # [M, N] images by similarity to each caption
    i2t_rank = np.argsort(-sims, axis=1, kind="stable")  # [N, M] captions by similarity to each image
    for k in ks:
        t2i = (t2i_rank[:, :k] == owner[:, None]).any(axis=1)  # [M]
        i2t = (owner[i2t_rank[:, :k]] == np.arange(len(sims))[:, None]).any(axis=1)  # [N]
        out[f"t2i@{k}"] = 100.0 * float(t2i.mean())
        out[f"i2t@{k}"] = 100.0 * float(i2t.mean())
    return out

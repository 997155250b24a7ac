"""Embedding photo files for an index, with their metadata and thumbnails taken from the same decode.

    emb, ok, errors, extras = encode_photo_files(model, files, decode="fast", thumbnails=True)
    # emb [len(ok), D] float32; extras[i] = (PhotoMeta, JPEG bytes or None) for ok[i]

Each file is opened once: Pillow parses its header (size and EXIF, read here before a reduced-scale decode shrinks
the size), decodes the pixels once (at the DCT scale decode="fast" picks, as clip_rt.decode does), turns them
upright by the EXIF orientation, and from that one image come both the model's crop (clip_rt.preprocess.resize_crop,
the same call the plain path makes, so the embeddings are identical) and the thumbnail. A file this path cannot read
is handed to clip_rt.decode.open_image, whose checks and messages are the reference: the error a user sees is
the one `clip-rt embed` would print.

backfill_photos() gives the photos of an index built before metadata and thumbnails theirs (a decode, no embedding).
Batches are decoded on a thread pool (Pillow releases the GIL) one batch ahead of the encoder, as
ClipModel.encode_image_files does.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from PIL import Image

from ..errors import ImageError
from ..decode import DEFAULT_MAX_PIXELS, check_decode, open_image
from ..preprocess import resize_crop
from .photo_meta import PhotoMeta, read_meta
from .photo_store import write_photos
from .thumbs import make_thumbnail

if TYPE_CHECKING:
    from ..model import ClipModel
    from ..preprocess import PreprocessConfig

Decoded = tuple[np.ndarray, PhotoMeta, "bytes | None"]  # the crop [S, S, 3] uint8, the metadata, the thumbnail


def _open(path: str, max_pixels: int, draft_edge: int | None) -> tuple[Image.Image, PhotoMeta]:
    """The decoded, upright RGB image and the header's metadata from one open (ImageError when unreadable): the
    metadata is read by open_image's header hook, before draft() shrinks the size or EXIF orientation is applied."""
    found: list[PhotoMeta] = []
    img = open_image(path, max_pixels=max_pixels, draft_edge=draft_edge, header=lambda im: found.append(read_meta(im)))
    return img, found[0]


def decode_photo(path: str, cfg: "PreprocessConfig", decode: str = "fast", thumbnails: bool = True,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded | ImageError:
    """One file -> (model crop, metadata, thumbnail or None), or the ImageError saying why it cannot be read."""
    draft_edge = cfg.resize if check_decode(decode) == "fast" else None
    try:
        img, meta = _open(path, max_pixels, draft_edge)
        return resize_crop(img, cfg), meta, (make_thumbnail(img) if thumbnails else None)
    except ImageError as e:
        return e
    except Exception as e:  # noqa: BLE001 - one bad file must not stop the index; it is reported, not hidden
        return ImageError(path, f"unexpected {type(e).__name__}: {e}")


def _decode_batch(paths: Sequence[str], cfg: "PreprocessConfig", decode: str, thumbnails: bool, max_pixels: int,
                  workers: int) -> list[Decoded | ImageError]:
    if workers <= 1 or len(paths) <= 1:
        return [decode_photo(p, cfg, decode, thumbnails, max_pixels) for p in paths]
    with ThreadPoolExecutor(max_workers=min(workers, len(paths)), thread_name_prefix="clip-rt-photo") as pool:
        return list(pool.map(lambda p: decode_photo(p, cfg, decode, thumbnails, max_pixels), paths))


def encode_photo_files(model: "ClipModel", files: Sequence[str], batch_size: int = 32, decode: str = "fast",
                       thumbnails: bool = True, progress: Callable[[int, int], None] | None = None,
                       workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
                       ) -> tuple[np.ndarray, list[str], list[ImageError], list[tuple[PhotoMeta, bytes | None]]]:
    """Image files -> (float32 [N, D], the N files embedded, per-file errors, (metadata, thumbnail) per embedded
    file). Embeddings equal model.encode_image_files(files, decode=decode)'s. progress(done, total) per batch."""
    cfg = model.preprocess_config
    n_workers = min(8, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    files = [str(f) for f in files]
    chunks = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    outs: list[np.ndarray] = []
    ok: list[str] = []
    errors: list[ImageError] = []
    extras: list[tuple[PhotoMeta, bytes | None]] = []
    done = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="clip-rt-photo-prefetch") as ahead:
        pending = ahead.submit(_decode_batch, chunks[0], cfg, decode, thumbnails, max_pixels, n_workers) \
            if chunks else None
        for i, chunk in enumerate(chunks):
            ready = pending.result()  # type: ignore[union-attr]
            if i + 1 < len(chunks):  # the next batch decodes while this one is encoded
                pending = ahead.submit(_decode_batch, chunks[i + 1], cfg, decode, thumbnails, max_pixels, n_workers)
            crops = []
            for f, r in zip(chunk, ready):
                if isinstance(r, ImageError):
                    errors.append(r)
                    continue
                crops.append(r[0])
                ok.append(f)
                extras.append((r[1], r[2]))
            if crops:
                outs.append(model.encode_images(np.stack(crops)))  # [b, S, S, 3] prepared crops -> [b, D]
            done += len(chunk)
            if progress is not None:
                progress(done, len(files))
    emb = np.concatenate(outs) if outs else np.zeros((0, model.embed_dim), np.float32)
    return emb, ok, errors, extras


def backfill_photos(store: Any, model: "ClipModel", decode: str = "fast", thumbnails: bool = True,
                    batch: int = 256, workers: int | None = None) -> int:
    """Metadata (and thumbnails) for the items of a writable index that have none: photos indexed before the photo
    tables existed. Decodes those files (nothing is embedded); one transaction per batch. Returns how many were
    looked at; a file that cannot be read now is left without (an update drops it when it is gone)."""
    conn = store.conn
    missing = conn.execute("SELECT i.vector_id, i.item FROM items i LEFT JOIN photos p ON p.vector_id = i.vector_id "
                           "WHERE p.vector_id IS NULL ORDER BY i.vector_id").fetchall()
    n_workers = min(8, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    for start in range(0, len(missing), batch):
        part = missing[start:start + batch]
        decoded = _decode_batch([item for _, item in part], model.preprocess_config, decode, thumbnails,
                                DEFAULT_MAX_PIXELS, n_workers)
        rows = [(vid, r[1], r[2]) for (vid, _), r in zip(part, decoded) if not isinstance(r, ImageError)]
        conn.execute("BEGIN IMMEDIATE")
        try:
            write_photos(conn, rows)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return len(missing)

"""Building and updating an image index: only new and changed files go through the encoder.

    index, report = update_images("photos.index", model, ["photos/"])   # creates the index when absent
    report.embedded          # images that went through the image encoder
    remove_items("photos.index", ["photos/2019/"])

A file is unchanged when its size and modification time match the table; otherwise its sha256 decides: the same
content (touched, or moved from a path that vanished) keeps its vector, new content is embedded. Files the scan
no longer finds under the given folders are dropped; files indexed from other folders are left alone. New vectors
are committed every COMMIT_EVERY files (so an interrupted build keeps what it embedded and the next --update goes
on from there); the drops are committed last, then the engine is brought up to date (clip_rt.search.maintain).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..errors import ImageError, InputError
from ..fsutil import sha256_file
from ..decode import DEFAULT_MAX_PIXELS, check_decode
from ..files import iter_image_files, split_videos
from .index import Index
from .photo_index import backfill_photos, encode_photo_files
from .photo_store import ensure_schema, photo_writer, read_photos
from .maintain import UpdateReport, as_vectors, open_for_update, refresh, refresh_engine, scoped
from .plan import parse_memory
from .store import IndexFileError, Item, Store, is_legacy
from .tune import tuning_texts
from .video_items import FrameReader, frame_ids, frames_by_id, update_videos

if TYPE_CHECKING:
    from ..model import ClipModel

COMMIT_EVERY = 1024  # files embedded per transaction
HASH_WORKERS = 4  # threads hashing files (hashlib releases the GIL on large buffers)


def _stat(path: str) -> tuple[int, int] | ImageError:
    try:
        st = os.stat(path)
    except OSError as e:
        return ImageError(path, f"cannot read file ({e.strerror or e})")
    return st.st_size, st.st_mtime_ns


def _hash(path: str) -> str | ImageError:
    try:
        return sha256_file(path)
    except PermissionError:
        return ImageError(path, "permission denied")
    except OSError as e:
        return ImageError(path, f"cannot read file ({e.strerror or e})")


def update_images(path: str | os.PathLike, model: "ClipModel", paths: Sequence[str | os.PathLike], *,
                  decode: str | None = None, thumbnails: bool | None = None,
                  index_type: str | None = None, memory_budget: int | str | None = None,
                  batch_size: int = 32, progress: Callable[[int, int], None] | None = None,
                  log: Callable[[str], None] | None = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS,
                  videos: FrameReader | None = None) -> tuple[Index, UpdateReport]:
    """Index the image files under `paths` into the index folder `path` (created when absent, else updated).

    decode: "fast" or "exact" (see clip_rt.preprocess); None: the index's recorded choice ("fast" for a new one).
    thumbnails: keep a thumbnail of each photo in the index (clip_rt.search.thumbs); None: the recorded choice (True
    for a new index). Photo metadata (EXIF date, camera, size) is always kept; both come from the one decode that
    embeds the photo (clip_rt.search.photo_index), and an index from before them gets them on its next update.
    index_type / memory_budget: see clip_rt.search.plan; None keeps the recorded choice. progress(done, total) is
    called as images are embedded; log(message) for the engine's steps. max_pixels: larger images are refused
    as decompression bombs (reported in report.errors). Returns the index (opened read-only) and
    the report (the index is the one just written, handed back for reading, not opened again). Raises InputError when the scan finds no image file at all (an unmounted folder must not empty
    the index).
    videos: a FrameReader (clip_rt.video.index_frames) to index video files too, one item per kept frame
    (clip_rt.search.video_items); None: video files are not looked for (named ones are read as images).
    """
    root = Path(path)
    roots = [os.path.abspath(p) for p in paths]
    found, errors = iter_image_files([str(p) for p in paths], videos=videos is not None)
    found, clips = split_videos(found) if videos is not None else (found, [])
    clips = [os.path.abspath(f) for f in clips]
    if not found and not clips:
        what = "; ".join(f"{e.file}: {e.reason}" for e in errors[:3])
        raise InputError(f"no image files found under {', '.join(map(str, paths))}"
                         + (" (nor video files)" if videos is not None else "") + (f" ({what})" if what else ""))
    budget = parse_memory(memory_budget) if memory_budget is not None else None
    store = open_for_update(root, model, "images", {"decode": check_decode(decode or "fast"),
                                                     "thumbnails": True if thumbnails is None else bool(thumbnails)})
    try:
        recorded = store.meta.get("decode", "fast")
        ensure_schema(store.conn)  # the photo tables (an index from before them is migrated here)
        thumbs = bool(store.meta.get("thumbnails", True)) if thumbnails is None else bool(thumbnails)
        if decode is not None and decode != recorded:
            raise InputError(f"{root} was built with --decode {recorded}; updating it with --decode {decode} would "
                             f"mix the two in one index (rebuild it into a new folder to switch)")
        report = _update(store, model, roots, [os.path.abspath(f) for f in found], errors, recorded, batch_size,
                         progress, max_pixels, thumbs)
        if videos is not None:
            _check_video_settings(store, videos.settings)
            update_videos(store, videos, lambda path: scoped(path, roots), clips, report, thumbs)
        report.engine, engine = refresh(store, index_type, budget, log,
                                        text_queries=lambda: model.encode_texts(tuning_texts()))
        store.release()  # the write lock goes; the index handed back reads on through the same connection
        return Index(store, engine), report
    except BaseException:
        store.close()
        raise


def _check_video_settings(store: Store, settings: dict) -> None:
    """Record how frames are chosen on the first video update; refuse another choice later (one index, one rule)."""
    recorded = store.meta.get("video")
    if recorded is None:
        store.set_meta(video=dict(settings))
    elif recorded != settings:
        said = ", ".join(f"{k} {v}" for k, v in recorded.items())
        raise InputError(f"{store.root} samples video frames with {said}; updating it with other settings would mix "
                         f"the two in one index (give the recorded ones, or rebuild it into a new folder)")


def _update(store: Store, model: "ClipModel", roots: list[str], files: list[str], errors: list[ImageError],
            decode: str, batch_size: int, progress: Callable[[int, int], None] | None,
            max_pixels: int = DEFAULT_MAX_PIXELS, thumbnails: bool = True) -> UpdateReport:
    report = UpdateReport(errors=list(errors))
    broken = store.verify()  # vectors lost or damaged (disk trouble, a hand-edited file): embedded again below
    if broken:
        store.commit(remove=broken)
        report.repaired = len(broken)
    frames = frame_ids(store.conn)  # video frames: clip_rt.search.video_items keeps them
    known = {item: (vid, size, mtime, sha) for vid, item, size, mtime, sha, _, _ in store.rows() if vid not in frames}
    found = set(files)
    vanished = [p for p in known if scoped(p, roots) and p not in found]
    with ThreadPoolExecutor(HASH_WORKERS, thread_name_prefix="clip-rt-hash") as pool:
        stats = dict(zip(files, pool.map(_stat, files)))
        suspects = [f for f in files if not isinstance(stats[f], ImageError) and
                    (f not in known or known[f][1:3] != stats[f])]
        hashes = dict(zip(suspects, pool.map(_hash, suspects)))
    gone_by_hash = {known[p][3]: p for p in vanished}
    to_embed, touched, moved = [], [], []
    for f in files:
        st, sha = stats[f], hashes.get(f)
        if isinstance(st, ImageError) or isinstance(sha, ImageError):
            report.errors.append(st if isinstance(st, ImageError) else sha)  # type: ignore[arg-type]
        elif sha is None:
            report.unchanged += 1
        elif f in known and known[f][3] == sha:
            touched.append((f, st[0], st[1]))
        elif f not in known and sha in gone_by_hash:
            moved.append((f, st, sha, gone_by_hash.pop(sha)))
        else:
            to_embed.append(f)
    image_key = store.meta["keys"]["image"]
    total, done = len(to_embed), 0
    for start in range(0, total, COMMIT_EVERY):
        chunk = to_embed[start:start + COMMIT_EVERY]

        def step(d: int, _n: int, base: int = done) -> None:
            if progress is not None:
                progress(base + d, total)
        # One decode per photo: the embedding, its EXIF facts and its thumbnail (same embeddings as encode_image_files)
        emb, ok, bad, extras = encode_photo_files(model, chunk, batch_size=batch_size, decode=decode,
                                                  thumbnails=thumbnails, progress=step, max_pixels=max_pixels)
        report.errors.extend(bad)
        items: list[Item | None] = []
        for f in ok:
            st = _stat(f)
            if isinstance(st, ImageError) or st != stats[f]:  # rewritten while it was being read
                report.errors.append(ImageError(f, "changed while it was being indexed; run the update again"))
                items.append(None)
                continue
            items.append(Item(f, hashes[f], image_key, st[0], st[1]))  # type: ignore[arg-type]
        keep = [i for i, it in enumerate(items) if it is not None]
        adds = [it for it in items if it is not None]
        photos = [extras[i] for i in keep]  # (metadata, thumbnail) of each added item, in the same transaction
        store.commit(adds, emb[keep], remove=[it.item for it in adds if it.item in known], also=photo_writer(photos))
        report.embedded += len(ok)
        report.changed += sum(1 for it in adds if it.item in known)
        report.added += sum(1 for it in adds if it.item not in known)
        done += len(chunk)
    if moved or vanished:  # one transaction: the moved files' vectors under their new paths, every vanished path out
        vectors = store.vectors()
        move_items = [Item(f, sha, image_key, st[0], st[1]) for f, st, sha, _ in moved]
        move_vecs = as_vectors([np.asarray(vectors[[known[old][0] for *_, old in moved]])], store.dim)
        carried = read_photos(store.conn, [known[old][0] for *_, old in moved])  # a moved photo keeps its facts
        rows = [carried.get(known[old][0], (None, None)) for *_, old in moved]
        store.commit(move_items, move_vecs, remove=vanished, also=photo_writer(rows))
    if touched:
        store.touch(touched)
    backfill_photos(store, model, decode, thumbnails)
    report.removed = len(vanished) - len(moved)
    report.moved, report.touched = len(moved), len(touched)
    report.unchanged += len(touched)
    return report


def remove_items(path: str | os.PathLike, items: Sequence[str | os.PathLike],
                 log: Callable[[str], None] | None = None) -> UpdateReport:
    """Drop files (or every file under a folder) from an image index, or texts from a text pool. No model needed."""
    root = Path(path)
    if is_legacy(root):
        raise IndexFileError(f"{root} is a clip-rt 0.1 index folder; convert it first with: clip-rt index --convert {root}")
    store = Store.open(root, writable=True)
    try:
        by_id = {row[0]: row[1] for row in store.rows()}  # vector id -> item, in id order
        indexed = list(by_id.values())
        in_index = set(indexed)
        videos = frames_by_id(store.conn, list(frame_ids(store.conn)))  # a video's frames go with its path
        file_of = {by_id[vid]: video for vid, (video, _) in videos.items() if vid in by_id}
        texts = store.meta.get("kind") == "texts"
        present: list[str] = []
        missing: list[str] = []
        for p in items:
            if texts:
                hits = [str(p)] if str(p) in in_index else []
            else:
                hits = [x for x in indexed if scoped(file_of.get(x, x), [os.path.abspath(p)])]
            present.extend(hits)
            if not hits:
                missing.append(str(p))
        if missing:
            raise InputError(f"not in the index {root}: {', '.join(missing[:5])}"
                             + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""))
        store.commit(remove=sorted(set(present)))
        report = UpdateReport(removed=len(present))
        report.engine = refresh_engine(store, progress=log)
    finally:
        store.close()
    return report

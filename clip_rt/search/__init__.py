"""Search: image indexes and text pools over FAISS (optional) and SQLite, with incremental updates.

    from clip_rt.search import Index, update_images, update_texts, remove_items
    index, report = update_images("photos.index", model, ["photos/"])    # build, or update: only new files embedded
    index.search(model, text="a red bicycle", top_k=5)                    # [Hit(item, score)], best first
    pool, _ = update_texts("captions.index", model, "captions.txt")
    pool.search(model, image="photo.jpg", top_k=5)                        # the captions nearest a photo
    import_vectors("mine.index", names, embeddings, {})                   # ready-made embeddings; search_vector

One concern per module (each imports only those above it in this list; none imports one below):
    sql        SQLite helpers shared by the item table and its side tables (ids in parts for IN lists)
    store      the index folder: SQLite item table, append-only vectors file, the commit protocol; item kinds
    ops        exact top-k, the exact rerank of candidates, the lazy FAISS import (no engine kind named)
    engine     the two engine shapes: exact numpy search, and FAISS shards (candidates + exact rerank), its file
    kinds/     one module per engine kind (flat, ivfsq, pqfs, ivfpq, hnsw): sizing, build, search parameters,
               tuning space, fallback; kinds/__init__ is the table (a new kind: one file plus one row)
    plan       which kind a collection gets from its size and a memory budget (iterates the table)
    tune       build-time recall@10 against exact on held-back queries, over the kind's settings
    legacy     clip-rt 0.1 index folders, read as they are
    video_items  videos in an image index: one item per kept frame (VIDEO#t=S), the frames table, their update
               (the frames come from clip_rt.video.index_frames, handed in: this floor never imports PyAV)
    index      Index: open, check the model, search by text / image / vector
    maintain   shared by updates: open for writing, bring the engine up to date, compaction
    update     image indexes: scan, diff (size, mtime, sha256), embed new and changed files, drop vanished ones
    texts      text pools from a caption or label file
    convert    clip-rt 0.1 index folders converted in place
    recall     retrieval recall@k (text-to-image, image-to-text)
Per-item data beside the vectors (photo metadata, thumbnails) belongs in store's SQLite file as tables of its own
with a module each, filled where update embeds; a filter over it is a narrower `live` mask for the engine.

FAISS loads only when an approximate index is built or searched; without it every index searches exactly.
"""

from .index import Hit, Index, open_index
from .maintain import UpdateReport, import_vectors
from .recall import recall_at_k
from .store import IndexFileError
from .texts import update_texts
from .update import remove_items, update_images

ImageIndex = Index  # clip-rt 0.1's name (its build() took no folder: use update_images)

__all__ = ["Hit", "ImageIndex", "Index", "IndexFileError", "UpdateReport", "import_vectors", "open_index",
           "recall_at_k", "remove_items", "update_images", "update_texts"]

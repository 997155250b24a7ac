"""Search: image indexes and text pools over FAISS (optional) and SQLite, with incremental updates.

    from clip_rt.search import Index, update_images, update_texts, remove_items
    index, report = update_images("photos.index", model, ["photos/"])    # build, or update: only new files embedded
    index.search(model, text="a red bicycle", top_k=5)                    # [Hit(item, score)], best first
    pool, _ = update_texts("captions.index", model, "captions.txt")
    pool.search(model, image="photo.jpg", top_k=5)                        # the captions nearest a photo
    import_vectors("mine.index", names, embeddings, {})                   # ready-made embeddings; search_vector

One concern per module:
    store      the index folder: SQLite item table, append-only vectors file, the commit protocol
    plan       which engine a collection gets (exact, IVF-PQ, HNSW) from its size and a memory budget
    engine     exact numpy search and the FAISS engine (candidates + exact rerank), its file and its sync
    tune       build-time recall@10 against exact on held-back queries; picks nprobe and the rerank depth
    index      Index: open, check the model, search by text / image / vector
    maintain   shared by updates: open for writing, bring the engine up to date, compaction
    update     image indexes: scan, diff (size, mtime, sha256), embed new and changed files, drop vanished ones
    texts      text pools from a caption or label file
    legacy     clip-rt 0.1 index folders: read as they are, or convert in place
    recall     retrieval recall@k (text-to-image, image-to-text)

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

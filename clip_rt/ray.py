"""clip-rt on a Ray cluster (the `serve` and `scale` extras): connect, embed a collection, serve over HTTP.

    import clip_rt.ray
    run = clip_rt.ray.embed_images("pkg/", ["photos/"], "out/", actors=2)   # Parquet shards + failures, resumable
    clip_rt.ray.read_embeddings("out/")                                      # -> (float32 [N, D], files)

`import clip_rt.ray` does not import Ray; the functions below do, and say which extra to install without it.
A facade above scale/ (whose names it re-exports, resolved on first use); connect lives in clip_rt/cluster.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_getattr
from .cluster import LOCAL_OBJECT_STORE_BYTES, SERVE_FAST_PATH, connect  # noqa: F401 - clip_rt.ray's names

if TYPE_CHECKING:
    from .scale.pipeline import EmbedRun, embed_images
    from .scale.shards import read_embeddings, read_failures, to_index

__all__ = ["connect", "embed_images", "read_embeddings", "read_failures", "to_index", "EmbedRun"]

_LAZY = {"embed_images": "clip_rt.scale.pipeline", "EmbedRun": "clip_rt.scale.pipeline",
         "read_embeddings": "clip_rt.scale.shards", "read_failures": "clip_rt.scale.shards",
         "to_index": "clip_rt.scale.shards"}

__getattr__ = lazy_getattr(__name__, _LAZY, globals())

"""Batch embedding of image collections on a Ray cluster (Ray Data; the `scale` extra).

Modules: shards (the output folder: plan, Parquet shards, failures; pyarrow only) and pipeline (the Ray Data run).
The public entry points are clip_rt.ray.embed_images / read_embeddings / to_index and `clip-rt embed --ray`.
Importing this package imports neither Ray nor pyarrow.
"""

"""Retrieval recall@k of image and caption embeddings (text-to-image and image-to-text)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


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

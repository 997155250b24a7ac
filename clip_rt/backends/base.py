"""The one small interface every backend implements (one file per backend, same surface).

A backend turns contract-shaped arrays into embeddings; it knows nothing of files, tokenizers or labels.

    encode_images(pixels)    uint8 [B, S, S, 3] RGB  -> float32 [B, D], L2-normalized
    encode_texts(input_ids)  int32 [B, L]            -> float32 [B, D], L2-normalized

Implementations must be safe to call from several threads at once (serialize internally if the
underlying session or engine context is not), and must fail with BackendUnavailable rather than run
on another device or precision than the one asked for.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Backend(Protocol):
    name: str  # "onnxruntime" | "tensorrt" | "torch"
    precision: str  # "fp32" | "fp16" | "int8"
    device: str  # "cpu" | "cuda" | "cuda:N"

    def encode_images(self, pixels: np.ndarray) -> np.ndarray: ...

    def encode_texts(self, input_ids: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict:
        """What actually runs (providers, engine file, threads), for `info`, logs and benchmark rows."""
        ...

    def close(self) -> None: ...

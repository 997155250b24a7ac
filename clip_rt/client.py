"""`clip_rt.client`: the Python client of `clip-rt serve` (httpx + numpy; no Ray). See clip_rt.serve.client."""

from __future__ import annotations

from .serve.client import Client, ImageEmbeddings, ServeError

__all__ = ["Client", "ImageEmbeddings", "ServeError"]

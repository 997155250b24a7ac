"""A small Python client of `clip-rt serve` (needs httpx and numpy; no Ray).

    from clip_rt.client import Client
    with Client("http://127.0.0.1:8000") as c:
        c.embed_texts(["a dog", "a cat"])                      # float32 [2, D], L2-normalized
        emb = c.embed_images(["a.jpg", "b.png"])               # .embeddings [N, D], .files, .errors
        c.classify(["a.jpg"], ["cat", "dog"], top_k=1)         # [{"file", "labels": [{"label", "score"}]}]
        c.search(text="a red bicycle", top_k=5)                # [{"file", "score"}]

Every call is idempotent, so the client retries what the server says may succeed later: 503 (the queue is full,
or a replica died under the request) and failed connections, with exponential backoff that honours Retry-After,
at most `retries` times. Any other non-200 answer raises ServeError with the server's reason.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Sequence, Union

import numpy as np

from ..errors import ClipRtError, missing_dependency

ImageSource = Union[str, "os.PathLike[str]", bytes, tuple[str, bytes]]


class ServeError(ClipRtError):
    """The server answered with an error: status, its reason, and per-image errors where it gave them."""

    def __init__(self, status: int, reason: str, errors: list[dict[str, str]] | None = None):
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status
        self.reason = reason
        self.errors = errors or []


@dataclass(frozen=True)
class ImageEmbeddings:
    embeddings: np.ndarray  # float32 [N, D], L2-normalized, one row per readable image
    files: list[str]  # the name of each row's image
    errors: list[dict[str, str]]  # [{"file", "error"}] for the images the server could not read


def image_parts(images: Sequence[ImageSource]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Paths, bytes or (name, bytes) pairs -> httpx multipart parts named `files`."""
    if isinstance(images, (str, bytes, os.PathLike)):
        images = [images]
    parts = []
    for i, img in enumerate(images):
        if isinstance(img, tuple):
            name, data = img
        elif isinstance(img, (bytes, bytearray)):
            name, data = f"images[{i}]", bytes(img)
        else:
            name = os.fspath(img)
            with open(name, "rb") as f:
                data = f.read()
        parts.append(("files", (name, data, "application/octet-stream")))
    return parts


def error_of(response: Any) -> ServeError:
    """A non-200 httpx response -> ServeError, with the JSON reason when the server gave one."""
    try:
        doc = response.json()
        reason, errors = str(doc.get("error", doc)), doc.get("errors")
    except ValueError:
        reason, errors = response.text.strip() or response.reason_phrase, None
    return ServeError(response.status_code, reason, errors)


class Client:
    """A connection pool to one clip-rt server; thread-safe (httpx.Client is)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", timeout: float = 60.0, retries: int = 6,
                 backoff_s: float = 0.25, max_backoff_s: float = 5.0):
        try:
            import httpx
        except ImportError:
            raise missing_dependency("httpx", "serve", "clip_rt.client") from None
        self._httpx = httpx
        self._http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout)
        self.retries = retries  # extra attempts after a 503 or a failed connection
        self.backoff_s = backoff_s  # first wait; doubles on each retry, capped at max_backoff_s
        self.max_backoff_s = max_backoff_s
        self.retried = 0  # retries made so far by this client (all calls)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call with retries; returns the decoded JSON body of a 200, raises ServeError otherwise."""
        wait = self.backoff_s
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                r = self._http.request(method, path, **kwargs)
            except self._httpx.TransportError as e:
                if last:
                    raise ServeError(0, f"cannot reach the server at {self._http.base_url} ({type(e).__name__}: "
                                        f"{e}) after {self.retries + 1} attempts") from None
            else:
                if r.status_code == 200:
                    return r.json()
                if r.status_code != 503 or last:
                    raise error_of(r)
                retry_after = r.headers.get("retry-after", "")
                if retry_after.isdigit():
                    wait = max(wait, float(retry_after))
            self.retried += 1
            time.sleep(min(wait, self.max_backoff_s))
            wait *= 2
        raise AssertionError("unreachable")

    # -- the API -------------------------------------------------------------------------------------------------
    def embed_texts(self, texts: str | Sequence[str]) -> np.ndarray:
        """Texts -> float32 [N, D], L2-normalized, in order."""
        doc = self.request("POST", "/embed/text", json={"texts": [texts] if isinstance(texts, str) else list(texts)})
        return np.asarray(doc["embeddings"], dtype=np.float32)

    def embed_images(self, images: Sequence[ImageSource]) -> ImageEmbeddings:
        """Image files (paths, bytes or (name, bytes)) -> embeddings of the readable ones, their names, the errors.
        Raises ServeError (400) when none is readable."""
        doc = self.request("POST", "/embed/image", files=image_parts(images))
        emb = np.asarray(doc["embeddings"], dtype=np.float32).reshape(len(doc["files"]), -1)
        return ImageEmbeddings(emb, doc["files"], doc["errors"])

    def classify(self, images: Sequence[ImageSource], labels: Sequence[str], templates: str | Sequence[str] = "simple",
                 top_k: int = 5) -> dict[str, Any]:
        """Images + labels -> {"results": [{"file", "labels": [{"label", "score"}]}], "errors", "cache"}."""
        data = {"labels": list(labels), "templates": [templates] if isinstance(templates, str) else list(templates),
                "top_k": str(top_k)}
        return self.request("POST", "/classify", files=image_parts(images), data=data)

    def search(self, text: str | None = None, image: ImageSource | None = None, text_weight: float = 0.5,
               top_k: int = 10) -> list[dict[str, Any]]:
        """A text, an image or both -> [{"file", "score"}] from the server's index, best first."""
        data: dict[str, Any] = {"text_weight": str(text_weight), "top_k": str(top_k)}
        if text is not None:
            data["text"] = text
        files = image_parts([image]) if image is not None else None
        if files is None:  # httpx sends a urlencoded body without files; the server wants multipart or JSON
            return self.request("POST", "/search", json={"text": text, "text_weight": text_weight,
                                                         "top_k": top_k})["results"]
        return self.request("POST", "/search", files=files, data=data)["results"]

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/healthz")

    def info(self) -> dict[str, Any]:
        return self.request("GET", "/info")

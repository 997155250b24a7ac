"""The HTTP gateway: FastAPI routes that parse and check requests, decode images, call the encoder replicas and
answer every error as JSON with its reason.

    POST /embed/text    {"texts": [...]} -> {"embeddings": [[...]]}
    POST /embed/image   multipart fields `files`, or {"images": [base64...], "names": [...]}
                        -> {"embeddings", "files", "errors": [{"file", "error"}]}
    POST /classify      images as above + labels, templates, top_k
                        -> {"results": [{"file", "labels": [{"label", "score"}]}], "errors", "cache"}
    POST /search        text and/or one image, text_weight, top_k -> {"results": [{"file", "score"}]}
    GET  /healthz, GET /info, GET /docs (OpenAPI)

Status codes: 400 unreadable image, bad text or malformed body; 413 body over the limit; 415 a body that is
neither JSON nor multipart; 503 when the encoders' bounded queue is full or a replica died under a request
(with Retry-After); 500 only for a fault of the server itself.

No `from __future__ import annotations` here: Serve rebuilds the routes' signatures to inject `self`, and FastAPI
then needs the annotations as real classes (a string "Request" would be taken for a query parameter).
"""


import asyncio
import logging
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from .. import __version__
from ..errors import ClipRtError
from ..package import Package
from ..preprocess import PreprocessConfig
from . import schemas
from .config import ServeConfig
from .encoder import rows
from .limits import ApiError, BodyLimit
from .parsing import (Form, b64, check_templates, check_texts, decode_images, image_body_openapi, int_field,
                      json_body, names_for, read_form, validation_reason)

log = logging.getLogger("clip_rt.serve")

# Gateway batches per kind in flight to the encoders at once. @serve.batch takes a constant, so this is not tied
# to --replicas: 8 keeps up to 4 encoder replicas fed with one batch running and one waiting each.
BATCHES_IN_FLIGHT = 8

app = FastAPI(title="clip-rt", version=__version__,
              description="CLIP embeddings, zero-shot classification and search over HTTP, batched across clients.")
app.state.max_body_bytes = ServeConfig.max_body_bytes  # replaced by each gateway replica's config
app.add_middleware(BodyLimit, limit=lambda: int(app.state.max_body_bytes))

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": schemas.ErrorResponse, "description": "unreadable image, bad text or malformed request"},
    413: {"model": schemas.ErrorResponse, "description": "body over the server's limit"},
    503: {"model": schemas.ErrorResponse, "description": "queue full or replica lost; retry after Retry-After"},
}


# -- errors as JSON --------------------------------------------------------------------------------------------
@app.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


@app.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"error": validation_reason(list(exc.errors()))}, status_code=400)


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


@app.exception_handler(Exception)
async def _fault(request: Request, exc: Exception) -> JSONResponse:
    log.exception("request %s %s failed", request.method, request.url.path)
    return JSONResponse({"error": f"internal server error: {type(exc).__name__}: {exc}"}, status_code=500)


# -- the deployment ---------------------------------------------------------------------------------------------
# serve.ingress binds the routes to the class here, at import: each replica imports this module and must see the
# same binding (applied later, in the driver only, the replicas' copy of `app` would route without `self`).
@serve.ingress(app)
class Gateway:
    """Routes of the HTTP API. Stateless apart from the encoder handle: any number of gateway replicas may run."""

    def __init__(self, encoder: DeploymentHandle, config: ServeConfig):
        self.encoder = encoder
        self.config = config
        self.package = Package.open(config.package)
        self.preprocess = PreprocessConfig.from_manifest(self.package.preprocess)
        app.state.max_body_bytes = config.max_body_bytes
        self.counters = {"replica_losses": 0, "queue_full": 0}  # encoder calls that met a dead replica / a full queue
        handlers: tuple[Any, ...] = (self._image_batch, self._text_batch)  # @serve.batch wrappers with setters
        for handler in handlers:
            handler.set_max_batch_size(config.max_batch_size)
            handler.set_batch_wait_timeout_s(config.batch_wait_ms / 1000.0)

    # -- dynamic batching: requests from all clients of this gateway, one encoder call per batch -------------------
    # Batching here, before the hop to the encoder, spreads the cost of that call (a Ray actor call: about 7 ms of
    # CPU per call on the 2-core dev machine) over the batch; the encoder then merges what several gateways send.
    # Two batches per encoder replica may be in flight, so that the next one is on its way while one runs.
    @serve.batch(batch_size_fn=rows, max_concurrent_batches=BATCHES_IN_FLIGHT)
    async def _image_batch(self, chunks: list[np.ndarray]) -> list[np.ndarray]:
        pixels = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]  # [B, S, S, 3] uint8
        emb = await self._call("embed_pixels", pixels)  # [B, D]
        return np.split(emb, np.cumsum([len(c) for c in chunks])[:-1])

    @serve.batch(batch_size_fn=rows, max_concurrent_batches=BATCHES_IN_FLIGHT)
    async def _text_batch(self, chunks: list[list[str]]) -> list[np.ndarray]:
        emb = await self._call("embed_texts", [t for c in chunks for t in c])  # [B, D]
        return np.split(emb, np.cumsum([len(c) for c in chunks])[:-1])

    async def _batched(self, batch: Any, items: Any) -> np.ndarray:
        """A request's images ([N, S, S, 3]) or texts through the batch queue, in chunks of at most the batch size."""
        m = self.config.max_batch_size
        parts = await asyncio.gather(*(batch(items[i: i + m]) for i in range(0, len(items), m)))
        return np.concatenate(parts)  # [N, D]

    async def _call(self, method: str, *args: Any) -> Any:
        """An encoder call. A replica that dies under it (or cannot be reached) is retried on another replica, or
        on its replacement, with backoff; a full queue or a lost replica is a 503 the client may retry."""
        delay = 0.2
        for attempt in range(self.config.retry_attempts + 1):
            try:
                return await getattr(self.encoder, method).remote(*args)
            except BackPressureError:
                self.counters["queue_full"] += 1
                raise ApiError(503, f"server busy: the encoder queue is full ({self.config.max_queued} requests "
                                    f"waiting); retry shortly", retry_after_s=1) from None
            except DeploymentUnavailableError as e:
                raise ApiError(503, f"encoder unavailable ({e}); retry shortly", retry_after_s=2) from None
            except (RayActorError, ActorUnavailableError) as e:
                self.counters["replica_losses"] += 1
                log.warning("encoder replica lost during %s (attempt %d): %s", method, attempt + 1, e)
                if attempt < self.config.retry_attempts:
                    await asyncio.sleep(delay)
                    delay *= 2
        raise ApiError(503, "an encoder replica stopped during this request and no replacement answered yet; retry "
                            "shortly", retry_after_s=2)

    async def _user_call(self, method: str, *args: Any) -> Any:
        """_call for requests whose input the encoder may still refuse (ClipRtError becomes a 400)."""
        try:
            return await self._call(method, *args)
        except (ClipRtError, RayTaskError) as e:
            cause = getattr(e, "cause", None) or e  # Serve re-raises the replica's exception inside a RayTaskError
            if isinstance(cause, ClipRtError):
                raise ApiError(400, str(cause)) from None
            raise

    async def _images(self, request: Request) -> tuple[list[tuple[str, bytes]], Any]:
        """The request's images as (name, bytes) pairs, and the parsed body (a JSON model or a Form)."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            form = await read_form(request, self.config.max_items, self.config.max_body_bytes)
            return form.files, form
        if kind == "application/json":
            path = request.url.path
            routes: dict[str, type[schemas._Strict]] = {"/classify": schemas.ClassifyRequest,
                                                         "/search": schemas.SearchRequest}
            model = routes.get(path, schemas.ImagesRequest)
            body = await json_body(request, model)
            if isinstance(body, schemas.SearchRequest):
                return ([("image", b64(body.image, "image"))] if body.image is not None else []), body
            names = names_for(body.names, len(body.images))
            return [(n, b64(d, f"images[{i}]")) for i, (n, d) in enumerate(zip(names, body.images))], body
        raise ApiError(415, f"unsupported content type {kind or '(none)'!r}: send multipart/form-data (fields named "
                            f"'files') or application/json with base64 images")

    async def _decoded(self, items: list[tuple[str, bytes]]) -> tuple[np.ndarray, list[str], list[dict[str, str]]]:
        if not items:
            raise ApiError(400, "no images: send multipart file fields named 'files', or JSON "
                                '{"images": [base64, ...]}')
        if len(items) > self.config.max_items:
            raise ApiError(400, f"{len(items)} images in one request; the server takes at most {self.config.max_items} "
                                f"(--max-items)")
        pixels, names, errors = await asyncio.to_thread(decode_images, items, self.preprocess)
        if not names:
            what = errors[0]["error"] if len(errors) == 1 else f"none of the {len(errors)} images could be read"
            raise ApiError(400, f"unreadable image: {what}", errors=errors)
        return pixels, names, errors

    # -- routes ---------------------------------------------------------------------------------------------------
    @app.post("/embed/text", response_model=schemas.EmbeddingsResponse, responses=_ERRORS)
    async def embed_text(self, body: schemas.TextsRequest) -> Response:
        """Texts -> L2-normalized embeddings, in order."""
        texts = check_texts(body.texts, self.config.max_items)
        emb = await self._batched(self._text_batch, texts)  # [N, D]
        return JSONResponse({"embeddings": emb.tolist()})

    @app.post("/embed/image", response_model=schemas.ImageEmbeddingsResponse, responses=_ERRORS,
              openapi_extra=image_body_openapi(schemas.ImagesRequest))
    async def embed_image(self, request: Request) -> Response:
        """Image files -> L2-normalized embeddings of the readable ones, in order; the others listed in errors."""
        items, _ = await self._images(request)
        pixels, names, errors = await self._decoded(items)
        emb = await self._batched(self._image_batch, pixels)  # [N, D]
        return JSONResponse({"embeddings": emb.tolist(), "files": names, "errors": errors})

    @app.post("/classify", response_model=schemas.ClassifyResponse, responses=_ERRORS,
              openapi_extra=image_body_openapi(schemas.ClassifyRequest))
    async def classify(self, request: Request) -> Response:
        """Images + labels + templates -> the top_k labels per image, scored by the package's zero-shot rule."""
        items, body = await self._images(request)
        if isinstance(body, Form):
            labels = body.fields.get("labels", [])
            raw = body.fields.get("templates", ["simple"])
            templates: str | list[str] = raw[0] if len(raw) == 1 else raw
            top_k = int_field(body, "top_k", 5)
        else:
            labels, templates, top_k = body.labels, body.templates, body.top_k
        labels = [x.strip() for x in labels]
        if not labels or any(not x for x in labels):
            raise ApiError(400, "labels must be a non-empty list of non-empty class names")
        if len(labels) > 100_000:
            raise ApiError(400, f"{len(labels)} labels; the server takes at most 100,000 per request")
        templates = check_templates(templates)
        pixels, names, errors = await self._decoded(items)
        out = await self._user_call("classify", pixels, labels, templates, top_k)
        results = [{"file": f, "labels": p} for f, p in zip(names, out["predictions"])]
        return JSONResponse({"results": results, "errors": errors, "cache": out["cache"]})

    @app.post("/search", response_model=schemas.SearchResponse, responses={**_ERRORS, 404: _ERRORS[400]},
              openapi_extra=image_body_openapi(schemas.SearchRequest))
    async def search(self, request: Request) -> Response:
        """A text, an image, or both (mixed by text_weight) -> the top_k files of the served index."""
        if self.config.index is None:
            raise ApiError(404, "this server has no index: start clip-rt serve with --index INDEX to serve /search")
        items, body = await self._images(request)
        if isinstance(body, Form):
            text, top_k = body.one("text"), int_field(body, "top_k", 10)
            raw = body.one("text_weight", "0.5")
            try:
                weight = float(raw)
            except ValueError:
                raise ApiError(400, f"form field 'text_weight' must be a number, got {raw!r}") from None
            if not 0.0 <= weight <= 1.0:
                raise ApiError(400, f"text_weight must be in [0, 1], got {weight}")
        else:
            text, weight, top_k = body.text, body.text_weight, body.top_k
        if text is not None:
            check_texts([text], 1)
        if len(items) > 1:
            raise ApiError(400, f"/search takes one query image, got {len(items)}")
        if text is None and not items:
            raise ApiError(400, "give a text, an image, or both")
        pixels = (await self._decoded(items))[0] if items else None
        hits = await self._user_call("search", text, pixels, weight, top_k)
        return JSONResponse({"results": hits})

    @app.get("/healthz")
    async def healthz(self) -> Response:
        """200 when an encoder replica answers, 503 otherwise."""
        try:
            await asyncio.wait_for(self._call("ping"), timeout=10.0)
        except (ApiError, asyncio.TimeoutError) as e:
            raise ApiError(503, f"no encoder replica answers ({e or 'timeout'})", retry_after_s=2) from None
        return JSONResponse({"status": "ok"})

    @app.get("/info")
    async def info(self) -> Response:
        """The package, the serving settings, this gateway's counters (encoder calls that met a dead replica or a
        full queue) and one encoder replica's model and batching counters."""
        replica = await self._call("info")
        pkg = self.package
        doc = {"version": __version__, "package": {"path": str(pkg.root), "fingerprint": pkg.fingerprint,
                                                    "embed_dim": pkg.embed_dim, "image_size": pkg.image_size,
                                                    "context_length": pkg.context_length},
               "config": {k: v for k, v in self.config.to_json().items() if k != "options"},
               "gateway": dict(self.counters), "replica": replica}
        return JSONResponse(doc)

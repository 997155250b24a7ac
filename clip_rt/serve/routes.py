"""The HTTP API, written once for both runners: FastAPI routes that parse and check requests and answer every error
as JSON with its reason; the work is the Service's (request.app.state.service).

    POST /embed/text    {"texts": [...]} -> {"embeddings": [[...]]}
    POST /embed/image   multipart fields `files`, or {"images": [base64...], "names": [...]}
                        -> {"embeddings", "files", "errors": [{"file", "error"}]}
    POST /classify      images as above + labels, templates, top_k
                        -> {"results": [{"file", "labels": [{"label", "score"}]}], "errors", "cache"}
    POST /search        text and/or one image, text_weight, top_k, or like (an item id); filters folder, after,
                        before, camera -> {"results": [{"id", "file", "score"}]}
    GET  /healthz, GET /info, GET /docs (OpenAPI)

Status codes: 400 unreadable image, bad text or malformed body; 413 body over the limit; 415 a body that is
neither JSON nor multipart; 503 when the bounded queue is full, or (Ray) a replica died under a request, with
Retry-After; 500 only for a fault of the server itself.

make_app(service) builds the app; more routers (a page) are added with app.include_router. No `from __future__
import annotations` here: FastAPI reads the routes' annotations at run time.
"""


import logging
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from .. import __version__
from . import schemas
from .limits import ApiError, BodyLimit, RequestCounter
from .parsing import (Form, b64, check_templates, check_texts, image_body_openapi, int_field, json_body, names_for,
                      read_form, validation_reason)
from .responses import embeddings_response

log = logging.getLogger("clip_rt.serve")

router = APIRouter()
SEARCH_FILTERS = ("folder", "after", "before", "camera")  # /search fields that narrow a photo index

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": schemas.ErrorResponse, "description": "unreadable image, bad text or malformed request"},
    413: {"model": schemas.ErrorResponse, "description": "body over the server's limit"},
    415: {"model": schemas.ErrorResponse, "description": "body neither JSON nor multipart/form-data"},
    503: {"model": schemas.ErrorResponse, "description": "queue full or replica lost; retry after Retry-After"},
}


def make_app(service: Any) -> FastAPI:
    """The FastAPI app of `service` (clip_rt.serve.service.Service): body limit, request counter, JSON errors,
    the API routes."""
    app = FastAPI(title="clip-rt", version=__version__,
                  description="CLIP embeddings, zero-shot classification and search over HTTP, batched across "
                              "clients.")
    app.state.service = service
    app.state.requests = {"accepted": 0, "answered": 0}  # HTTP requests read / answered (shutdown accounting)
    app.add_middleware(BodyLimit, limit=lambda: int(service.config.max_body_bytes))
    app.add_middleware(RequestCounter, counts=app.state.requests)
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _fault)
    app.include_router(router)
    if service.config.index is not None:  # the search page (/, /thumb/{id}, /photo/{id}, /item/{id}, /facets)
        from .page import install_page

        install_page(app, service.config.index)
    return app


# -- errors as JSON --------------------------------------------------------------------------------------------
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"error": validation_reason(list(exc.errors()))}, status_code=400)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


async def _fault(request: Request, exc: Exception) -> JSONResponse:
    log.exception("request %s %s failed", request.method, request.url.path)
    return JSONResponse({"error": f"internal server error: {type(exc).__name__}: {exc}"}, status_code=500)


# -- reading image bodies -----------------------------------------------------------------------------------------
def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _check_type(request: Request) -> str:
    kind = _content_type(request)
    if kind not in ("multipart/form-data", "application/json"):
        raise ApiError(415, f"unsupported content type {kind or '(none)'!r}: send multipart/form-data (fields named "
                            f"'files') or application/json with base64 images")
    return kind


async def _images(request: Request, model: type[schemas._Strict]) -> tuple[list[tuple[str, bytes]], Any]:
    """The request's images as (name, bytes) pairs, and the parsed body (a `model` from JSON, or a Form)."""
    config = request.app.state.service.config
    if _check_type(request) == "multipart/form-data":
        form = await read_form(request, config.max_items, config.max_body_bytes)
        return form.files, form
    body = await json_body(request, model)
    if isinstance(body, schemas.SearchRequest):
        return ([("image", b64(body.image, "image"))] if body.image is not None else []), body
    names = names_for(body.names, len(body.images))
    return [(n, b64(d, f"images[{i}]")) for i, (n, d) in enumerate(zip(names, body.images))], body


# -- routes -------------------------------------------------------------------------------------------------------
@router.post("/embed/text", response_model=schemas.EmbeddingsResponse, responses=_ERRORS,
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": schemas.TextsRequest.model_json_schema()}}}})
async def embed_text(request: Request) -> Response:
    """Texts -> L2-normalized embeddings, in order."""
    service = request.app.state.service
    if _content_type(request) != "application/json":
        raise ApiError(415, f"unsupported content type {_content_type(request) or '(none)'!r}: send "
                            f"application/json {{\"texts\": [...]}}")
    async with service.admitted():
        async with service.texts.coming():
            body = await json_body(request, schemas.TextsRequest)
            texts = check_texts(body.texts, service.config.max_items)
        emb = await service.texts.submit(texts)  # [N, D]
    return embeddings_response(emb)


@router.post("/embed/image", response_model=schemas.ImageEmbeddingsResponse, responses=_ERRORS,
             openapi_extra=image_body_openapi(schemas.ImagesRequest))
async def embed_image(request: Request) -> Response:
    """Image files -> L2-normalized embeddings of the readable ones, in order; the others listed in errors."""
    service = request.app.state.service
    _check_type(request)
    async with service.admitted():
        async with service.images.coming():
            items, _ = await _images(request, schemas.ImagesRequest)
            pixels, names, errors = await service.decode(items)
        emb = await service.images.submit(pixels)  # [N, D]
    return embeddings_response(emb, files=names, errors=errors)


@router.post("/classify", response_model=schemas.ClassifyResponse, responses=_ERRORS,
             openapi_extra=image_body_openapi(schemas.ClassifyRequest))
async def classify(request: Request) -> Response:
    """Images + labels + templates -> the top_k labels per image, scored by the package's zero-shot rule."""
    service = request.app.state.service
    _check_type(request)
    async with service.admitted():
        async with service.images.coming():
            items, body = await _images(request, schemas.ClassifyRequest)
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
            pixels, names, errors = await service.decode(items)
        out = await service.classify(pixels, labels, templates, top_k)
    results = [{"file": f, "labels": p} for f, p in zip(names, out["predictions"])]
    return JSONResponse({"results": results, "errors": errors, "cache": out["cache"]})


@router.post("/search", response_model=schemas.SearchResponse, responses={**_ERRORS, 404: _ERRORS[400]},
             openapi_extra=image_body_openapi(schemas.SearchRequest))
async def search(request: Request) -> Response:
    """A text, an image, or both (mixed by text_weight) -> the top_k files of the served index."""
    service = request.app.state.service
    if service.config.index is None:
        raise ApiError(404, "this server has no index: start clip-rt serve with --index INDEX to serve /search")
    _check_type(request)
    async with service.admitted():
        items, body = await _images(request, schemas.SearchRequest)
        if isinstance(body, Form):
            text, top_k = body.one("text"), int_field(body, "top_k", 10)
            like = None if body.one("like") is None else int_field(body, "like", 0, low=0)
            where = {k: body.one(k) for k in SEARCH_FILTERS if body.one(k)}
            raw = body.one("text_weight", "0.5")
            try:
                weight = float(raw)
            except ValueError:
                raise ApiError(400, f"form field 'text_weight' must be a number, got {raw!r}") from None
            if not 0.0 <= weight <= 1.0:
                raise ApiError(400, f"text_weight must be in [0, 1], got {weight}")
        else:
            text, weight, top_k, like = body.text, body.text_weight, body.top_k, body.like
            where = {k: getattr(body, k) for k in SEARCH_FILTERS if getattr(body, k)}
        if text is not None:
            check_texts([text], 1)
        if len(items) > 1:
            raise ApiError(400, f"/search takes one query image, got {len(items)}")
        if like is not None and (text is not None or items):
            raise ApiError(400, "like searches by a stored item's vector: send it without text or image")
        if text is None and not items and like is None:
            raise ApiError(400, "give a text, an image, both, or like (an item id)")
        pixels = (await service.decode(items))[0] if items else None
        hits = await service.search(text, pixels, weight, top_k, where=where, like=like)
    return JSONResponse({"results": hits})


@router.get("/healthz")
async def healthz(request: Request) -> Response:
    """200 when the model answers, 503 otherwise."""
    await request.app.state.service.health()
    return JSONResponse({"status": "ok"})


@router.get("/info")
async def info(request: Request) -> Response:
    """The package, the serving settings, the runner, the service's counters and the model's batching counters."""
    doc = await request.app.state.service.info()
    doc["requests"] = dict(request.app.state.requests)
    return JSONResponse(doc)

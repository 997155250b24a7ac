"""Reading the HTTP API's requests: JSON and multipart bodies, base64 images, the checks on texts, labels and
templates, and image decoding. Every problem is an ApiError (400 or 415) saying what was wrong.

No `from __future__ import annotations`, as in gateway.py (FastAPI reads these annotations at run time).
"""

import base64
import binascii
import json
from typing import Any

import numpy as np
from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from ..errors import ImageError
from ..prepare import prepare
from ..preprocess import PreprocessConfig
from ..zeroshot import builtin_template_sets
from . import schemas
from .limits import ApiError


def image_body_openapi(json_model: type[schemas._Strict]) -> dict[str, Any]:
    """OpenAPI request body of the image routes: multipart or JSON (the route reads the body itself)."""
    form: dict[str, Any] = {"type": "object", "properties": {"files": {"type": "array", "items": {"type": "string",
                                                                                     "format": "binary"}}},
            "required": ["files"]}
    if json_model is schemas.ClassifyRequest:
        form["properties"].update({"labels": {"type": "array", "items": {"type": "string"}},
                                   "templates": {"type": "array", "items": {"type": "string"}},
                                   "top_k": {"type": "integer"}})
    if json_model is schemas.SearchRequest:
        form = {"type": "object", "properties": {"files": {"type": "string", "format": "binary"},
                                                 "text": {"type": "string"}, "text_weight": {"type": "number"},
                                                 "top_k": {"type": "integer"}}}
    content = {"multipart/form-data": {"schema": form},
               "application/json": {"schema": json_model.model_json_schema()}}
    return {"requestBody": {"required": True, "content": content}}


def _where(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def validation_reason(errors: list[Any]) -> str:
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"malformed request: the body is not valid JSON ({first.get('msg')} at position {first['loc'][-1]})"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"malformed request: {_where(tuple(first.get('loc', ())))}: {first.get('msg', 'invalid')}{more}"


# -- request parsing -------------------------------------------------------------------------------------------
async def json_body(request: Request, model: type[schemas._Strict]) -> Any:
    try:
        doc = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"malformed request: the body is not valid JSON ({e})") from None
    try:
        return model.model_validate(doc)
    except ValidationError as e:
        raise ApiError(400, validation_reason(list(e.errors()))) from None


def b64(data: str, where: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where} is not valid base64") from None


def names_for(names: list[str] | None, n: int) -> list[str]:
    if names is None:
        return [f"images[{i}]" for i in range(n)]
    if len(names) != n:
        raise ApiError(400, f"names has {len(names)} entries for {n} images")
    return names


def check_texts(texts: list[str], limit: int) -> list[str]:
    """400 unless texts is a non-empty list of at most `limit` non-blank strings."""
    if not texts:
        raise ApiError(400, "texts is empty: send at least one text")
    if len(texts) > limit:
        raise ApiError(400, f"{len(texts)} texts in one request; the server takes at most {limit} (--max-items)")
    blank = [i for i, t in enumerate(texts) if not t.strip()]
    if blank:
        raise ApiError(400, f"texts[{blank[0]}] is empty" + (f" (and {len(blank) - 1} more)" if len(blank) > 1 else ""))
    return texts


def check_templates(templates: str | list[str]) -> str | list[str]:
    """A built-in set name, one template with {}, or a list of them; never a server-side file path."""
    sets = builtin_template_sets()
    if isinstance(templates, str):
        if templates in sets or "{}" in templates:
            return templates
        raise ApiError(400, f"templates {templates!r} is neither a built-in set ({', '.join(sets)}) nor a template "
                            f"with {{}} where the label goes")
    if not templates or any("{}" not in t for t in templates):
        raise ApiError(400, "templates must be a non-empty list of templates, each with {} where the label goes")
    return templates


class Form:
    """A parsed multipart body: the `files` parts and the other fields."""

    def __init__(self, files: list[tuple[str, bytes]], fields: dict[str, list[str]]):
        self.files = files
        self.fields = fields

    def one(self, name: str, default: Any = None) -> Any:
        values = self.fields.get(name, [])
        if len(values) > 1:
            raise ApiError(400, f"form field {name!r} was given {len(values)} times; give it once")
        return values[0] if values else default


async def read_form(request: Request, max_items: int, max_bytes: int) -> Form:
    form = await request.form(max_files=max_items, max_fields=4 * max_items + 16, max_part_size=max_bytes)
    files: list[tuple[str, bytes]] = []
    fields: dict[str, list[str]] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key != "files":
                raise ApiError(400, f"file part {key!r}: image parts must be named 'files'")
            files.append((value.filename or f"files[{len(files)}]", await value.read()))
        else:
            if key == "files":
                raise ApiError(400, "field 'files' must be a file part (multipart filename=...), not a text value")
            fields.setdefault(key, []).append(value)
    return Form(files, fields)


def int_field(form: Form, name: str, default: int, low: int = 1) -> int:
    raw = form.one(name)
    try:
        value = default if raw is None else int(raw)
    except ValueError:
        raise ApiError(400, f"form field {name!r} must be an integer, got {raw!r}") from None
    if value < low:
        raise ApiError(400, f"form field {name!r} must be >= {low}, got {value}")
    return value


def decode_images(items: list[tuple[str, bytes]],
                  cfg: PreprocessConfig) -> tuple[np.ndarray, list[str], list[dict[str, str]]]:
    """(name, file bytes) pairs -> (uint8 [N, S, S, 3] crops of the readable ones, their names, per-image errors)."""
    crops, names, errors = [], [], []
    for name, data in items:
        try:
            crops.append(prepare(data, cfg, name=name))  # [S, S, 3] uint8, exactly as clip_rt.load would make it
            names.append(name)
        except ImageError as e:
            errors.append({"file": e.file, "error": e.reason})
    S = cfg.image_size
    pixels = np.stack(crops) if crops else np.zeros((0, S, S, 3), np.uint8)  # [N, S, S, 3]
    return pixels, names, errors

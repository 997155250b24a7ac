"""The search page and what it reads besides /search: a FastAPI router included in the app when it serves an index.

    app.include_router(page_router(index, token=None))

    GET /                 the page (clip_rt/serve/static: plain HTML, CSS and JavaScript; nothing from a CDN)
    GET /static/{name}    its files, by name from the list read at start (no path is ever built from a request)
    GET /thumb/{id}       an item's thumbnail (JPEG, stored in the index)
    GET /photo/{id}       the photo file the index recorded for that item id
    GET /item/{id}        path, size, date, camera, pixels of one item (the page's detail view)
    GET /facets           kind, count, folders, cameras and date range (the page's filter controls)

Item ids are the index's vector ids, as /search returns them. The server never opens a path taken from a request: an
id is digits or it is a 404, the file behind it is the one the index's SQLite table holds for it now (a removed
item's id is a 404), and nothing else on disk can be named. With a token every route but the page itself and its
static files asks for it, as `Authorization: Bearer TOKEN` or `?token=TOKEN` (images cannot send headers).
"""

import hmac
import mimetypes
import re
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable

from ..errors import missing_dependency

STATIC = Path(__file__).with_name("static")
_ID = re.compile(r"[0-9]{1,18}")  # an item id: digits only, within int64
_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".js": "text/javascript; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}


class PhotoDB:
    """A read-only connection to an index's SQLite file for the page's lookups, shared by the server's threads.
    It sees each committed update, so an item removed after the server started is gone here too."""

    def __init__(self, root: Path):
        uri = f"{(Path(root) / 'index.sqlite').resolve().as_uri()}?mode=ro"
        self.conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        self.conn.execute("PRAGMA busy_timeout=30000")
        self.lock = threading.Lock()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self.lock:
            return fn(self.conn, *args)


def check_token(token: str | None) -> Callable[..., None]:
    """A FastAPI dependency: 401 unless the request carries `token` (no-op when token is None)."""
    from fastapi import HTTPException, Request

    def dependency(request: Request) -> None:  # a real annotation (no `from __future__`): FastAPI reads it
        if token is None:
            return
        given = request.query_params.get("token", "")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
            raise HTTPException(401, "this server needs its token: open the page as /?token=TOKEN, or send "
                                     "Authorization: Bearer TOKEN")
    return dependency


def static_files() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, content type) of the page's files, read once."""
    return {p.name: (p.read_bytes(), _TYPES.get(p.suffix, "application/octet-stream"))
            for p in sorted(STATIC.iterdir()) if p.is_file() and p.suffix in _TYPES}


def page_router(index: Any, token: str | None = None) -> Any:
    """The router for `index` (a clip_rt.search.Index). token: required on the data routes when given."""
    try:
        from fastapi import APIRouter, Depends, HTTPException
        from fastapi.responses import FileResponse, JSONResponse, Response
    except ImportError:
        raise missing_dependency("fastapi", "serve", "the search page") from None
    from ..search.photo_store import facets, item_details, item_path
    from ..search.thumbs import THUMB_MIME, get_thumb

    files = static_files()
    db = PhotoDB(index.root)
    images = index.kind == "images"
    guard = [Depends(check_token(token))]
    router = APIRouter()
    no_cache = {"cache-control": "no-cache"}

    def item_id(raw: str) -> int:
        if not _ID.fullmatch(raw):
            raise HTTPException(404, "no such item")
        return int(raw)

    @router.get("/", include_in_schema=False)
    def page() -> Response:
        body, kind = files["index.html"]
        return Response(body, media_type=kind, headers=no_cache)

    @router.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in files:
            raise HTTPException(404, "no such file")
        body, kind = files[name]
        return Response(body, media_type=kind, headers=no_cache)

    @router.get("/thumb/{raw}", dependencies=guard, summary="an item's thumbnail (JPEG)")
    def thumb(raw: str) -> Response:
        data = db.call(get_thumb, item_id(raw)) if images else None
        if data is None:
            raise HTTPException(404, "no thumbnail for this id")
        return Response(data, media_type=THUMB_MIME, headers={"cache-control": "private, max-age=3600"})

    @router.get("/photo/{raw}", dependencies=guard, summary="the photo file the index recorded for an item id")
    def photo(raw: str) -> Response:
        path = db.call(item_path, item_id(raw)) if images else None
        if path is None or not Path(path).is_file():
            raise HTTPException(404, "no photo for this id")
        kind = mimetypes.guess_type(path)[0] or "application/octet-stream"
        return FileResponse(path, media_type=kind, headers={"cache-control": "private, max-age=3600"})

    @router.get("/item/{raw}", dependencies=guard, summary="an item's path, size, date, camera and pixels")
    def item(raw: str) -> Response:
        details = db.call(item_details, item_id(raw))
        if details is None:
            raise HTTPException(404, "no such item")
        return JSONResponse(details)

    @router.get("/facets", dependencies=guard, summary="kind, count, folders, cameras and dates of the index")
    def facet_values() -> Response:
        base = {"kind": index.kind, "count": db.call(lambda c: c.execute("SELECT COUNT(*) FROM items").fetchone()[0])}
        if not images:
            return JSONResponse({**base, "folders": [], "cameras": [], "dates": {"first": None, "last": None}})
        return JSONResponse({**base, **db.call(facets)})

    return router

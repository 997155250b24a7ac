"""The search page and what it reads besides /search: a router added to the app when it serves an index.

    install_page(app, "photos.index", token=None)   # the routes below, and the token guard when a token is given

    GET /                 the page (clip_rt/serve/static: plain HTML, CSS and JavaScript; nothing from a CDN)
    GET /static/{name}    its files, by name from the list read at start (no path is ever built from a request)
    GET /thumb/{id}       an item's thumbnail (JPEG, stored in the index)
    GET /photo/{id}       the photo file the index recorded for that item id
    GET /video/{id}       the video file a video frame's item id belongs to (Range requests: the page seeks in it)
    GET /item/{id}        path, size, date, camera, pixels of one item (the page's detail view)
    GET /facets           kind, count, folders, cameras and date range (the page's filter controls); videos, frames

Item ids are the index's vector ids, as /search returns them. The server never opens a path taken from a request: an
id is digits or it is a 404, the file behind it is the one the index's SQLite table holds for it now (a removed
item's id is a 404), and nothing else on disk can be named. With a token, every route of the app but the page
itself and its static files asks for it, as `Authorization: Bearer TOKEN` or `?token=TOKEN` (an <img> cannot send
headers); the page keeps a token it was opened with (/?token=TOKEN) and sends it.
"""

import hmac
import logging
import json
import mimetypes
import re
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable

from ..errors import missing_dependency
from ..search.store import IndexFileError, roll_back_hot_journal

log = logging.getLogger("clip_rt.serve")
STATIC = Path(__file__).with_name("static")
_ID = re.compile(r"[0-9]{1,18}")  # an item id: digits only, within int64
_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".js": "text/javascript; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}


class PhotoDB:
    """A read-only connection to an index's SQLite file for the page's lookups, shared by the server's threads.
    It sees each committed update, so an item removed after the server started is gone here too."""

    def __init__(self, root: Path):
        if not (Path(root) / "index.sqlite").is_file():
            raise IndexFileError(f"{root} has no index.sqlite: the search page needs a clip-rt index (a clip-rt 0.1 "
                                 f"folder is converted with: clip-rt index --convert {root})")
        roll_back_hot_journal(Path(root) / "index.sqlite")  # an update killed mid-commit: its journal first
        uri = f"{(Path(root) / 'index.sqlite').resolve().as_uri()}?mode=ro"
        self.conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        self.conn.execute("PRAGMA busy_timeout=30000")
        self.lock = threading.Lock()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self.lock:
            return fn(self.conn, *args)


class TokenGuard:
    """ASGI middleware: 401 (JSON) for any HTTP request without the token, except the page and its static files."""

    def __init__(self, app: Any, token: str):
        self.app = app
        self.token = token.encode("utf-8")

    def allowed(self, scope: dict[str, Any]) -> bool:
        path = scope.get("path", "")
        if path == "/" or path.startswith("/static/"):
            return True
        given = b""
        for key, value in scope.get("headers", []):
            if key == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
        if not given:
            from urllib.parse import parse_qs

            given = (parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token") or [""])[0].encode(
                "utf-8")
        return hmac.compare_digest(given, self.token)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.allowed(scope):
            await self.app(scope, receive, send)
            return
        from fastapi.responses import JSONResponse

        answer = JSONResponse({"error": "this server needs its token: open the page as /?token=TOKEN, or send "
                                        "Authorization: Bearer TOKEN"}, status_code=401)
        await answer(scope, receive, send)


def install_page(app: Any, index_root: str | Path, token: str | None = None) -> None:
    """Add the page's routes for the index at `index_root` to a FastAPI app, and the token guard when given.
    A clip-rt 0.1 index folder (searchable, no item table) gets no page, with a warning saying how to convert it."""
    if not (Path(index_root) / "index.sqlite").is_file():
        log.warning("no search page for %s: it is a clip-rt 0.1 index folder; convert it with: clip-rt index "
                    "--convert %s", index_root, index_root)
    else:
        app.include_router(page_router(index_root))
    if token:
        require_token(app, token)


def require_token(app: Any, token: str) -> None:
    """Every route of `app` but the page and its static files answers 401 without `token` (before it starts)."""
    app.add_middleware(TokenGuard, token=token)


def static_files() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, content type) of the page's files, read once."""
    return {p.name: (p.read_bytes(), _TYPES.get(p.suffix, "application/octet-stream"))
            for p in sorted(STATIC.iterdir()) if p.is_file() and p.suffix in _TYPES}


def page_router(index_root: str | Path) -> Any:
    """The page's routes for the index folder `index_root` (see install_page for the token)."""
    try:
        from fastapi import APIRouter, HTTPException, Request
        from fastapi.responses import FileResponse, JSONResponse, Response
    except ImportError:
        raise missing_dependency("fastapi", "serve", "the search page") from None
    from ..search.photo_store import facets, item_details, item_path
    from ..search.video_items import video_counts, video_frame
    from ..search.thumbs import THUMB_MIME, get_thumb

    files = static_files()
    db = PhotoDB(Path(index_root))
    index_kind = json.loads(db.call(lambda c: c.execute("SELECT value FROM meta WHERE key = 'kind'").fetchone() or
                                    ['"images"'])[0])
    images = index_kind == "images"
    router = APIRouter()
    cached: dict[str, Any] = {}  # the facets of the index generation they were read at
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

    def content_tag(vid: int) -> str | None:
        row = db.call(lambda c: c.execute("SELECT sha256 FROM items WHERE vector_id = ?", (vid,)).fetchone())
        if row is None:
            return None
        frame = db.call(video_frame, vid)  # the frames of one video share its sha256: their time tells them apart
        return f'"{row[0]}"' if frame is None else f'"{row[0]}@{frame[1]:.3f}"'

    # Item ids are renumbered when an update compacts the index, so a browser may keep a thumbnail or photo only
    # while the content the id names is the same: no-cache with an ETag of the file's sha256 (and a video frame's
    # time; a 304 costs no body).
    @router.get("/thumb/{raw}", summary="an item's thumbnail (JPEG)")
    def thumb(raw: str, request: Request) -> Response:
        vid = item_id(raw)
        tag = content_tag(vid) if images else None
        if tag is not None and request.headers.get("if-none-match") == tag:
            return Response(status_code=304, headers={"etag": tag, "cache-control": "no-cache"})
        data = db.call(get_thumb, vid) if tag is not None else None
        if data is None:
            raise HTTPException(404, "no thumbnail for this id")
        return Response(data, media_type=THUMB_MIME, headers={"etag": str(tag), "cache-control": "no-cache"})

    @router.get("/photo/{raw}", summary="the photo file the index recorded for an item id")
    def photo(raw: str) -> Response:
        path = db.call(item_path, item_id(raw)) if images else None
        if path is None or not Path(path).is_file():
            raise HTTPException(404, "no photo for this id")
        kind = mimetypes.guess_type(path)[0] or "application/octet-stream"
        return FileResponse(path, media_type=kind, headers={"cache-control": "no-cache"})

    @router.get("/video/{raw}", summary="the video file a video frame's item id belongs to")
    def video(raw: str) -> Response:
        # the path comes from the frames table for a digits-only id, never from the request
        frame = db.call(video_frame, item_id(raw)) if images else None
        if frame is None or not Path(frame[0]).is_file():
            raise HTTPException(404, "no video for this id")
        kind = mimetypes.guess_type(frame[0])[0] or "application/octet-stream"
        return FileResponse(frame[0], media_type=kind, headers={"cache-control": "no-cache"})

    @router.get("/item/{raw}", summary="an item's path, size, date, camera and pixels (and a frame's video, time)")
    def item(raw: str) -> Response:
        vid = item_id(raw)
        details = db.call(item_details, vid)
        if details is None:
            raise HTTPException(404, "no such item")
        frame = db.call(video_frame, vid) if images else None
        if frame is not None:  # a video frame: the video's path and the frame's time (s) instead of VIDEO#t=S
            details.update(file=frame[0], time=frame[1], video=True)
        return JSONResponse(details)

    @router.get("/facets", summary="kind, count, folders, cameras and dates of the index")
    def facet_values() -> Response:
        # One pass over the item table per index generation (every committed change bumps it): a page load on a
        # large index does not walk a million rows again until the index changes.
        generation = db.call(lambda c: c.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone())
        if cached.get("generation") != generation:
            count = db.call(lambda c: c.execute("SELECT COUNT(*) FROM items").fetchone()[0])
            values = db.call(facets) if images else {"folders": [], "cameras": [], "dates": {"first": None,
                                                                                               "last": None}}
            videos = db.call(video_counts) if images else {"videos": 0, "frames": 0}
            cached.update(generation=generation, doc={"kind": index_kind, "count": count, **values, **videos})
        return JSONResponse(cached["doc"])

    return router

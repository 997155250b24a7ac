"""Request-size limit, the request counter and the error type of the HTTP API.

Starlette limits multipart parts but not a whole body, and Ray Serve's proxy forwards any size, so the limit is
this small ASGI middleware: a declared Content-Length over the limit is answered 413 without parsing the body
(which is read and dropped first, up to a bound, so that the client is not cut off mid-upload), and a body without
one (chunked) is counted as it streams in and cut off at the limit. RequestCounter counts the requests read and
answered, so that a stopping server can say whether it answered every request it accepted.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, MutableMapping

from starlette.exceptions import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DRAIN_FACTOR = 4  # an oversized body up to 4x the limit is read (and dropped) so that the client gets the 413


class ApiError(HTTPException):
    """An answer other than 200: the status, the reason (and per-image reasons), and Retry-After for 503.

    An HTTPException, so that FastAPI lets it through when it is raised while the body is read (the size limit);
    other exceptions there become a generic 400."""

    def __init__(self, status: int, reason: str, errors: list[dict[str, str]] | None = None,
                 retry_after_s: int | None = None):
        retry = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
        super().__init__(status_code=status, detail=reason, headers=retry)
        self.status = status
        self.reason = reason
        self.errors = errors

    def body(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"error": self.reason}
        if self.errors is not None:
            doc["errors"] = self.errors
        return doc


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body larger than the server's limit of {limit:,} bytes (clip-rt serve "
                         f"--max-body-mb); send fewer or smaller images per request")


class BodyLimit:
    """ASGI middleware: bodies over `limit()` bytes get 413 with a JSON reason; everything else passes through.

    limit is a callable so that the value set when the serving replica starts (not at import) is the one used.
    """

    def __init__(self, app: ASGIApp, limit: Callable[[], int]):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit()
        declared = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            # Read the body before answering (up to DRAIN_FACTOR x the limit): a client still sending when the
            # server answers and closes would see a broken connection instead of the 413 and its reason.
            if int(declared) <= DRAIN_FACTOR * limit:
                await self._drain(receive)
            await self._answer(send, too_large(limit))
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise too_large(limit)  # raised inside the route's body read: the API's error handler answers
            return message

        await self.app(scope, counted, send)

    @staticmethod
    async def _drain(receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return

    @staticmethod
    async def _answer(send: Send, error: ApiError) -> None:
        body = json.dumps(error.body()).encode("utf-8")
        await send({"type": "http.response.start", "status": error.status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class RequestCounter:
    """ASGI middleware: counts["accepted"] += 1 per HTTP request read, counts["answered"] += 1 once its response
    has been sent in full."""

    def __init__(self, app: ASGIApp, counts: dict[str, int]):
        self.app = app
        self.counts = counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.counts["accepted"] += 1

        async def counted(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.counts["answered"] += 1

        await self.app(scope, receive, counted)

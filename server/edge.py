"""What every request passes before any route: its credentials, then its body's size.

FastAPI reads and parses a route's body before the route's dependencies run, so a
credentials check written as a dependency comes after the whole body is in memory;
and nothing caps that body. `RequestEdge` does both first, as a plain ASGI
middleware (no ``BaseHTTPMiddleware``: no task or stream per request), and the
routes behind it only ever see an authorised request with a body within the cap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A liveness probe carries no credentials; nothing else is open.
OPEN_ROUTE = ("GET", "/health")


class Refusals(Protocol):
    """The edge's answers to the request in ``scope``, in the shape its route gives its own."""

    def unauthorized(self, scope: Scope) -> Response:
        """No or wrong credentials (a 401 with a Basic challenge)."""

    def too_large(self, scope: Scope) -> Response:
        """A body over the cap."""


class BodyTooLarge(Exception):
    """A chunked body passed the cap while it was being read."""


class RequestEdge:
    """Credentials before any body is read, and no body over ``max_body_bytes``.

    A request without the right credentials is refused before a byte of its body is
    read, on every route but `OPEN_ROUTE`. A body whose Content-Length is over the
    cap is refused before it is read; a chunked one is counted as it streams and
    refused as soon as it passes the cap (one within it is handed on whole). A
    refused request with a body left unread ends its connection (``Connection:
    close``): the server would otherwise read all of it only to drop it.
    WebSocket handshakes need the same credentials; the messages that follow are
    capped by the server (`server.WS_MAX_MESSAGE_BYTES`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        accepts: Callable[[str | None], bool],
        max_body_bytes: int,
        refusals: Refusals,
    ) -> None:
        self.app = app
        self.accepts = accepts
        self.max_body_bytes = max_body_bytes
        self.refusals = refusals

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket" and not self.accepts(_header(scope, b"authorization")):
            # Closing before accepting refuses the handshake (HTTP 403).
            await send({"type": "websocket.close", "code": 1008})
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = _announced_length(scope)
        is_open = (scope["method"], scope["path"]) == OPEN_ROUTE
        if not is_open and not self.accepts(_header(scope, b"authorization")):
            await _refuse(self.refusals.unauthorized(scope), scope, receive, send, body_left=length != 0)
            return
        if length is not None and length > self.max_body_bytes:
            await _refuse(self.refusals.too_large(scope), scope, receive, send, body_left=True)
            return
        if length is None:
            try:
                body = await _read_chunked(receive, self.max_body_bytes)
            except BodyTooLarge:
                await _refuse(self.refusals.too_large(scope), scope, receive, send, body_left=True)
                return
            if body is None:
                return  # the client left in the middle of its body: nobody to answer
            receive = _replay(body, receive)
        await self.app(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _announced_length(scope: Scope) -> int | None:
    """The body's Content-Length (0 without one); None when it comes chunked, its length unknown."""
    length: int | None = 0
    for key, value in scope["headers"]:
        if key == b"transfer-encoding" and b"chunked" in value.lower():
            return None
        if key == b"content-length":
            # httptools refuses a length that is not digits; should one get here, it is counted.
            length = int(value) if value.isdigit() else None
    return length


async def _read_chunked(receive: Receive, limit: int) -> bytes | None:
    """The whole body, None if the client disconnects first; BodyTooLarge once it passes ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for the app: the body already read, in one message, then what comes next."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


async def _refuse(response: Response, scope: Scope, receive: Receive, send: Send, *, body_left: bool) -> None:
    if body_left:
        response.headers["Connection"] = "close"
    await response(scope, receive, send)

"""What every request passes before any route: its credentials, then its body's size.

FastAPI reads and parses a route's body before the route's dependencies run, so a
credentials check written as a dependency comes after the whole body is in memory;
and nothing caps that body. `RequestEdge` does both first, as a plain ASGI
middleware (no ``BaseHTTPMiddleware``: no task or stream per request), and the
routes behind it only ever see an authorised request with a body within the cap.

A `SignedRoute` (SignalWire's delivery reports) has no Basic credentials: its
credential is a signature over the URL and the body, made with a key only
SignalWire and the agent hold. The edge cannot check it without the body, so it
asks for what it can before reading a byte (a signature header, a small body),
and the route checks the signature itself before acting on anything.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Protocol

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A liveness probe carries no credentials; nothing else is open.
OPEN_ROUTE = ("GET", "/health")


class Refusals(Protocol):
    """The edge's answers to the request in ``scope``, in the shape its route gives its own."""

    def unauthorized(self, scope: Scope) -> Response:
        """No or wrong credentials (a 401 with a Basic challenge)."""

    def too_large(self, scope: Scope, limit: int) -> Response:
        """A body over the cap, ``limit`` bytes for this route."""

    def forbidden(self, scope: Scope) -> Response:
        """A signed route's request without a signature (a 403)."""


@dataclass(frozen=True)
class SignedRoute:
    """A route whose requests carry a signature instead of Basic credentials.

    The edge refuses one without any of ``signature_headers`` (lower-case names)
    before reading its body, and caps the body at ``max_body_bytes``; the route
    itself checks the signature.
    """

    method: str
    path: str
    signature_headers: tuple[bytes, ...]
    max_body_bytes: int


class BodyTooLarge(Exception):
    """A chunked body passed the cap while it was being read."""


class RequestEdge:
    """Credentials before any body is read, and no body over ``max_body_bytes``.

    A request without the right credentials is refused before a byte of its body is
    read, on every route but `OPEN_ROUTE` and the ``signed_routes`` (see `SignedRoute`,
    whose requests need a signature header instead). A body whose Content-Length is
    over the cap is refused before it is read; a chunked one is counted as it streams and
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
        signed_routes: Collection[SignedRoute] = (),
    ) -> None:
        self.app = app
        self.accepts = accepts
        self.max_body_bytes = max_body_bytes
        self.refusals = refusals
        self.signed_routes = {(route.method, route.path): route for route in signed_routes}

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
        route = (scope["method"], scope["path"])
        signed = self.signed_routes.get(route)
        max_body = self.max_body_bytes
        if signed is not None:
            if not any(_header(scope, name) for name in signed.signature_headers):
                await _refuse(self.refusals.forbidden(scope), scope, receive, send, body_left=length != 0)
                return
            max_body = signed.max_body_bytes
        elif route != OPEN_ROUTE and not self.accepts(_header(scope, b"authorization")):
            await _refuse(self.refusals.unauthorized(scope), scope, receive, send, body_left=length != 0)
            return
        if length is not None and length > max_body:
            await _refuse(self.refusals.too_large(scope, max_body), scope, receive, send, body_left=True)
            return
        if length is None:
            try:
                body = await _read_chunked(receive, max_body)
            except BodyTooLarge:
                await _refuse(self.refusals.too_large(scope, max_body), scope, receive, send, body_left=True)
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

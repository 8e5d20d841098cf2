"""The live-status routes: `/websocket`, `/dashboard` (and its script, style and agent list), `/metrics`.

`GET /dashboard/agents` answers ``{"agent_ids": [...]}``: the agent ids with
recent events on this instance (the ones a replay can show), most recently
active first, at most `engine.events.live.RECENT_AGENTS`. The dashboard offers
them when the agent id it watches has none, which is most often a typo.

`GET /dashboard/holds` answers ``{"holds": [...]}``: the prefixes the SMS
pumping guard holds now, for every agent (a hold is the deployment's), in the
shape of the HTTP API's `GET /fraud/holds`. The page's held-prefixes panel
(`static/holds.js`) reads it.

`/websocket` protocol (JSON text frames):

- the client sends ``{"type": "subscribe", "agent_id": "mfa"}`` (add ``"replay": true``
  to first get that agent's recent events), as often as it likes, and
  ``{"type": "unsubscribe", "agent_id": "mfa"}`` to stop;
- the server answers ``{"type": "subscribed", "agent_id": ...}`` (every later
  event of that agent follows it), ``{"type": "unsubscribed", ...}`` and, for a
  message it cannot use, ``{"type": "error", "error": ..., "message": ...}``;
- every event (`engine.models.Event`; its ``type`` starts with ``mfa.``) of the
  agents subscribed to, in the order this instance received it.

Every client the server drops is counted in ``mfa_websocket_dropped_clients_total``:
one that falls more than a queue's length behind (closed here with 1008, "too
slow"), and one the server closes itself, before any message reaches this module,
for a message over `server.WS_MAX_MESSAGE_BYTES` (1009) or a protocol error (1002,
1007), which uvicorn reports here as the close code of the disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Response, WebSocket, WebSocketDisconnect, status
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from config.settings import AGENT_ID_PATTERN
from engine.errors import StoreUnavailable
from engine.events.live import MAX_SUBSCRIPTIONS, LiveHub, Subscriber
from engine.events.metrics import CONTENT_TYPE_LATEST
from engine.events.webhooks import QUEUE as WEBHOOK_QUEUE
from engine.fraud import hold_document
from engine.runtime import Runtime
from server.auth import BasicAuth

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 4096
CLOSE_TIMEOUT = 2.0  # seconds to say goodbye to a client that may not be reading
# The close codes uvicorn's websockets protocol ends a connection with because of what the
# client sent: a protocol error, a text message that is not UTF-8, a message over the cap.
DROPPED_CODES = frozenset(
    {
        status.WS_1002_PROTOCOL_ERROR,
        status.WS_1007_INVALID_FRAME_PAYLOAD_DATA,
        status.WS_1009_MESSAGE_TOO_BIG,
    }
)
AgentId = Annotated[str, Field(pattern=AGENT_ID_PATTERN)]

_PAGE_DIR = Path(__file__).parent
_STATIC = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "holds.js": "text/javascript; charset=utf-8",
    "holds.css": "text/css; charset=utf-8",
    # The last hour's chart and the history view (GET /verifications and /verifications/summary).
    "history.js": "text/javascript; charset=utf-8",
    "history.css": "text/css; charset=utf-8",
}
# The page loads only its own script and style and talks only to this origin.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_DATA_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


class Subscribe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["subscribe"]
    agent_id: AgentId
    replay: bool = False


class Unsubscribe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["unsubscribe"]
    agent_id: AgentId


ClientMessage = TypeAdapter(Annotated[Subscribe | Unsubscribe, Field(discriminator="type")])


def build_routes(runtime: Runtime, auth: BasicAuth) -> APIRouter:
    """`/websocket`, `/dashboard` and `/metrics`, each behind ``auth``."""
    router = APIRouter()
    # The agent id the page shows unless its URL names another (AGENT_ID).
    default_agent = html.escape(runtime.settings.agent_id, quote=True)
    page = (_PAGE_DIR / "dashboard.html").read_text().replace("{{AGENT_ID}}", default_agent).encode()
    static = {name: (_PAGE_DIR / "static" / name).read_bytes() for name in _STATIC}

    @router.get("/dashboard", dependencies=[Depends(auth)], include_in_schema=False)
    async def dashboard() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)

    @router.get("/dashboard/static/{name}", dependencies=[Depends(auth)], include_in_schema=False)
    async def dashboard_static(name: str) -> Response:
        if name not in static:
            return Response(status_code=404)
        return Response(static[name], media_type=_STATIC[name], headers=_PAGE_HEADERS)

    @router.get("/dashboard/agents", dependencies=[Depends(auth)], include_in_schema=False)
    async def dashboard_agents() -> Response:
        body = json.dumps({"agent_ids": runtime.live.recent_agent_ids()})
        return Response(body, media_type="application/json", headers=_DATA_HEADERS)

    @router.get("/dashboard/holds", dependencies=[Depends(auth)], include_in_schema=False)
    async def dashboard_holds() -> Response:
        try:
            holds = await runtime.fraud.holds(runtime.clock())
        except StoreUnavailable:
            # The page keeps what it showed and says it could not refresh it.
            return Response(status_code=503, headers=_DATA_HEADERS)
        body = json.dumps({"holds": [hold_document(hold) for hold in holds]})
        return Response(body, media_type="application/json", headers=_DATA_HEADERS)

    @router.get("/metrics", dependencies=[Depends(auth)], include_in_schema=False)
    async def metrics() -> Response:
        if runtime.started:
            # Read at scrape time: the outbox is shared, so this is every instance's backlog.
            with contextlib.suppress(StoreUnavailable):
                runtime.metrics.webhook_backlog.set(await runtime.store.backlog(WEBHOOK_QUEUE))
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @router.websocket("/websocket")
    async def websocket(socket: WebSocket) -> None:
        if not auth.accepts(socket.headers.get("authorization")):
            # Closing before accepting refuses the handshake (HTTP 403).
            await socket.close(code=status.WS_1008_POLICY_VIOLATION)
            return
        await socket.accept()
        hub = runtime.live
        subscriber = hub.connect()
        try:
            close_code = await _serve(socket, hub, subscriber)
        finally:
            hub.disconnect(subscriber)
        if close_code in DROPPED_CODES:
            log.info("live events: the server closed a WebSocket client (code %d)", close_code)
            runtime.metrics.websocket_dropped.inc()

    return router


async def _serve(socket: WebSocket, hub: LiveHub, subscriber: Subscriber) -> int | None:
    """Read the client's messages and write its frames until either side ends, or it is dropped.

    The close code of the client's disconnect, if that is how it ended.
    """
    reader = asyncio.create_task(_read(socket, hub, subscriber))
    tasks = {
        reader,
        asyncio.create_task(_write(socket, subscriber)),
        asyncio.create_task(subscriber.dropped.wait()),
    }
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if subscriber.dropped.is_set():
        # It may not be reading at all: do not wait long to say goodbye.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(socket.close(status.WS_1008_POLICY_VIOLATION, "too slow"), CLOSE_TIMEOUT)
    if reader.done() and not reader.cancelled() and reader.exception() is None:
        return reader.result()
    return None


async def _write(socket: WebSocket, subscriber: Subscriber) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        while True:
            await socket.send_text(await subscriber.queue.get())


async def _read(socket: WebSocket, hub: LiveHub, subscriber: Subscriber) -> int:
    """Act on each message until the client disconnects; the disconnect's close code."""
    while True:
        message = await socket.receive()
        if message["type"] == "websocket.disconnect":
            return int(message.get("code", status.WS_1000_NORMAL_CLOSURE))
        text = message.get("text")
        if text is None and message.get("bytes") is not None:
            text = message["bytes"].decode("utf-8", "replace")
        error = _handle(text or "", hub, subscriber)
        if error is not None:
            subscriber.offer(json.dumps({"type": "error", **error}))


def _handle(text: str, hub: LiveHub, subscriber: Subscriber) -> dict[str, str] | None:
    """Act on one client message; the error to send back, if any."""
    if len(text) > MAX_MESSAGE_CHARS:
        return {"error": "too_long", "message": f"Messages are at most {MAX_MESSAGE_CHARS} characters."}
    try:
        request = ClientMessage.validate_json(text)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"] if part not in ("subscribe", "unsubscribe"))
        if problem["type"] == "json_invalid":
            return {"error": "bad_json", "message": "The message is not valid JSON."}
        return {
            "error": "bad_message",
            "message": 'Send {"type": "subscribe", "agent_id": "..."} or {"type": "unsubscribe", ...}'
            + (f" ({where}: {problem['msg']})" if where else f" ({problem['msg']})"),
        }
    if isinstance(request, Unsubscribe):
        hub.unsubscribe(subscriber, request.agent_id)
        return None
    if request.agent_id not in subscriber.agent_ids and len(subscriber.agent_ids) >= MAX_SUBSCRIPTIONS:
        return {"error": "too_many", "message": f"A client may watch at most {MAX_SUBSCRIPTIONS} agent ids."}
    hub.subscribe(subscriber, request.agent_id, replay=request.replay)
    return None

"""What every connection passes: a deadline and a size cap for each request's head, and
a cap on the connections one client address holds at once.

uvicorn has no setting for any of them: its keep-alive timer only runs between
requests and stops at the first byte of the next one, so a client that sends a head
a byte at a time, or opens a connection and sends nothing, holds it for as long as
it likes; and httptools gathers a header of any length in memory. The limits
therefore live in subclasses of uvicorn's protocols:
`LimitedHttpProtocol` (of the httptools one) and `LimitedWebSocketProtocol` (of the
websockets sans-I/O one, which takes a connection over on an upgrade, and with it
the connection's place under the cap).

They lean on uvicorn internals: the two protocol classes, their constructor
``(config, server_state, app_state, _loop)``, ``data_received`` feeding the
httptools parser, whose callbacks ``on_message_begin`` and ``on_headers_complete``
they extend, ``handle_websocket_upgrade``, and the ``client``, ``transport`` and
``loop`` attributes. Checked against uvicorn 0.54.0 (with
httptools 0.9.0 and websockets 17.4); `check_uvicorn` fails at start-up, naming
what is missing, on a uvicorn without them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

log = logging.getLogger(__name__)

CHECKED_AGAINST = "0.54.0"
# A request's line and headers: the platform's are well under 4 KiB (nginx allows 32 KiB).
MAX_HEAD_BYTES = 64 * 1024
# What the subclasses below override or call on uvicorn's classes.
_HTTP_HOOKS = (
    "connection_made",
    "connection_lost",
    "data_received",
    "on_message_begin",
    "on_headers_complete",
    "handle_websocket_upgrade",
)
_WEBSOCKET_HOOKS = ("connection_made", "connection_lost")


def check_uvicorn(
    http_protocol: type = HttpToolsProtocol, websocket_protocol: type = WebSocketsSansIOProtocol
) -> None:
    """RuntimeError, naming what is missing, unless uvicorn still has every hook used here.

    Without this a renamed callback would be silently skipped: the server would run
    with no head deadline and no cap, and nothing would say so.
    """
    for cls, hooks in ((http_protocol, _HTTP_HOOKS), (websocket_protocol, _WEBSOCKET_HOOKS)):
        for name in hooks:
            if not callable(getattr(cls, name, None)):
                raise RuntimeError(
                    f"uvicorn {uvicorn.__version__}: {cls.__name__} has no {name}(), which "
                    f"server/connections.py overrides (checked against uvicorn {CHECKED_AGAINST})"
                )


@dataclass
class ClientSlots:
    """The connections each client address holds, up to ``per_client`` (0: no cap)."""

    per_client: int
    _held: dict[str, int] = field(default_factory=dict)

    def take(self, host: str | None) -> bool:
        """Count one more connection from ``host``; False (and nothing counted) when it is at its cap."""
        if not self.per_client or host is None:
            return True
        held = self._held.get(host, 0)
        if held >= self.per_client:
            return False
        self._held[host] = held + 1
        return True

    def give_back(self, host: str | None) -> None:
        """One connection from ``host`` has ended."""
        if not self.per_client or host is None:
            return
        held = self._held.get(host, 0) - 1
        if held > 0:
            self._held[host] = held
        else:
            self._held.pop(host, None)


@dataclass(frozen=True)
class ConnectionLimits:
    """Seconds a request's head may take, and the connections per client address."""

    header_timeout: float
    slots: ClientSlots


class LimitedConfig(uvicorn.Config):
    """uvicorn's configuration, carrying the limits its protocols (built by uvicorn) read."""

    def __init__(self, app: Any, *, limits: ConnectionLimits, **options: Any) -> None:
        super().__init__(app, **options)
        self.limits = limits


def _limits(config: uvicorn.Config) -> ConnectionLimits:
    if not isinstance(config, LimitedConfig):
        raise TypeError("these protocols are served through server.uvicorn_config()")
    return config.limits


def _host(client: tuple[str, int] | None) -> str | None:
    return client[0] if client else None


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline and a size cap for each request head,
    and a cap on the connections per client address.

    The deadline starts when the connection opens, and on a kept-alive connection when
    the next request's first byte arrives (the time in between is uvicorn's keep-alive
    timeout); it ends when the head is complete. The body is under neither: the
    request edge (`server.edge`) caps it. A connection over a limit is closed.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = _limits(config)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._holds_slot = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.limits.slots.take(_host(self.client)):
            self._close("that address holds as many connections as one client may")
            return
        self._holds_slot = True
        self._start_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_deadline()
        if self._holds_slot:
            self._holds_slot = False
            self.limits.slots.give_back(_host(self.client))
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        head = self._head_deadline
        super().data_received(data)
        # Counted only when a head was under way before these bytes and still is after them:
        # then every one of them was part of it (a body, or a head that ended, is not counted).
        if head is not None and self._head_deadline is head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._stop_head_deadline()
                self._close(f"a request head over {MAX_HEAD_BYTES} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_deadline is None:
            self._start_head_deadline()

    def on_headers_complete(self) -> None:
        self._stop_head_deadline()  # first: an upgrade hands the transport over inside this call
        super().on_headers_complete()

    def handle_websocket_upgrade(self) -> None:
        # The WebSocket protocol takes the transport, and this connection's slot with it.
        self._holds_slot = False
        super().handle_websocket_upgrade()

    def _start_head_deadline(self) -> None:
        self._head_bytes = 0
        self._head_deadline = self.loop.call_later(self.limits.header_timeout, self._head_too_slow)

    def _stop_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        self._close(f"no request head within {self.limits.header_timeout} s")

    def _close(self, reason: str) -> None:
        if not self.transport.is_closing():
            log.debug("closed a connection from %s: %s", _host(self.client), reason)
            self.transport.close()


class LimitedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets protocol, giving the client's slot back when the connection ends."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.slots = _limits(config).slots

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            # Only ever made by LimitedHttpProtocol's upgrade, which handed its slot over.
            self.slots.give_back(_host(self.client))


class BadClientTextIsNoFault(logging.Filter):
    """uvicorn logs a client's text frame that is not UTF-8 with a traceback, as if the server
    had failed (websockets_sansio_impl, uvicorn 0.54.0). It is bad input: a warning line,
    without the traceback; the connection is still closed with 1007 (and counted as dropped)."""

    MESSAGE = "Invalid UTF-8 sequence received from client"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith(self.MESSAGE):
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_bad_client_text() -> None:
    """Install `BadClientTextIsNoFault` on uvicorn's error logger, once."""
    errors = logging.getLogger("uvicorn.error")
    if not any(isinstance(existing, BadClientTextIsNoFault) for existing in errors.filters):
        errors.addFilter(BadClientTextIsNoFault())

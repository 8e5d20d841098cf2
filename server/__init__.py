"""The HTTP server's edge: what every connection and request passes before any route.

- `server.connections`: per connection, a deadline and a size cap for each request's
  head, and a cap on the connections one client address holds (in uvicorn's protocols);
- `server.edge`: per request, credentials (or, on a signed route, a signature
  header) before any body is read, and a cap on the body (an ASGI middleware,
  wired in by `agent.build_app`);
- `server.auth`: the Basic credentials every route but /health needs, and their 401;
- `server.errors`: the one error shape every route of ours answers in;
- `server.context`: what one request carries down to its handler (the agent id, whether
  the call came through an include);
- `uvicorn_config`: the one way this project configures uvicorn, used by
  `agent.serve()` and by the tests, so the tests exercise the same server.
"""

from __future__ import annotations

from starlette.types import ASGIApp

from config import Settings
from server.connections import (
    ClientSlots,
    ConnectionLimits,
    LimitedConfig,
    LimitedHttpProtocol,
    LimitedWebSocketProtocol,
    check_uvicorn,
    quiet_bad_client_text,
)
from server.edge import Refusals, RequestEdge, SignedRoute

__all__ = ["WS_MAX_MESSAGE_BYTES", "Refusals", "RequestEdge", "SignedRoute", "uvicorn_config"]

# A client's WebSocket messages are subscriptions of a few dozen bytes; a larger one is
# refused as soon as its frame header says so (close code 1009), before it is buffered.
WS_MAX_MESSAGE_BYTES = 64 * 1024


def uvicorn_config(app: ASGIApp, settings: Settings) -> LimitedConfig:
    """uvicorn serving ``app`` with uvloop, httptools and websockets, within the edge's limits."""
    check_uvicorn()
    quiet_bad_client_text()
    limits = ConnectionLimits(
        header_timeout=settings.mfa_header_timeout,
        slots=ClientSlots(settings.mfa_max_connections_per_client),
    )
    return LimitedConfig(
        app,
        limits=limits,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=LimitedHttpProtocol,
        ws=LimitedWebSocketProtocol,
        ws_max_size=WS_MAX_MESSAGE_BYTES,
        access_log=False,
        log_level=settings.log_level.lower(),
        # uvicorn's lines go through the process's own logging (config.logs), in its format.
        log_config=None,
    )

"""What people watching the agent use: live events over `/websocket`, the `/dashboard`
page and Prometheus `/metrics`."""

from __future__ import annotations

from fastapi import APIRouter

from engine.runtime import Runtime
from server.auth import BasicAuth
from web.live import build_routes


def build_live_router(runtime: Runtime, auth: BasicAuth) -> APIRouter:
    """The live-status routes, each behind ``auth`` (see `web.live`)."""
    return build_routes(runtime, auth)

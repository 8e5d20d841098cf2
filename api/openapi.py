"""`/openapi.json`: the OpenAPI document of the HTTP API, generated from its own routes.

The SDK's app serves no document of its own, and the agent's SWML and SWAIG
routes are for the platform, not for API clients, so the document covers
exactly the routes in `api/`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi.openapi.utils import get_openapi
from starlette.routing import BaseRoute

TITLE = "Phone verification API"
VERSION = "1.0.0"
DESCRIPTION = (
    "One-time codes for web and app sign-in flows (`/verifications`), and the phone-verification "
    "walkthrough's workflow (`/orchestrators/E4_SmsPhoneVerification` and its instance URIs), over the "
    "same engine as the voice agent: the same destination policy, rate limits, SMS pumping guard "
    "(`/fraud/holds`: the prefixes it holds) and events. Every error "
    'answers `{"error": {"code", "message"}}`. Numbers are masked to their last four digits; codes '
    "never appear in an answer."
)


def openapi_document(routes: Sequence[BaseRoute]) -> dict[str, Any]:
    """The document for ``routes``, with HTTP Basic as the security of every operation."""
    document = get_openapi(title=TITLE, version=VERSION, description=DESCRIPTION, routes=list(routes))
    document.setdefault("components", {})["securitySchemes"] = {
        "basicAuth": {"type": "http", "scheme": "basic"}
    }
    document["security"] = [{"basicAuth": []}]
    return document

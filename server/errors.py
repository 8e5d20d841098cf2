"""The one error shape every route of ours answers in: ``{"error": {"code", "message"}}``.

It lives with the server because the server's edge refuses requests (no
credentials, a body over the cap) before any route runs, in the same shape as
the routes behind it; `api.errors` renders the engine's refusals in it too.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

# What a 503 (or a 429 of unknown length) suggests when nothing says how long to wait.
RETRY_SOON_SECONDS = 5


class ErrorDetail(BaseModel):
    """A stable machine-readable ``code`` and a message safe to show anyone.

    429 and 503 add ``retry_after``, the seconds to wait (the ``Retry-After`` header
    says the same, but a client reading only the body must not have to guess).
    """

    code: str
    message: str
    retry_after: int | None = Field(None, ge=1, description="429 and 503 only: seconds to wait.")


class ErrorBody(BaseModel):
    """What every error response of this API carries."""

    error: ErrorDetail


def error_response(
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    *,
    retry_after: int | None = None,
) -> Response:
    """A response in the `ErrorBody` shape; a 429 or 503 always says when to try again."""
    if status in (429, 503):
        retry_after = retry_after or RETRY_SOON_SECONDS
        headers = {**(headers or {}), "Retry-After": str(retry_after)}
    else:
        retry_after = None
    body = ErrorBody(error=ErrorDetail(code=code, message=message, retry_after=retry_after))
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=dict(headers or {}))


def body_too_large_response(limit: int) -> Response:
    """The 413 for a body over the server's cap (MFA_MAX_BODY_BYTES)."""
    return error_response(413, "body_too_large", f"The request body is larger than {limit} bytes.")


def not_signed_response() -> Response:
    """The 403 for a request to a signed route (SignalWire's reports) without a good signature."""
    return error_response(403, "forbidden", "The request is not signed with this project's Signing Key.")

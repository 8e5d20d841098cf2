"""Basic auth for every route the SDK does not serve itself (all but /health).

The same credentials as the SDK's own routes, compared in constant time. The
server's edge (`server.edge`) checks them first, before any body is read; the
routes' own dependency stays as a second check.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from fastapi import HTTPException, Request, Response

from server.errors import error_response

UNAUTHORIZED = {"code": "unauthorized", "message": "Valid credentials are required."}
CHALLENGE = {"WWW-Authenticate": 'Basic realm="mfa"'}


def unauthorized_response() -> Response:
    """The 401 of our routes: their error shape and a Basic challenge."""
    return error_response(401, UNAUTHORIZED["code"], UNAUTHORIZED["message"], CHALLENGE)


class BasicAuth:
    """Checks a request's `Authorization: Basic` header against one user and password."""

    def __init__(self, user: str, password: str) -> None:
        self._expected = f"{user}:{password}".encode()

    def accepts(self, header: str | None) -> bool:
        """Whether an Authorization header value carries the right credentials."""
        if not header or not header.lower().startswith("basic "):
            return False
        try:
            given = base64.b64decode(header[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self._expected)

    async def __call__(self, request: Request) -> None:
        """A FastAPI dependency: 401 with a Basic challenge unless the credentials are right."""
        if not self.accepts(request.headers.get("authorization")):
            raise HTTPException(status_code=401, detail=UNAUTHORIZED, headers=CHALLENGE)

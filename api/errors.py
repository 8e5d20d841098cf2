"""Every error the HTTP API answers, in one shape: ``{"error": {"code", "message"}}``.

The shape itself (`server.errors`) sits below, with the server's edge, which
refuses some requests in it before any route runs.

Engine refusals (`engine.errors`, and the workflow's in `engine.workflow`) keep
their own code and status. `ApiRoute` renders them, plus request validation and
authentication failures, for the routes in `api/` only: the SDK's routes keep
their own answers.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from engine.errors import FraudRefused, ProviderUnavailable, RateLimited, VerificationError
from server.errors import ErrorBody, error_response


def _retry_after(error: VerificationError) -> int | None:
    return error.retry_after if isinstance(error, RateLimited | ProviderUnavailable | FraudRefused) else None


def _validation_message(error: RequestValidationError) -> str:
    # Names the fields and what is wrong with them, never the values (a number, a code).
    problems = []
    for problem in error.errors()[:5]:
        where = ".".join(str(part) for part in problem.get("loc", ()) if part != "body")
        message = str(problem.get("msg", "invalid"))
        problems.append(f"{where}: {message}" if where else message)
    return "The request is not valid: " + "; ".join(problems) + "."


def _http_error(error: HTTPException) -> Response:
    detail = error.detail
    if isinstance(detail, dict) and {"code", "message"} <= detail.keys():
        code, message = str(detail["code"]), str(detail["message"])
    else:
        code, message = f"http_{error.status_code}", str(detail)
    return error_response(error.status_code, code, message, error.headers)


class ApiRoute(APIRoute):
    """A route whose failures all answer in the `ErrorBody` shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except VerificationError as error:
                return error_response(
                    error.http_status, error.code, error.message, retry_after=_retry_after(error)
                )
            except RequestValidationError as error:
                return error_response(422, "invalid_request", _validation_message(error))
            except HTTPException as error:
                if error.status_code == 400 and isinstance(error.__cause__, ValueError):
                    # FastAPI could not decode the body (not UTF-8): malformed, like bad JSON.
                    return error_response(422, "invalid_request", "The request body is not valid JSON.")
                return _http_error(error)

        return handle


# -- what the OpenAPI document says about errors --------------------------------

_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 1},
    }
}
_DESCRIPTIONS = {
    400: "The request cannot be acted on.",
    401: "Missing or wrong Basic credentials.",
    404: "No such verification, instance or hold.",
    410: "The instance has finished.",
    412: "The instance is still running.",
    413: "The request body is larger than the server reads (`body_too_large`).",
    422: "The request body or a parameter is not valid, or the number may not receive a code.",
    429: "A rate limit was reached, or the SMS pumping guard refused the number for now "
    "(`fraud_suspected`: its prefix is held; `new_country_budget`: its country's hourly budget is spent).",
    502: "The provider refused the request (a configuration problem).",
    503: "The provider or the store is unavailable right now.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses (401, 413 and 503 are always possible)."""
    documented: dict[int | str, dict[str, Any]] = {}
    for status in sorted({401, 413, 503, *statuses}):
        response: dict[str, Any] = {"model": ErrorBody, "description": _DESCRIPTIONS[status]}
        if status in (429, 503):
            response["headers"] = _RETRY_AFTER
        if status == 401:
            response["headers"] = {
                "WWW-Authenticate": {"description": "The Basic challenge.", "schema": {"type": "string"}}
            }
        documented[status] = response
    return documented

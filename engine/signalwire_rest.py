"""A small client for SignalWire's REST API over the app's pooled HTTP/1.1 client (engine/http1.py).

It adds HTTP Basic auth (project id and API token), bounds every request with
a total timeout, and turns what can go wrong on the way into the engine's two
errors, each with a stable ``kind`` that metrics, the circuit breaker and the
retry decision can rely on:

- ``ProviderUnavailable``: ``timeout``, ``connection``, ``server_error`` (5xx),
  ``rate_limited`` (429, with ``retry_after``), ``bad_response``;
- ``ProviderRejected``: ``unauthorized`` (401).

Every other status comes back to the caller with its JSON body, because only
the caller knows what a 404 or a 422 means for its API. The token, phone
numbers and codes never reach a log line or an exception message: messages
name the method, the path and the status only.

An optional ``observer`` is told the time and the error kind of every request
(the metrics use it), so this client needs no metrics library of its own.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

from pydantic import SecretStr

from engine.errors import ProviderRejected, ProviderUnavailable
from engine.http1 import (
    BadResponse,
    ConnectFailed,
    ConnectionLost,
    HttpClient,
    RequestTimedOut,
    TlsFailed,
    render_headers,
    split_url,
)

log = logging.getLogger(__name__)

DEFAULT_RETRY_AFTER = 30  # seconds, when a 429 does not say (or says it as an HTTP date)
JSON_TYPE = "application/json"
FORM_TYPE = "application/x-www-form-urlencoded"

JsonObject = dict[str, Any]

# Told of each request: the endpoint (ids replaced by "{id}"), its seconds, and its
# error kind (None when SignalWire answered with a status the caller handles).
UpstreamObserver = Callable[[str, float, str | None], None]

# A phone number inside an error text: 7 or more digits, perhaps split by spaces,
# dots, dashes or brackets, perhaps after a "+".
_NUMBER_LIKE = re.compile(r"\+?\(?\d(?:[\s().-]{0,2}\d){6,}")
_MAX_DETAIL = 300
# A path segment that is an id (a UUID, a hex or numeric id), not part of the endpoint's name.
_ID_SEGMENT = re.compile(r"^(?=[^/]*\d)[0-9A-Za-z-]{16,}$")
_PHONE_SEGMENT = re.compile(r"^(\+|%2B)?\d{6,15}$")


class RequestNotSent(ProviderUnavailable):
    """The connection could not be opened, so the request surely never reached SignalWire.

    Its ``kind`` is ``connection`` like any other connection fault; the type
    lets a caller that must not repeat a request which may have counted (a
    code check) tell this case apart from a reset or a timeout.
    """


class SignalWireRest:
    """Requests to one SignalWire space as one project; see the module docstring for errors."""

    def __init__(
        self,
        http: HttpClient,
        base_url: str,
        project_id: str,
        api_token: str | SecretStr,
        timeout: float,
        *,
        observer: UpstreamObserver | None = None,
    ) -> None:
        self._http = http
        self._observer = observer
        self._origin, self._base_path = split_url(base_url)
        self._base_url = base_url.rstrip("/")
        token = api_token.get_secret_value() if isinstance(api_token, SecretStr) else api_token
        credentials = base64.b64encode(f"{project_id}:{token}".encode()).decode("ascii")
        # Rendered once: every request sends the same lines.
        self._headers = render_headers({"Authorization": f"Basic {credentials}", "Accept": JSON_TYPE})
        self.project_id = project_id
        self.timeout = timeout

    def __repr__(self) -> str:
        # Never show the Authorization header (the token) in a repr.
        return f"SignalWireRest({self._base_url!r}, project_id={self.project_id!r})"

    async def post_json(
        self, path: str, body: Mapping[str, Any], time_budget: float | None = None
    ) -> tuple[int, JsonObject]:
        """POST a JSON body; returns the status and the JSON object answered.

        ``time_budget`` (seconds) overrides the client's timeout for this request (a retry that must
        fit in what is left of the first try's time).
        """
        encoded = json.dumps(body, separators=(",", ":")).encode()
        return await self._request("POST", path, time_budget, encoded, JSON_TYPE)

    async def post_form(
        self, path: str, fields: Mapping[str, str], time_budget: float | None = None
    ) -> tuple[int, JsonObject]:
        """POST form fields (the LaML/compatibility API); returns the status and JSON answered."""
        return await self._request("POST", path, time_budget, urlencode(fields).encode(), FORM_TYPE)

    async def get_json(self, path: str, time_budget: float | None = None) -> tuple[int, JsonObject]:
        """GET ``path`` (with its query); returns the status and the JSON object answered."""
        return await self._request("GET", path, time_budget)

    async def _request(
        self,
        method: str,
        path: str,
        time_budget: float | None,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> tuple[int, JsonObject]:
        endpoint = endpoint_of(path)  # ids and numbers never reach a message or a metric
        if self._observer is None:
            return await self._exchange(method, path, endpoint, time_budget, body, content_type)
        started = time.monotonic()
        error_kind: str | None = None
        try:
            return await self._exchange(method, path, endpoint, time_budget, body, content_type)
        except (ProviderUnavailable, ProviderRejected) as exc:
            error_kind = exc.kind
            raise
        finally:
            self._observe(endpoint, time.monotonic() - started, error_kind)

    def _observe(self, endpoint: str, seconds: float, error_kind: str | None) -> None:
        assert self._observer is not None
        try:
            self._observer(endpoint, seconds, error_kind)
        except Exception:  # a metrics problem must never fail a send or a check
            log.exception("the upstream observer failed")

    async def _exchange(
        self,
        method: str,
        path: str,
        endpoint: str,
        time_budget: float | None,
        body: bytes | None,
        content_type: str | None,
    ) -> tuple[int, JsonObject]:
        where = f"{method} {endpoint}"
        seconds = self.timeout if time_budget is None else time_budget
        try:
            response = await self._http.request(
                self._origin,
                method,
                self._base_path + path,
                headers=self._headers,
                body=body,
                content_type=content_type,
                time_limit=seconds,
            )
        except RequestTimedOut as exc:
            raise _unavailable(f"SignalWire did not answer {where} within {seconds:g} s", "timeout") from exc
        except TlsFailed as exc:
            # The handshake happened; trying again at once will not change a certificate.
            raise _unavailable(f"TLS with SignalWire failed for {where}", "connection") from exc
        except ConnectFailed as exc:
            # Refused, unreachable or not resolved: nothing was written to a socket.
            message = f"could not connect to SignalWire for {where} ({type(exc.__cause__ or exc).__name__})"
            log.warning("signalwire unavailable: %s", message)
            raise RequestNotSent(message, kind="connection") from exc
        except ConnectionLost as exc:
            raise _unavailable(f"connection to SignalWire lost during {where}", "connection") from exc
        except BadResponse as exc:  # an answer that is not valid HTTP, or too large
            raise _unavailable(
                f"SignalWire answered {where} with a malformed response", "bad_response"
            ) from exc

        status = response.status
        log.debug("signalwire %s -> %s", where, status)
        if status == 401:
            log.warning("signalwire refused the credentials on %s", where)
            raise ProviderRejected(
                "SignalWire refused the project id or API token (HTTP 401)", kind="unauthorized"
            )
        if status == 429:
            seconds_to_wait = _retry_after(response.header("Retry-After"))
            log.warning("signalwire rate limited %s; retry after %d s", where, seconds_to_wait)
            raise ProviderUnavailable(
                f"SignalWire is rate limiting {where} (HTTP 429)",
                kind="rate_limited",
                retry_after=seconds_to_wait,
            )
        if status >= 500:
            raise _unavailable(f"SignalWire failed {where} (HTTP {status})", "server_error")
        return status, _parse_body(response.body, status, where)


def endpoint_of(path: str) -> str:
    """The path without its query, ids and phone numbers replaced by ``{id}``: a bounded
    label for metrics that never holds a number."""
    parts = path.split("?", 1)[0].split("/")
    hidden = (_ID_SEGMENT, _PHONE_SEGMENT)
    return "/".join("{id}" if any(kind.match(part) for kind in hidden) else part for part in parts)


def _unavailable(message: str, kind: str) -> ProviderUnavailable:
    log.warning("signalwire unavailable: %s", message)
    return ProviderUnavailable(message, kind=kind)


def _retry_after(header: str | None) -> int:
    """Seconds from a numeric ``Retry-After``; an HTTP date or garbage gets the default."""
    if header is not None and header.strip().isdigit():
        return max(1, int(header.strip()))
    return DEFAULT_RETRY_AFTER


def _parse_body(raw: bytes, status: int, where: str) -> JsonObject:
    """The answer's JSON object.

    A success must carry one: anything else (an HTML error page from a proxy,
    a list) means we cannot tell what happened. Other statuses speak through
    their status first, so an empty or non-JSON body there reads as ``{}``.
    """
    try:
        parsed = json.loads(raw) if raw.strip() else None
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested deeper than Python recurses
        parsed = None
    if isinstance(parsed, dict):
        return parsed
    if 200 <= status < 300:
        raise _unavailable(
            f"SignalWire answered {where} (HTTP {status}) without a JSON object", "bad_response"
        )
    return {}


def mask_numbers(text: str) -> str:
    """Replace anything that looks like a phone number with its last four digits."""

    def _mask(match: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", match.group())
        return "***" + digits[-4:]

    return _NUMBER_LIKE.sub(_mask, text)


def error_details(answer: JsonObject) -> str:
    """The ``detail`` (or ``title``) of each error SignalWire listed, numbers masked."""
    parts: list[str] = []
    errors = answer.get("errors")
    if isinstance(errors, list):
        for error in errors:
            if isinstance(error, dict):
                text = error.get("detail") or error.get("title") or error.get("code")
                if isinstance(text, str) and text:
                    parts.append(text)
    if not parts:
        for key in ("message", "error"):  # the LaML API's and the plain error shapes
            if isinstance(answer.get(key), str) and answer[key]:
                parts.append(answer[key])
                break
    text = "; ".join(parts) or "no details given"
    text = mask_numbers(text)
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"


__all__ = [
    "JsonObject",
    "RequestNotSent",
    "SignalWireRest",
    "UpstreamObserver",
    "endpoint_of",
    "error_details",
    "mask_numbers",
]

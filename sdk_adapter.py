"""The one door to the SDK's internals: everything here leans on `signalwire-sdk` beyond
its documented API, and nothing else in the project does.

The agent (`agent.py`) uses the SDK's public API (`define_tool`, `prompt_add_section`,
contexts, `mount`, `get_app`) directly, and reaches what follows only through this
module:

- `SdkAgent`, the agent's base class, overrides three of `AgentBase`'s private methods:
  `_handle_swaig_request` (every SWAIG request, so the agent may answer first),
  `_tool_token_rejection` (the function-token check, so a token the agent admits
  passes, and only for its own call) and `_build_webhook_url` (query parameters the
  agent adds to its functions' URLs). It signs function tokens through
  `_session_manager` (a `SessionManager`: `secret_key`, `create_tool_token`,
  `validate_tool_token`, `token_expiry_secs`), reads its functions' SWAIG
  definitions (`define_tools`, `SWAIGFunction.to_swaig`) and URLs
  (`_detect_proxy_from_request`, `_build_webhook_url`), checks a request as the SDK
  does (`_check_basic_auth`, `_check_content_type`), and turns off the SDK's own
  argument check (`_tool_registry`, `SWAIGFunction.validate_args`).
- On the SDK's FastAPI app (`get_app()`): `replace_security_headers_middleware`
  swaps its `add_security_headers` function middleware for `SecurityHeaders`
  (reading `_ssl_enabled`/`ssl_enabled` as the SDK does), `answer_unknown_paths_with_404`
  wraps its catch-all route `handle_all_routes` (which serves `SDK_CATCH_ALL_PATHS`
  and `_routing_callbacks`), and `remove_route`/`add_innermost_middleware`/`use_lifespan`
  edit `app.router.routes`, `app.user_middleware` and `app.router.lifespan_context`.
- What the SDK answers on its own: `sdk_unauthorized()` (its 401),
  `sdk_could_not_read()` (its answers to an unreadable SWAIG body), and
  `basic_auth_credentials()` (the shape `get_basic_auth_credentials` returns).
- SignalWire's webhook signatures: `signed_by_signalwire()` checks one the way the
  SDK checks its own routes (`signalwire.core.security.webhook_middleware.validate`:
  the SHA-256 header first, then `X-SignalWire-Signature` or `X-Twilio-Signature`;
  JSON and form-encoded schemes; the default port in the URL or not).

Checked against the SDK versions in `CHECKED_SDK_VERSIONS`; `check_sdk()` stops
start-up with one line outside them, or when an internal used here is missing.
`tests/test_sdk_adapter.py` has one test per internal, which fails if the SDK
changes it underneath.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from signalwire import AgentBase
from signalwire.core.security import webhook_middleware
from signalwire.core.security.session_manager import SessionManager
from signalwire.core.swaig_function import SWAIGFunction
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware

from server.errors import error_response

# The SDK releases every internal below was read and tested against: from CHECKED_FROM
# up to, not including, CHECKED_BELOW. Widen it only after tests/test_sdk_adapter.py
# passes on the new release.
SDK_DISTRIBUTION = "signalwire-sdk"
CHECKED_FROM = (3, 7, 5)
CHECKED_BELOW = (3, 8)
CHECKED_SDK_VERSIONS = (
    f">={'.'.join(map(str, CHECKED_FROM))},<{'.'.join(map(str, CHECKED_BELOW))}"  # ">=3.7.5,<3.8"
)

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]
SwaigAnswer = Response | dict[str, Any]

# The private methods SdkAgent overrides, with the parameters (after self) it overrides them with.
OVERRIDDEN = {
    "_handle_swaig_request": ("request", "response"),
    "_tool_token_rejection": ("function_name", "token", "call_id", "conversation_id"),
    "_build_webhook_url": ("endpoint", "query_params"),
}
# The methods of AgentBase this module calls, or relies on (the catch-all route calls `_dispatch_unmatched`).
CALLED = ("_detect_proxy_from_request", "_check_basic_auth", "_check_content_type", "_dispatch_unmatched")
CALLED_PUBLIC = ("define_tools", "get_basic_auth_credentials", "get_app")
# The parameters of the SDK's framework-free signature check (`signed_by_signalwire`).
SIGNATURE_CHECK = ("method", "url", "headers", "body", "signing_key")
# The headers a SignalWire signature comes in (lower case), any one of them (security.md).
SIGNATURE_HEADERS = ("x-signalwire-sha256-signature", "x-signalwire-signature", "x-twilio-signature")


class SdkMismatch(RuntimeError):
    """The installed SDK is not what this module was checked against."""


def installed_sdk_version() -> str:
    """The installed `signalwire-sdk` version, as its metadata says."""
    return importlib.metadata.version(SDK_DISTRIBUTION)


def check_sdk() -> None:
    """SystemExit, with one line, unless the installed SDK is one this module was checked
    against and still has every internal it uses."""
    try:
        version = installed_sdk_version()
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(
            f"sdk error: {SDK_DISTRIBUTION} is not installed; the agent needs {CHECKED_SDK_VERSIONS}"
        ) from None
    if not _in_checked_range(version):
        raise SystemExit(
            f"sdk error: {SDK_DISTRIBUTION} {version} is installed, but the agent was checked against "
            f"{CHECKED_SDK_VERSIONS} only (sdk_adapter.py); install a version in that range"
        )
    problem = missing_internal()
    if problem:
        raise SystemExit(f"sdk error: {SDK_DISTRIBUTION} {version}: {problem} (sdk_adapter.py)")


def _in_checked_range(version: str) -> bool:
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if match is None:
        return False
    release = tuple(int(part or 0) for part in match.groups())
    # A pre-release of the lowest version (3.7.5rc1) is older than it, so outside.
    if release == CHECKED_FROM and version[match.end() :].lstrip(".").startswith(("a", "b", "rc", "dev")):
        return False
    return CHECKED_FROM <= release < CHECKED_BELOW


def missing_internal() -> str | None:
    """What of the SDK's internals this module uses is gone or changed shape, or None."""
    for name, parameters in OVERRIDDEN.items():
        method = getattr(AgentBase, name, None)
        if not callable(method):
            return f"AgentBase has no {name}(), which sdk_adapter.SdkAgent overrides"
        if tuple(inspect.signature(method).parameters)[1:] != parameters:
            return f"AgentBase.{name}() no longer takes ({', '.join(parameters)})"
    for name in (*CALLED, *CALLED_PUBLIC):
        if not callable(getattr(AgentBase, name, None)):
            return f"AgentBase has no {name}()"
    for name in ("create_tool_token", "validate_tool_token"):
        if not callable(getattr(SessionManager, name, None)):
            return f"SessionManager has no {name}()"
    if "secret_key" not in inspect.signature(SessionManager).parameters:
        return "SessionManager() takes no secret_key"
    for name in ("validate_args", "to_swaig"):
        if not callable(getattr(SWAIGFunction, name, None)):
            return f"SWAIGFunction has no {name}()"
    validate = getattr(webhook_middleware, "validate", None)
    if not callable(validate) or tuple(inspect.signature(validate).parameters) != SIGNATURE_CHECK:
        return f"webhook_middleware.validate() no longer takes ({', '.join(SIGNATURE_CHECK)})"
    return None


# -- the agent's base class ------------------------------------------------------------

SdkSwaig = Callable[[], Awaitable[SwaigAnswer]]


class SdkAgent(AgentBase):
    """`AgentBase`, with the SDK internals the agent relies on behind named methods.

    A subclass answers SWAIG requests in `answer_swaig` (calling ``sdk()`` for the SDK's
    own answer), admits function tokens in `token_admitted`, and adds query parameters
    to its functions' URLs in `webhook_query`; it never names an SDK internal itself.
    """

    # -- hooks for the subclass ---------------------------------------------------------

    async def answer_swaig(self, request: Request, sdk: SdkSwaig) -> SwaigAnswer:
        """The answer to a SWAIG request; ``sdk()`` is the SDK's own."""
        return await sdk()

    def token_admitted(self, function_name: str, token: str | None, call_id: str | None) -> bool:
        """Whether a function token the SDK's check would refuse is good anyway."""
        return False

    def webhook_query(self, endpoint: str) -> dict[str, str]:
        """Query parameters to add to the URL of ``endpoint`` (e.g. "swaig") in the SWML."""
        return {}

    # -- the SDK's private methods, overridden --------------------------------------------

    async def _handle_swaig_request(self, request: Request, response: Response) -> SwaigAnswer:
        sdk = functools.partial(super()._handle_swaig_request, request, response)
        return await self.answer_swaig(request, sdk)

    def _tool_token_rejection(
        self,
        function_name: str,
        token: str | None,
        call_id: str | None,
        conversation_id: str | None = None,
    ) -> dict[str, Any] | None:
        if self.token_admitted(function_name, token, call_id):
            return None
        # A token is honoured only for the call it was issued for. The SDK also takes one
        # issued for the body's `conversation_id` (its chat sessions, which this agent does
        # not serve): a token for call A would then run under any made-up call_id that names
        # A as its conversation, and each made-up call would get fresh per-call limits.
        return super()._tool_token_rejection(function_name, token, call_id)

    def _build_webhook_url(self, endpoint: str, query_params: dict[str, str] | None = None) -> str:
        extra = self.webhook_query(endpoint)
        if extra:
            query_params = {**(query_params or {}), **extra}
        return super()._build_webhook_url(endpoint, query_params)

    # -- function tokens ------------------------------------------------------------------
    # The SDK signs each call's function tokens with `_session_manager.secret_key` when it
    # renders the SWML, and checks them in `_tool_token_rejection` on every SWAIG request.

    def use_token_secret(self, secret: str) -> None:
        """Sign (and check) function tokens with ``secret`` from now on."""
        self._session_manager.secret_key = secret

    @property
    def token_secret(self) -> str:
        """The secret function tokens are signed with now."""
        secret: str = self._session_manager.secret_key
        return secret

    @property
    def token_lifetime(self) -> int:
        """Seconds a function token is good for."""
        seconds: int = self._session_manager.token_expiry_secs
        return seconds

    def create_token(self, function_name: str, subject: str) -> str:
        """A token for ``function_name`` and ``subject`` (a call id), signed with the current secret."""
        token: str = self._session_manager.create_tool_token(function_name, subject)
        return token

    @staticmethod
    def signed_with_any(function_name: str, token: str, subject: str, secrets: Iterable[str]) -> bool:
        """Whether ``token`` is good for ``function_name`` and ``subject`` under one of ``secrets``."""
        return any(
            SessionManager(secret_key=secret).validate_tool_token(function_name, token, subject)
            for secret in secrets
        )

    # -- SWAIG functions and requests ------------------------------------------------------

    def skip_sdk_argument_validation(self, names: Iterable[str]) -> None:
        """Turn off the SDK's argument check for these functions; their handlers validate.

        The SDK's own check validates nothing with the current jsonschema-rs and retries a
        failed import on every request; functions/ validates with pydantic instead.
        """
        for name in names:
            function = self._tool_registry.get_function(name)
            function.validate_args = _arguments_checked_by_handler  # type: ignore[union-attr,method-assign]

    def is_swaig_post(self, request: Request) -> bool:
        """A POST with the agent's credentials and a JSON content type, as the SDK requires."""
        return bool(
            request.method == "POST" and self._check_basic_auth(request) and self._check_content_type(request)
        )

    def own_functions(self) -> dict[str, SWAIGFunction]:
        """The functions this agent defines (not DataMap ones), by name."""
        return {tool.name: tool for tool in self.define_tools() if isinstance(tool, SWAIGFunction)}

    def read_proxy_from(self, request: Request) -> None:
        """Build URLs for the address ``request`` came through, as for the SWML
        (SWML_PROXY_URL_BASE, proxy headers)."""
        self._detect_proxy_from_request(request)

    def definition(self, function: SWAIGFunction, query: dict[str, str]) -> dict[str, Any]:
        """``function``'s SWAIG definition, its `web_hook_url` carrying ``query``."""
        definition: dict[str, Any] = function.to_swaig(base_url="")
        definition["web_hook_url"] = self._build_webhook_url("swaig", query)
        return definition


def _arguments_checked_by_handler(args: dict[str, Any]) -> tuple[bool, list[str]]:
    return True, []


# What the SDK answers for a body it cannot process (500: a JSON body that is not an object).
_UNREADABLE = {400, 413, 415, 422, 500}


def sdk_could_not_read(answer: SwaigAnswer) -> bool:
    """Whether ``answer`` is the SDK's refusal of a SWAIG body it could not read."""
    return isinstance(answer, Response) and answer.status_code in _UNREADABLE


def sdk_unauthorized() -> Response:
    """What the SDK's own routes answer without the right credentials."""
    # signalwire/core/mixins/web_mixin.py and swml_service.py
    return Response(
        json.dumps({"error": "Unauthorized"}),
        status_code=401,
        headers={"WWW-Authenticate": "Basic"},
        media_type="application/json",
    )


def signed_by_signalwire(signing_key: str, url: str, headers: Mapping[str, str], body: str) -> bool:
    """Whether a POST to ``url`` with ``body`` carries SignalWire's signature made with
    ``signing_key``; ``headers`` are looked up by lower-case name (Starlette's are).

    ``url`` is the one SignalWire called: the public URL, not the one the server saw
    behind a proxy. A signature has no timestamp: whoever acts on a signed request
    must make acting on it twice harmless.
    """
    return webhook_middleware.validate("POST", url, headers, body, signing_key=signing_key) is None


def basic_auth_credentials(agent: AgentBase) -> tuple[str, str]:
    """The agent's Basic auth user and password (the SDK returns a source beside them)."""
    user, password = agent.get_basic_auth_credentials()[:2]
    return user, password


# -- the SDK's app ------------------------------------------------------------------------

# What the SDK's middleware sets on every response (signalwire/core/mixins/web_mixin.py).
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "strict-origin-when-cross-origin"),
)
HSTS = "max-age=31536000; includeSubDomains"


class SecurityHeaders:
    """The SDK's security headers on every HTTP response, set by a plain ASGI middleware.

    The SDK adds the same headers with an ``@app.middleware("http")`` function, which
    Starlette runs through ``BaseHTTPMiddleware``: a task group and a memory stream per
    request, a cost that shows under load (bench/README.md). This one only rewrites the
    response's start message.
    """

    def __init__(self, app: ASGIApp, agent: AgentBase) -> None:
        self.app = app
        self.agent = agent

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Scope) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS:
                    headers[name] = value
                if ssl_enabled(self.agent):
                    headers["Strict-Transport-Security"] = HSTS
            await send(message)

        await self.app(scope, receive, send_with_headers)


def ssl_enabled(agent: AgentBase) -> bool:
    """The SDK's own test, per response, since SSL may be switched on after the app is built."""
    return bool(getattr(agent, "_ssl_enabled", False) or getattr(agent, "ssl_enabled", False))


def find_security_headers_middleware(app: FastAPI) -> int | None:
    """Where in ``app.user_middleware`` the SDK's `add_security_headers` function is, or None."""
    for index, middleware in enumerate(app.user_middleware):
        cls: object = middleware.cls
        dispatch_name = getattr(middleware.kwargs.get("dispatch"), "__name__", "")
        if cls is BaseHTTPMiddleware and dispatch_name == "add_security_headers":
            return index
    return None


def replace_security_headers_middleware(app: FastAPI, agent: AgentBase) -> None:
    """Put `SecurityHeaders` where the SDK's function middleware was, in the same place."""
    index = find_security_headers_middleware(app)
    if index is None:
        raise SdkMismatch("the SDK's security headers middleware was not found; check sdk_adapter.py")
    app.user_middleware[index] = Middleware(SecurityHeaders, agent=agent)


def use_lifespan(app: FastAPI, lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]]) -> None:
    """Run ``lifespan`` around the app's life; the SDK's app has none of its own to keep."""
    app.router.lifespan_context = lifespan


def add_innermost_middleware(app: FastAPI, middleware: Middleware) -> None:
    """Run ``middleware`` after every other (CORS, security headers), right before the routes."""
    app.user_middleware.append(middleware)


def remove_route(app: FastAPI, path: str) -> None:
    """Drop the SDK's routes at ``path`` (e.g. its `/ready`, to serve our own)."""
    app.router.routes[:] = [route for route in app.router.routes if getattr(route, "path", None) != path]


# What the SDK's catch-all route (`handle_all_routes`, web_mixin.py `_dispatch_unmatched`)
# serves below the agent's route "/"; for any other path it answers HTTP 200
# {"error": "Path not found"}, which a client cannot tell from an answer.
SDK_CATCH_ALL_PATHS = frozenset({"", "swaig", "post_prompt", "check_for_input", "debug", "debug_events"})
CATCH_ALL_ENDPOINT = "handle_all_routes"
_ANY_METHOD = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def catch_all_routes(app: FastAPI) -> list[APIRoute]:
    """The SDK's catch-all routes in ``app`` (GET and POST of one path)."""
    return [
        route
        for route in app.router.routes
        if isinstance(route, APIRoute) and route.endpoint.__name__ == CATCH_ALL_ENDPOINT
    ]


def answer_unknown_paths_with_404(app: FastAPI, agent: AgentBase) -> None:
    """Wrap the SDK's catch-all routes: a path it serves goes on; any other gets our 404,
    whatever the method (the routes now take every method, so none falls to a bare 405)."""
    catch_alls = catch_all_routes(app)
    if not catch_alls:
        raise SdkMismatch("the SDK's catch-all route was not found; check sdk_adapter.py")
    callbacks = {path.strip("/") for path in getattr(agent, "_routing_callbacks", None) or {}}
    served = SDK_CATCH_ALL_PATHS | callbacks
    # GET and POST are two routes of one path: a method either takes is served by that one.
    methods = frozenset(method for route in catch_alls for method in route.methods or ())
    for route in catch_alls:
        route.app = _only_paths(route.app, served, methods)
    catch_alls[-1].methods = set(_ANY_METHOD)


def _only_paths(app: ASGIApp, served: frozenset[str], methods: frozenset[str]) -> ASGIApp:
    async def serve_or_refuse(scope: Scope, receive: Any, send: Any) -> None:
        if str(scope["path"]).strip("/") not in served:
            response = error_response(404, "not_found", "There is nothing at this path.")
        elif scope["method"] not in methods:
            allowed = {"Allow": ", ".join(sorted(methods))}
            message = "This path does not take that method."
            response = error_response(405, "method_not_allowed", message, allowed)
        else:
            await app(scope, receive, send)
            return
        await response(scope, receive, send)

    return serve_or_refuse

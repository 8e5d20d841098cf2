"""The one door to the SDK's internals: everything here leans on `signalwire-sdk` beyond
its documented API, and nothing else in the project does.

The agent (`agent.py`) uses the SDK's public API (`define_tool`, `prompt_add_section`,
contexts, `mount`, `get_app`) directly, and reaches what follows only through this
module:

- `SdkAgent`, the agent's base class, overrides four of `AgentBase`'s private methods:
  `_handle_swaig_request` (every SWAIG request, so the agent may answer first),
  `_tool_token_rejection` (the function-token check, so a token the agent admits
  passes, and only for its own call), `_build_webhook_url` (query parameters the
  agent adds to its functions' URLs) and `_render_swml` (the document kept per set of
  URLs, `SwmlTemplates`, built on `_request_proxy_url` and `_proxy_url_base`). It signs
  function tokens through `_session_manager` (a `SessionManager`: `secret_key`, `create_tool_token`,
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
- The hot path (docs/architecture.md): `DirectRoutes` serves the POSTs that the SDK's
  `handle_root_post` and `handle_swaig_post` routes take, calling what they call
  (`_handle_root_request`, `_handle_swaig_request`) after their signature check
  (`_webhook_signature_check`); `SdkAgent.answer_swml` answers a SWML fetch like an
  earlier one without `_handle_root_request` (after `_check_basic_auth`,
  `_check_content_type`, `_read_body_with_limit`); `SdkAgent._sdk_swaig` answers a SWAIG
  POST as `SWMLService._handle_swaig_request` does, with its parts
  (`_swaig_configures_per_call`, `_swaig_handler_is_async`, `on_function_call`,
  `FunctionResult`, `run_sync_handler`, `SessionManager.create_session`).
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

import base64
import binascii
import contextlib
import functools
import importlib.metadata
import inspect
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, unquote_plus

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from signalwire import AgentBase
from signalwire.core import _sync_handlers
from signalwire.core.function_result import FunctionResult
from signalwire.core.mixins import web_mixin
from signalwire.core.security import webhook_middleware
from signalwire.core.security.session_manager import SessionManager
from signalwire.core.swaig_function import SWAIGFunction
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute

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
    "_render_swml": ("call_id", "modifications"),
}
# The methods of AgentBase this module calls, or relies on (the catch-all route calls `_dispatch_unmatched`),
# with the parameters (after self) it calls them with.
CALLED = {
    "_detect_proxy_from_request": ("request",),
    "_check_basic_auth": ("request",),
    "_check_content_type": ("request",),
    "_dispatch_unmatched": ("request", "full_path"),
    "_handle_root_request": ("request",),
    "_read_body_with_limit": ("request",),
    "_webhook_signature_check": (),
    "_swaig_configures_per_call": (),
    "_swaig_handler_is_async": ("target", "function_name"),
    "on_function_call": ("name", "args", "raw_data"),
}
CALLED_PUBLIC = ("define_tools", "get_basic_auth_credentials", "get_app")
# The SDK's route endpoints the platform's requests reach (web_mixin.py `_register_routes`), which
# `DirectRoutes` serves without the router: the SWML fetch and a SWAIG function request.
SWML_ENDPOINT = "handle_root_post"
SWAIG_ENDPOINT = "handle_swaig_post"
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
    for name, parameters in CALLED.items():
        method = getattr(AgentBase, name, None)
        if not callable(method):
            return f"AgentBase has no {name}()"
        if tuple(inspect.signature(method).parameters)[1 : 1 + len(parameters)] != parameters:
            return f"AgentBase.{name}() no longer takes ({', '.join(parameters)})"
    for name in CALLED_PUBLIC:
        if not callable(getattr(AgentBase, name, None)):
            return f"AgentBase has no {name}()"
    for name in ("create_tool_token", "validate_tool_token", "create_session"):
        if not callable(getattr(SessionManager, name, None)):
            return f"SessionManager has no {name}()"
    if "secret_key" not in inspect.signature(SessionManager).parameters:
        return "SessionManager() takes no secret_key"
    for name in ("validate_args", "to_swaig"):
        if not callable(getattr(SWAIGFunction, name, None)):
            return f"SWAIGFunction has no {name}()"
    if not isinstance(getattr(web_mixin, "_request_proxy_url", None), ContextVar):
        return "web_mixin has no _request_proxy_url context variable"
    if not callable(getattr(_sync_handlers, "run_sync_handler", None)):
        return "_sync_handlers has no run_sync_handler()"
    if not callable(getattr(AgentBase, "on_swml_request", None)):
        return "AgentBase has no on_swml_request()"
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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._swml = SwmlTemplates()

    # -- the SDK's private methods, overridden --------------------------------------------

    async def _handle_swaig_request(self, request: Request, response: Response) -> SwaigAnswer:
        sdk = functools.partial(self._sdk_swaig, request, response)
        return await self.answer_swaig(request, sdk)

    def _render_swml(self, call_id: str | None = None, modifications: dict[str, Any] | None = None) -> str:
        # The document is the same for every call up to its function tokens: the SDK renders
        # it once per set of URLs (SwmlTemplates), and each call gets it with its own tokens.
        # Only for a call named by text, or by nothing (the SDK makes one up): the SDK mints
        # no token for an empty id, and writes others as they come.
        plain_call = call_id is None or (isinstance(call_id, str) and call_id != "")
        if modifications or self._dynamic_config_callback is not None or not plain_call:
            document: str = super()._render_swml(call_id, modifications)
            return document
        key = self._swml_key()
        _swml_rendered_for.set(key)
        template = self._swml.get(key)
        if template is None:
            document = super()._render_swml(call_id, modifications)
            self._swml.learn(key, document)
            return document
        return self._filled(template, call_id)

    def _filled(self, template: SwmlTemplate, call_id: str | None) -> str:
        """``template`` with fresh tokens for ``call_id`` (one made up without one, as the SDK does)."""
        subject = call_id if call_id is not None else self._session_manager.create_session()
        return template.fill([self.create_token(function, subject) for function in template.functions])

    async def answer_swml(self, request: Request) -> Response:
        """The SDK's answer to a POST for the SWML (`_handle_root_request`), without its work
        when a request like this one was answered before.

        "Like this one": the same address as the SDK reads it for the document's URLs
        (scheme, host, proxy headers), the same query parameters added to them, and the
        SDK's proxy state unchanged by answering it. Such a request gets the document the
        SDK rendered then, with tokens for its own call, once its credentials, content
        type and body have passed the SDK's checks. Any other request, and one whose body
        is not the platform's (not a JSON object, or a call id that is not text), is the
        SDK's to answer, which renders (and so learns) its document.
        """
        if self._dynamic_config_callback is not None or type(self).on_swml_request is not _ON_SWML_REQUEST:
            answer: Response = await self._handle_root_request(request)
            return answer
        key = self._swml_request_key(request)
        template = self._swml.for_request(key)
        if template is not None:
            filled = await self._swml_from(template, request)
            if filled is not None:
                return filled
        before = self._proxy_url_base
        rendered = _swml_rendered_for.set(None)
        try:
            answer = await self._handle_root_request(request)
            used = _swml_rendered_for.get()
        finally:
            _swml_rendered_for.reset(rendered)
        if used is not None and self._proxy_url_base == before and answer.status_code == 200:
            self._swml.remember(key, used)
        return answer

    def _swml_request_key(self, request: Request) -> tuple[Any, ...]:
        """What the SDK's answer to a SWML fetch depends on besides the call: see `answer_swml`."""
        scope = request.scope
        headers = tuple((name, value) for name, value in scope["headers"] if name in _ADDRESS_HEADERS)
        return (scope.get("scheme"), scope.get("server"), scope.get("root_path"), headers, *self._swml_key())

    async def _swml_from(self, template: SwmlTemplate, request: Request) -> Response | None:
        """``template`` filled for the request's call, if the request passes as the SDK
        would pass it; None for the SDK to answer."""
        if (
            request.method != "POST"
            or not self._check_basic_auth(request)
            or not self._check_content_type(request)
        ):
            return None
        try:
            raw = await self._read_body_with_limit(request)
            body = json.loads(raw) if raw else {}
        except Exception:  # too large, not JSON, nested too deep: the SDK answers it its way
            return None
        found, call_id = _swml_call_id(body)
        if not found:
            return None
        return Response(content=self._filled(template, call_id), media_type="application/json")

    def _swml_key(self) -> tuple[Any, ...]:
        """What a SWML document's URLs depend on, request by request: the proxy base the SDK
        read from this request or keeps from an earlier one, and the query parameters the
        subclass adds to each kind of URL in the document."""
        return (
            web_mixin._request_proxy_url.get(),
            self._proxy_url_base,
            *(tuple(self.webhook_query(endpoint).items()) for endpoint in _DOCUMENT_ENDPOINTS),
        )

    def forget_swml(self) -> None:
        """Render the SWML anew: call it after changing anything the document is made of."""
        self._swml.clear()

    def _tool_token_rejection(
        self,
        function_name: str,
        token: str | None,
        call_id: str | None,
        conversation_id: str | None = None,
    ) -> dict[str, Any] | None:
        if self.token_admitted(function_name, token, call_id):
            return None
        if (
            token
            and call_id is not None
            and self._session_manager.validate_tool_token(function_name, token, call_id)
        ):
            return None  # the SDK's verdict on a good token, without its logger bound and two debug lines
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

    async def _sdk_swaig(self, request: Request, response: Response) -> SwaigAnswer:
        """The SDK's answer to a SWAIG request, as `SWMLService._handle_swaig_request` gives it.

        A POST is answered here, step for step as the SDK does (credentials, content type,
        body, function name, arguments, the function token, the call), without what the
        SDK does besides on every request: a structlog logger bound and a dozen debug calls,
        and copies of the query and headers for a per-call configuration this agent does not
        have. Anything else (a GET, or an agent with per-call configuration) is the SDK's.
        tests/test_sdk_adapter.py holds the two to the same answers.
        """
        if request.method != "POST" or self._swaig_configures_per_call():
            answer: SwaigAnswer = await super()._handle_swaig_request(request, response)
            return answer
        try:
            if not self._check_basic_auth(request):
                return sdk_unauthorized()
            if not self._check_content_type(request):
                return _sdk_error(415, "Content-Type must be application/json")
            try:
                await self._read_body_with_limit(request)
            except ValueError:
                return _sdk_error(413, "Request body too large")
            try:
                body = await request.json()
            except Exception:  # any unreadable body is an empty one, as for the SDK
                body = {}
            function_name = body.get("function")
            if not function_name:
                return _sdk_error(400, "Missing function name")
            if not _FUNCTION_NAME.match(function_name):
                return _sdk_error(400, f"Invalid function name format: '{function_name}'")
            arguments = _sdk_arguments(body)
            call_id = body.get("call_id")
            query = request.query_params
            token = query.get("__token") or query.get("token")
            conversation_id = _conversation_id(body)
            extra = {"conversation_id": conversation_id} if conversation_id else {}
            rejection = self._tool_token_rejection(function_name, token, call_id, **extra)
            if rejection is not None:
                return rejection
            try:
                if self._swaig_handler_is_async(self, function_name):
                    result = self.on_function_call(function_name, arguments, body)
                else:
                    result = await _sync_handlers.run_sync_handler(
                        self.on_function_call, function_name, arguments, body
                    )
                if inspect.isawaitable(result):
                    result = await result
                if isinstance(result, FunctionResult):
                    answered: dict[str, Any] = result.to_dict()
                    return answered
                if isinstance(result, dict):
                    return result
                return {"response": str(result)}
            except Exception as error:  # the SDK answers a failed function so
                return {"error": str(error), "function": function_name}
        except Exception:  # e.g. a body that is JSON but no object: the SDK's 500
            return _sdk_error(500, "Internal server error")


def _arguments_checked_by_handler(args: dict[str, Any]) -> tuple[bool, list[str]]:
    return True, []


# The key of the SWML document `_render_swml` gave in this request (see `answer_swml`).
_swml_rendered_for: ContextVar[tuple[Any, ...] | None] = ContextVar("_swml_rendered_for", default=None)
# The headers the SDK reads for the address its URLs are built on (web_mixin.py `_handle_root_request`,
# swml_service.py `_detect_proxy_from_primitives`), X-Forwarded-For aside (it only logs it).
_ADDRESS_HEADERS = frozenset(
    {b"host", b"x-forwarded-host", b"x-forwarded-proto", b"forwarded", b"x-original-host"}
)
_ON_SWML_REQUEST = AgentBase.on_swml_request


def _swml_call_id(body: Any) -> tuple[bool, str | None]:
    """(True, the call id) where the SDK's SWML fetch finds it in ``body`` (`call_id`, else
    `call.call_id`; None when neither is there), or (False, None) for a body it would
    answer otherwise (not an object, `call` not an object, a call id that is not text)."""
    if not isinstance(body, dict):
        return False, None
    call_id = body.get("call_id")
    if not call_id and "call" in body:
        call = body["call"]
        if not isinstance(call, dict):
            return False, None
        call_id = call.get("call_id")
    if call_id is None:
        return True, None
    if isinstance(call_id, str) and call_id:
        return True, call_id
    return False, None


# The SDK's rule for a function name in a SWAIG request (swml_service.py).
_FUNCTION_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _sdk_arguments(body: dict[str, Any]) -> Any:
    """A SWAIG request's arguments, where the SDK looks for them: ``argument.parsed[0]``,
    else ``argument.raw`` as JSON, else a flat ``arguments`` object."""
    arguments: Any = {}
    argument = body.get("argument")
    if "argument" in body and isinstance(argument, dict):
        parsed = argument.get("parsed")
        if "parsed" in argument and isinstance(parsed, list) and parsed:
            arguments = parsed[0]
        elif argument.get("raw"):
            # The SDK logs raw arguments it cannot read and goes on without arguments.
            with contextlib.suppress(Exception):
                arguments = json.loads(argument["raw"])
    elif "arguments" in body and isinstance(body["arguments"], dict):
        arguments = body["arguments"]
    return arguments if isinstance(arguments, dict) else {}


def _conversation_id(body: dict[str, Any]) -> str | None:
    value = body.get("conversation_id")
    return value if isinstance(value, str) and value else None


def _sdk_error(status: int, message: str) -> Response:
    """An error as the SDK's SWAIG handler writes it."""
    return Response(json.dumps({"error": message}), status_code=status, media_type="application/json")


# -- the SWML document, rendered once per set of URLs --------------------------------------

# The kinds of URL the SDK writes into a SWML document (functions, post-prompt, debug events).
_DOCUMENT_ENDPOINTS = ("swaig", "post_prompt", "debug_events")
# A function token in a URL of the document: base64url, its padding URL-encoded.
_TOKEN_IN_URL = re.compile(r"__token=([A-Za-z0-9_-]+(?:%3D)*)")
# Documents kept: one per set of URLs (a proxy base, an agent id), and there are few.
MAX_SWML_TEMPLATES = 64


@dataclass(frozen=True)
class SwmlTemplate:
    """A SWML document the SDK rendered, cut where its function tokens go.

    ``pieces`` is the document's text around the tokens, one more than ``functions``,
    the function each token is for, in order.
    """

    pieces: tuple[str, ...]
    functions: tuple[str, ...]

    def fill(self, tokens: Sequence[str]) -> str:
        """The document with ``tokens`` (one per function, in order) where the SDK puts them."""
        parts = [self.pieces[0]]
        for token, piece in zip(tokens, self.pieces[1:], strict=True):
            parts.append(quote_plus(token))  # as urlencode() writes it into the URL
            parts.append(piece)
        return "".join(parts)

    @classmethod
    def cut(cls, document: str) -> SwmlTemplate | None:
        """The template of a document the SDK rendered, or None when it cannot be cut safely:
        no token, a token that is not the SDK's, tokens for more than one call, the call's
        id anywhere else in the document, or a template that does not give the document back."""
        pieces: list[str] = []
        functions: list[str] = []
        tokens: list[str] = []
        calls: set[str] = set()
        start = 0
        for match in _TOKEN_IN_URL.finditer(document):
            token = unquote_plus(match.group(1))
            named = _token_names(token)
            if named is None:
                return None
            calls.add(named[0])
            functions.append(named[1])
            tokens.append(token)
            pieces.append(document[start : match.start(1)])
            start = match.end(1)
        pieces.append(document[start:])
        if len(calls) != 1:
            return None
        (call_id,) = calls
        template = cls(tuple(pieces), tuple(functions))
        spellings = {call_id, json.dumps(call_id)[1:-1], quote_plus(call_id)}
        if any(spelling in piece for piece in pieces for spelling in spellings):
            return None
        return template if template.fill(tokens) == document else None


def _token_names(token: str) -> tuple[str, str] | None:
    """(call id, function) of an SDK function token (SessionManager.generate_token), or None."""
    try:
        decoded = base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    parts = decoded.rsplit(".", 4)  # the call id may hold dots; the other four never do
    if len(parts) != 5 or not parts[0] or not parts[1]:
        return None
    return parts[0], parts[1]


class SwmlTemplates:
    """The SWML documents rendered so far, by what their URLs depend on (`SdkAgent._swml_key`).

    The SDK builds the whole document for every call (prompt, steps, functions, each
    function's URL and token: the largest part of a call's cost in the SDK). Everything
    but the tokens is the same for every call with the same URLs, so the first document
    rendered for a set of URLs is kept, cut where its tokens are, and each later call
    gets it with tokens of its own. The document is the SDK's own: `SwmlTemplate.cut`
    refuses to keep one it cannot give back exactly.
    """

    def __init__(self, limit: int = MAX_SWML_TEMPLATES) -> None:
        self.limit = limit
        self._templates: dict[tuple[Any, ...], SwmlTemplate] = {}
        self._by_request: dict[tuple[Any, ...], tuple[Any, ...]] = {}

    def get(self, key: tuple[Any, ...]) -> SwmlTemplate | None:
        return self._templates.get(key)

    def for_request(self, request_key: tuple[Any, ...]) -> SwmlTemplate | None:
        """The document a request like this one was answered with (`SdkAgent.answer_swml`)."""
        key = self._by_request.get(request_key)
        return None if key is None else self._templates.get(key)

    def remember(self, request_key: tuple[Any, ...], key: tuple[Any, ...]) -> None:
        """Requests like this one are answered with the document kept for ``key``."""
        if key not in self._templates:
            return
        if len(self._by_request) >= self.limit:
            self._by_request.pop(next(iter(self._by_request)))
        self._by_request[request_key] = key

    def learn(self, key: tuple[Any, ...], document: str) -> None:
        """Keep ``document`` for ``key`` if it can be cut (else the next call tries again)."""
        template = SwmlTemplate.cut(document)
        if template is None:
            return
        if len(self._templates) >= self.limit:
            self._templates.pop(next(iter(self._templates)))  # the oldest
        self._templates[key] = template

    def clear(self) -> None:
        self._templates.clear()
        self._by_request.clear()

    def __len__(self) -> int:
        return len(self._templates)


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
                set_security_headers(message, hsts=ssl_enabled(self.agent))
            await send(message)

        await self.app(scope, receive, send_with_headers)


_RAW_SECURITY_HEADERS = [(name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS]
_RAW_HSTS = (b"strict-transport-security", HSTS.encode())
_SECURITY_HEADER_NAMES = frozenset(name for name, _ in [*_RAW_SECURITY_HEADERS, _RAW_HSTS])


def set_security_headers(message: Scope, *, hsts: bool) -> None:
    """Set the SDK's headers on a response's start message, as ``response.headers[name] = value``
    would: a header of that name already there is replaced in place, any other is appended.

    Our responses never carry one already, so they are appended as raw pairs, without
    building Starlette's ``MutableHeaders`` (a sixth of a request's path, by py-spy).
    """
    headers = list(message.get("headers", ()))
    if any(name.lower() in _SECURITY_HEADER_NAMES for name, _ in headers):
        mutable = MutableHeaders(raw=headers)
        for name, value in SECURITY_HEADERS:
            mutable[name] = value
        if hsts:
            mutable["Strict-Transport-Security"] = HSTS
        message["headers"] = mutable.raw
        return
    headers += _RAW_SECURITY_HEADERS
    if hsts:
        headers.append(_RAW_HSTS)
    message["headers"] = headers


def ssl_enabled(agent: AgentBase) -> bool:
    """The SDK's own test, per response, since SSL may be switched on after the app is built."""
    return bool(_plain_attribute(agent, "_ssl_enabled") or _plain_attribute(agent, "ssl_enabled"))


def _plain_attribute(agent: AgentBase, name: str) -> Any:
    """``getattr(agent, name, False)`` without the SDK's ``__getattr__``, which builds a SWML
    verb method for a name it does not find (SWMLService) before giving up: on every
    response for ``_ssl_enabled``, which nothing sets."""
    found = vars(agent).get(name, _MISSING)
    return getattr(type(agent), name, False) if found is _MISSING else found


_MISSING = object()


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


class DirectRoutes:
    """The platform's two requests served without Starlette's router and FastAPI's
    request handling: the SWML fetch and a SWAIG function request.

    A POST to a path the SDK's SWML route (`handle_root_post`) or SWAIG route
    (`handle_swaig_post`) serves goes straight to the handler that route calls,
    after the signature check the route runs when the agent has a signing key. That
    skips, per request, matching the path against every route, FastAPI's dependency
    solving, and its per-request exit stacks and telemetry: work the two routes do not
    need. Every other request goes on to the app, and so does one whose signature
    fails, so the SDK's route refuses it in its own words. It is the innermost
    middleware (`add_innermost_middleware`): credentials before the body, the body cap,
    CORS and the security headers still apply to it.
    """

    def __init__(self, app: ASGIApp, agent: SdkAgent) -> None:
        self.app = app
        self.agent = agent
        self.paths = direct_paths(agent)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        endpoint = None
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self.paths.get(scope["path"])
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            body = await request.body()
        except ClientDisconnect:
            return  # the client left in the middle of its body: nobody to answer
        if not await _signature_passes(self.agent, request):
            await self.app(scope, _replay(body, receive), send)
            return
        if endpoint == SWML_ENDPOINT:
            answer: SwaigAnswer = await self.agent.answer_swml(request)
        else:
            answer = await self.agent._handle_swaig_request(request, Response())
        response = answer if isinstance(answer, Response) else JSONResponse(answer)
        await response(scope, receive, send)


def direct_paths(agent: AgentBase) -> dict[str, str]:
    """The paths `DirectRoutes` serves, each with the SDK endpoint whose route serves it there:
    the agent's route (the SWML) and its `swaig` endpoint, with and without the slash."""
    prefix = agent.route.rstrip("/")
    swaig = {f"{prefix}/swaig": SWAIG_ENDPOINT, f"{prefix}/swaig/": SWAIG_ENDPOINT}
    return {f"{prefix}/": SWML_ENDPOINT, **swaig}


def sdk_post_endpoints(routes: Iterable[BaseRoute]) -> set[str]:
    """The names of the endpoints that take a POST among ``routes``, included routers too."""
    names: set[str] = set()
    for route in routes:
        if isinstance(route, APIRoute) and "POST" in (route.methods or ()):
            names.add(route.endpoint.__name__)
        included = getattr(route, "original_router", None)  # FastAPI keeps an included router whole
        if included is not None:
            names |= sdk_post_endpoints(included.routes)
    return names


def serve_directly(app: FastAPI, agent: SdkAgent) -> None:
    """Serve the platform's requests with `DirectRoutes`, innermost of the middleware.

    SdkMismatch when the SDK's SWML or SWAIG route is not in ``app``: then the paths
    `direct_paths` names may be served by something else.
    """
    if not {SWML_ENDPOINT, SWAIG_ENDPOINT} <= sdk_post_endpoints(app.router.routes):
        raise SdkMismatch("the SDK's SWML and SWAIG routes were not found; check sdk_adapter.py")
    add_innermost_middleware(app, Middleware(DirectRoutes, agent=agent))


async def _signature_passes(agent: AgentBase, request: Request) -> bool:
    """The SDK's webhook signature check (SIGNALWIRE_SIGNING_KEY), as its routes run it."""
    check = agent._webhook_signature_check()
    if check is None:
        return True
    try:
        await check(request, Response())
    except HTTPException:
        return False
    return True


def _replay(body: bytes, receive: Any) -> Any:
    """``receive`` for the app: the body already read, then what comes next."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Any:
        return pending.pop() if pending else await receive()

    return replayed


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

#!/usr/bin/env python3
"""The phone-verification agent: `python agent.py` serves it.

This file wires things together and decides nothing itself:
- `conversation.py` is what the model sees and may do at each step,
- `functions/` turns each SWAIG request into a checked result,
- `engine/` makes every decision, keeps every record and publishes every event,
- `api/` and `web/` are the HTTP API, the live events and the dashboard.

`python agent.py --help` lists the settings; `--check` checks them and the store.
"""

# ruff: noqa: E402 - the Python version is checked before anything that needs a newer one is imported.
from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import logging
import os
import re
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any
from urllib.parse import parse_qs

REQUIRED_PYTHON = (3, 11)
if sys.version_info < REQUIRED_PYTHON:
    raise SystemExit(
        f"The agent needs Python {REQUIRED_PYTHON[0]}.{REQUIRED_PYTHON[1]} or newer; "
        f"this is Python {sys.version.split()[0]}."
    )

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Match

# The module, not its names: `swaig-test` serves any agent class it finds in this file's namespace.
import sdk_adapter
from api import build_api_router
from api.delivery_status import MAX_REPORT_BYTES, build_delivery_router
from config import Settings, config_errors
from config.logs import announce, configure_logging
from config.settings import AGENT_ID
from conversation import configure_conversation
from engine.delivery.signalwire_messaging import STATUS_CALLBACK_PATH
from engine.discoveries import bind_to_call
from engine.errors import StoreUnavailable
from engine.providers import PROVIDERS, reports_delivery
from engine.runtime import NotStarted, Runtime
from functions import STORE_DOWN, MfaFunctions
from functions.includes import (
    CALL_ID,
    DISCOVERY_ID,
    INCLUDE_PARAM,
    Discovery,
    chosen,
    discovery_subject,
    new_discovery_id,
    parse_discovery,
)
from languages import LANGUAGES, Texts
from server import RequestEdge, SignedRoute, uvicorn_config
from server.auth import BasicAuth, unauthorized_response
from server.context import request_agent_id, request_from_include
from server.errors import body_too_large_response, not_signed_response
from web import build_live_router

log = logging.getLogger("mfa")

# Both functions share one meta_data scope: send_mfa writes `mfa`, verify_mfa reads it.
META_DATA_TOKEN = "mfa_verification"  # noqa: S105 - a scope name, not a secret
UNREADABLE_REQUEST = (
    "Nothing was done: the request could not be read. "
    "Apologize and say verification is not available right now."
)

# Set while a request runs whose token a discovery admitted for its call: (function, token, call).
_admitted_by_discovery: ContextVar[tuple[str, str, str] | None] = ContextVar(
    "_admitted_by_discovery", default=None
)

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class MfaAgent(sdk_adapter.SdkAgent):
    """A voice agent that verifies the caller's phone with a one-time code."""

    def __init__(self, settings: Settings | None = None, *, runtime: Runtime | None = None) -> None:
        sdk_adapter.check_sdk()
        # No arguments is how `swaig-test agent.py` builds it: settings from the environment.
        self.settings = settings or Settings()
        self.runtime = runtime or Runtime(self.settings)
        # Passed explicitly so a `.env` file counts too (the SDK reads only the process environment).
        password = self.settings.swml_basic_auth_password
        self.generated_password = password is None
        basic_auth = (
            self.settings.swml_basic_auth_user or "signalwire",
            password.get_secret_value() if password else secrets.token_urlsafe(18),
        )
        # The Signing Key too: with it the SDK refuses SWML and function requests SignalWire did not sign.
        signing_key = self.settings.signalwire_signing_key
        super().__init__(
            name="mfa",
            route="/",
            host=self.settings.host,
            port=self.settings.port,
            basic_auth=basic_auth,
            suppress_logs=True,
            signing_key=signing_key.get_secret_value() if signing_key else None,
        )
        # Function tokens are signed with the key ring's secret, the same on every instance.
        self.runtime.keys.on_change(lambda keys: self.use_token_secret(keys.swaig_secret))
        texts = LANGUAGES[self.settings.mfa_language]
        person = self.settings.mfa_transfer_to is not None
        self._register_functions(MfaFunctions(self.runtime), texts, person=person)
        # After the functions, so the steps can name them.
        configure_conversation(self, texts, person=person)
        # functions/ validates the arguments with pydantic; the SDK's own check does nothing useful.
        self.skip_sdk_argument_validation(
            ["send_mfa", "verify_mfa", *(["transfer_to_person"] if person else [])]
        )

    def _register_functions(self, functions: MfaFunctions, texts: Texts, *, person: bool) -> None:
        self.define_tool(
            name="send_mfa",
            description=(
                "Send a one-time verification code to the caller's phone, by text message unless they "
                "ask for a phone call. Use it when the caller agrees to verify, or asks for a new code."
            ),
            parameters={
                "phone_number": {
                    "type": "string",
                    "description": "Leave empty to use the number the caller is calling from. Only pass a "
                    "number the caller gave, with its country code.",
                },
                "channel": {
                    "type": "string",
                    "enum": ["sms", "call"],
                    "description": "'sms' (default) to text the code, 'call' to have it read out in a call.",
                },
            },
            handler=functions.send_mfa,
            secure=True,
            fillers={texts.code: list(texts.fillers_send)},
            meta_data_token=META_DATA_TOKEN,
        )
        self.define_tool(
            name="verify_mfa",
            description=(
                "Check the code the caller read back. Pass exactly what they said; digit words are fine. "
                "Only this function can verify the caller."
            ),
            parameters={
                "token": {
                    "type": "string",
                    "description": "The code as the caller said or typed it, e.g. '482913', 'four eight "
                    "two nine one three' or '482913#'.",
                },
            },
            handler=functions.verify_mfa,
            required=["token"],
            secure=True,
            fillers={texts.code: list(texts.fillers_verify)},
            meta_data_token=META_DATA_TOKEN,
        )
        if person:
            self.define_tool(
                name="transfer_to_person",
                description=(
                    "Connect the caller to a person. Use it when the caller asks for a person, or when "
                    "verification is locked and they want help."
                ),
                parameters={},
                handler=functions.transfer_to_person,
                secure=True,
                fillers={texts.code: list(texts.fillers_transfer)},
                meta_data_token=META_DATA_TOKEN,
            )

    async def answer_swaig(self, request: Request, sdk: sdk_adapter.SdkSwaig) -> sdk_adapter.SwaigAnswer:
        # The SDK answers a body it cannot read with 4xx or 500; the platform must always get
        # HTTP 200 with something the model can say (401 stays 401), and a 5xx would only
        # make it send the same unreadable body again.
        answer = await self._swaig_with_includes(request, sdk)
        if sdk_adapter.sdk_could_not_read(answer):
            status = answer.status_code if isinstance(answer, Response) else None
            log.warning("unreadable SWAIG request answered with a spoken refusal (%s)", status)
            return {"response": UNREADABLE_REQUEST}
        return answer

    # -- function tokens ------------------------------------------------------------------
    # The SDK signs each call's function tokens when it renders the SWML and checks them on
    # every SWAIG request (sdk_adapter.py); the key ring's secret signs them.

    def token_admitted(self, function_name: str, token: str | None, call_id: str | None) -> bool:
        if _admitted_by_discovery.get() == (function_name, token, call_id):
            return True  # a token naming its discovery, which serves this call (_admit_by_discovery)
        # A token signed with the secret this instance used before it adopted the store's
        # (engine/keys.py) is still good for a while: a call in progress keeps its SWML's URLs.
        return bool(
            token
            and call_id
            and self.signed_with_any(
                function_name, token, call_id, self.runtime.keys.previous_swaig_secrets()
            )
        )

    def webhook_query(self, endpoint: str) -> dict[str, str]:
        # A call whose SWML was fetched with ?agent_id=X keeps reporting under X.
        agent_id = request_agent_id.get()
        return {"agent_id": agent_id} if endpoint == "swaig" and agent_id else {}

    # -- SWAIG includes -----------------------------------------------------------------------
    # Other agents include send_mfa and verify_mfa (`SWAIG.includes`); functions/includes.py
    # says what they get. The SDK answers no discovery (a body without `function` gets its
    # 400), so these methods answer it with the SDK's own parts: each function's definition,
    # function tokens, and URLs built as for our SWML (SWML_PROXY_URL_BASE, proxy headers).
    # And they admit a request whose token names its discovery, before the SDK's token check.

    async def _swaig_with_includes(
        self, request: Request, sdk: sdk_adapter.SdkSwaig
    ) -> sdk_adapter.SwaigAnswer:
        """The SDK's answer to a SWAIG request, after includes had their turn."""
        if not self.is_swaig_post(request):
            return await sdk()
        body = await _json_object(request)  # kept by the request: the SDK reads it again for free
        discovery = parse_discovery(body)
        if discovery is not None:
            return self._definitions(request, discovery)
        discovery_id = request.query_params.get(INCLUDE_PARAM)
        if discovery_id is None:
            return await sdk()
        try:
            admitted = await self._admit_by_discovery(request, body, discovery_id)
        except (StoreUnavailable, NotStarted):
            return STORE_DOWN.to_result().to_dict()
        marked = request_from_include.set(True)
        passed = _admitted_by_discovery.set(admitted)
        try:
            return await sdk()
        finally:
            _admitted_by_discovery.reset(passed)
            request_from_include.reset(marked)

    def _definitions(self, request: Request, discovery: Discovery) -> Response:
        """What a discovery gets: our definitions, each URL with a token for its call or itself."""
        self.read_proxy_from(request)
        ours = self.own_functions()
        discovery_id = new_discovery_id()
        subject = discovery.call_id or discovery_subject(discovery_id)
        # The include's agent id, else the URL's own (?agent_id=), else AGENT_ID.
        agent_id = request_agent_id.set(discovery.agent_id or request_agent_id.get())
        try:
            definitions = [
                self.definition(
                    ours[name], {INCLUDE_PARAM: discovery_id, "__token": self.create_token(name, subject)}
                )
                for name in chosen(discovery, list(ours))
            ]
        finally:
            request_agent_id.reset(agent_id)
        log.info(
            "discovery %s from an include: %s, %s",
            discovery_id,
            ", ".join(definition["function"] for definition in definitions) or "no functions of ours",
            f"for call {discovery.call_id}" if discovery.call_id else "for the first call that uses it",
        )
        return JSONResponse(definitions)

    async def _admit_by_discovery(
        self, request: Request, body: dict[str, Any] | None, discovery_id: str
    ) -> tuple[str, str, str] | None:
        """(function, token, call) when the request's token names its discovery and the discovery
        serves this call (the first call to use it, engine/discoveries.py); else None, and the
        SDK's check decides (a token for the call itself passes it)."""
        function, call_id = (body or {}).get("function"), (body or {}).get("call_id")
        token = request.query_params.get("__token") or request.query_params.get("token")
        if not (
            isinstance(function, str)
            and isinstance(call_id, str)
            and CALL_ID.match(call_id)
            and token
            and DISCOVERY_ID.match(discovery_id)
            and self._signed_by_us(function, token, discovery_subject(discovery_id))
        ):
            return None
        if not await bind_to_call(self.runtime.store, discovery_id, call_id, ttl=self.token_lifetime):
            log.warning("discovery %s serves another call; refused it for call %s", discovery_id, call_id)
            return None
        return function, token, call_id

    def _signed_by_us(self, function: str, token: str, subject: str) -> bool:
        """Whether ``token`` is ours for ``function`` and ``subject``, under the current secret or
        one the key ring still accepts."""
        secrets_in_use = (self.token_secret, *self.runtime.keys.previous_swaig_secrets())
        return self.signed_with_any(function, token, subject, secrets_in_use)


async def _json_object(request: Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # not JSON, not UTF-8, absurdly deep: the SDK's to answer
        return None
    return body if isinstance(body, dict) else None


class AgentIdFromQuery:
    """Reads a valid `agent_id` query parameter into the request's context (see AGENT_ID)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and b"agent_id=" in scope.get("query_string", b""):
            values = parse_qs(scope["query_string"].decode("latin-1")).get("agent_id", [])
            if values and AGENT_ID.match(values[0]):
                token = request_agent_id.set(values[0])
                try:
                    await self.app(scope, receive, send)
                finally:
                    request_agent_id.reset(token)
                return
        await self.app(scope, receive, send)


class RouteRefusals:
    """The edge's refusals (`server.Refusals`) in the shape of the route asked for.

    The routes this project mounts answer in the API's error shape; every other path
    is the SDK's (its catch-all serves them) and keeps the SDK's 401. A SWAIG request
    over the cap still gets HTTP 200 and words the model can say, as every answer
    to the platform must.

    A plain class, not a dataclass: `swaig-test` loads this file without registering
    it as a module, and a dataclass needs its module registered.
    """

    def __init__(self, *, api_routes: tuple[BaseRoute, ...]) -> None:
        self.api_routes = api_routes  # every route this project mounts

    def unauthorized(self, scope: Scope) -> Response:
        return unauthorized_response() if self._is_api(scope) else sdk_adapter.sdk_unauthorized()

    def too_large(self, scope: Scope, limit: int) -> Response:
        if str(scope["path"]).strip("/") == "swaig":
            return JSONResponse({"response": UNREADABLE_REQUEST})
        return body_too_large_response(limit)

    def forbidden(self, scope: Scope) -> Response:
        return not_signed_response()

    def _is_api(self, scope: Scope) -> bool:
        # A partial match (the path with another method) is one of ours too.
        return any(route.matches(scope)[0] is not Match.NONE for route in self.api_routes)


def build_app(agent: MfaAgent) -> FastAPI:
    """The SDK's app with our lifespan, middleware and routes, behind the server's edge."""
    app = agent.get_app()
    runtime = agent.runtime
    sdk_adapter.replace_security_headers_middleware(app, agent)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.close()

    sdk_adapter.use_lifespan(app, lifespan)
    app.add_middleware(AgentIdFromQuery)
    auth = BasicAuth(*sdk_adapter.basic_auth_credentials(agent))
    # mount() keeps the SDK's catch-all route last, so these routes are reachable.
    sdk_adapter.remove_route(app, "/ready")
    routers = [
        readiness_router(runtime, auth),
        build_api_router(runtime, auth),
        build_live_router(runtime, auth),
    ]
    signed_routes = []
    settings = runtime.settings
    if reports_delivery(settings):
        # SignalWire's delivery reports: signed with the Signing Key instead of Basic credentials.
        assert settings.signalwire_signing_key is not None and settings.swml_proxy_url_base is not None
        signing_key = settings.signalwire_signing_key.get_secret_value()
        routers.append(
            build_delivery_router(
                runtime,
                public_url=settings.swml_proxy_url_base,
                signed=functools.partial(sdk_adapter.signed_by_signalwire, signing_key),
            )
        )
        signed_routes.append(
            SignedRoute(
                "POST",
                STATUS_CALLBACK_PATH,
                tuple(name.encode() for name in sdk_adapter.SIGNATURE_HEADERS),
                MAX_REPORT_BYTES,
            )
        )
    for router in routers:
        agent.mount(router)
    sdk_adapter.answer_unknown_paths_with_404(app, agent)
    # Innermost of the middleware: its answers still get the security headers (and CORS).
    max_body = runtime.settings.mfa_max_body_bytes
    api_routes = tuple(route for router in routers for route in router.routes)
    refusals = RouteRefusals(api_routes=api_routes)
    sdk_adapter.add_innermost_middleware(
        app,
        Middleware(
            RequestEdge,
            accepts=auth.accepts,
            max_body_bytes=max_body,
            refusals=refusals,
            signed_routes=signed_routes,
        ),
    )
    # The platform's requests (the SWML fetch, function requests) past the edge, without the router.
    sdk_adapter.serve_directly(app, agent)
    return app


def readiness_router(runtime: Runtime, auth: BasicAuth) -> APIRouter:
    """`/ready` is red while the store cannot be reached, and green again once it can.

    Behind credentials like every route but `/health`: it says which dependency is down.
    """
    router = APIRouter(dependencies=[Depends(auth)])

    @router.get("/ready")
    async def ready() -> Response:
        try:
            await runtime.store.ping()
        except (StoreUnavailable, NotStarted):
            return JSONResponse({"status": "not_ready", "store": "unavailable"}, status_code=503)
        breaker = runtime.engine.breaker.state
        return JSONResponse({"status": "ready", "store": "ok", "provider_circuit": breaker})

    return router


def load_settings() -> Settings:
    """Settings, or one line per wrong variable and exit status 2."""
    try:
        settings = Settings()
    except ValidationError as error:
        for line in config_errors(error):
            print(f"configuration error: {line}", file=sys.stderr)
        raise SystemExit(2) from None
    if settings.mfa_provider not in PROVIDERS:
        print(
            f"configuration error: MFA_PROVIDER: must be one of {', '.join(sorted(PROVIDERS))}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return settings


def _usage() -> argparse.ArgumentParser:
    variables = "\n".join(
        f"  {name.upper():38} {_default_of(field.default)}" for name, field in Settings.model_fields.items()
    )
    return argparse.ArgumentParser(
        prog="python agent.py",
        description="Serve the phone-verification agent: its SWML, its SWAIG functions (send_mfa, "
        "verify_mfa), the HTTP verification API and the live dashboard.",
        epilog="Configuration comes from environment variables (a .env file in the working folder is "
        "read too; .env.example lists them). Each, with its default:\n\n"
        f"{variables}\n\n"
        "What each one means, the SignalWire dashboard steps, the HTTP API and the security limits: "
        "README.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _default_of(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, list):
        return ",".join(value) or "(all)"
    return str(value)


def check(settings: Settings) -> int:
    """`--check`: the settings are valid (or we never got here) and the store answers."""
    where = re.sub(r"//[^/@]*@", "//", settings.mfa_store)  # a Redis password stays out of sight
    runtime = Runtime(settings)

    async def reach() -> None:
        try:
            await runtime.start()
            await runtime.store.ping()
        finally:
            await runtime.close()

    try:
        asyncio.run(reach())
    except StoreUnavailable as problem:
        announce(f"store: {where} cannot be used: {problem.message}", settings.log_format, problem=True)
        return 1
    announce(
        f"configuration: valid; store: {where} answers; codes by: {settings.mfa_provider}",
        settings.log_format,
    )
    return 0


def serve(argv: list[str] | None = None) -> None:
    """Read the settings, prepare the store and serve the agent until stopped.

    Not called `main`: `swaig-test` calls a module's `main()` and this one never returns.
    """
    arguments = _usage()
    arguments.add_argument(
        "--check",
        action="store_true",
        help="check the configuration and that the store can be reached, then exit (0: all good)",
    )
    options = arguments.parse_args(argv)
    settings = load_settings()
    if settings.swml_proxy_url_base:
        # The SDK reads it from the process environment only (its function URLs, its signature
        # check); one set in .env is handed to it there, so both build on the same public URL.
        os.environ.setdefault("SWML_PROXY_URL_BASE", settings.swml_proxy_url_base)
    configure_logging(settings.log_level, settings.log_format)
    sdk_adapter.check_sdk()
    if options.check:
        raise SystemExit(check(settings))
    if settings.log_level != "DEBUG":
        # The SDK logs two INFO lines per function request, a cost that shows under load (bench/).
        logging.getLogger("signalwire").setLevel(logging.WARNING)
    agent = MfaAgent(settings)
    app = build_app(agent)
    user, password = sdk_adapter.basic_auth_credentials(agent)
    say = settings.log_format
    announce(f"Phone verification agent listening on http://{settings.host}:{settings.port}/", say)
    if agent.generated_password:
        # Shown once so a developer can use it; configure SWML_BASIC_AUTH_PASSWORD for anything real.
        announce(f"Basic auth: {user}:{password} (generated; set SWML_BASIC_AUTH_PASSWORD to keep one)", say)
    else:
        announce(f"Basic auth user: {user} (password from SWML_BASIC_AUTH_PASSWORD)", say)

    config = uvicorn_config(app, settings)  # fails here, with the reason, on a uvicorn it does not know
    # Everything built so far (the SDK, the app and their modules) lives as long as
    # the process: keep it out of the garbage collector's full passes, which otherwise
    # stop the event loop for a long time under load. And collect the youngest
    # generation every 10,000 allocations instead of 700: a request's objects are
    # mostly freed by then, so they are not traced and promoted again and again
    # (less CPU per call for a little more memory; bench/README.md has the figures).
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 10)
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        raise SystemExit(3)  # uvicorn has said why (the port in use, the store at start-up)


if __name__ == "__main__":
    serve()

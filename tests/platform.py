"""Test harness: the agent served by the SDK's real app under uvicorn, and a stand-in
for the SignalWire platform that drives it the way the platform does.

`FakePlatform` fetches the SWML for a call, takes each function's
`web_hook_url` (credentials and per-call `__token` included) from it, posts
the SWAIG payload there, and carries `set_meta_data` forward into the next
request, as the platform does for functions sharing a `meta_data_token`.
For a host agent's SWML it asks each of its `SWAIG.includes` for the
definitions (`get_signature`) and takes the URLs from those instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvicorn
import yarl

from agent import MfaAgent, build_app
from config import Settings
from engine.codes import Message
from engine.models import Event
from engine.runtime import Runtime
from engine.verifications import CALL_RECORD
from server import uvicorn_config

USER = "tester"
PASSWORD = "correct-horse-battery-staple"


class FakeClock:
    """One clock for the agent (and the fake API), moved by the test instead of waiting."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings_for(tmp_path: Any, **overrides: Any) -> Settings:
    """Settings for a test agent: local files under ``tmp_path``, test credentials."""
    values: dict[str, Any] = {
        "swml_basic_auth_user": USER,
        "swml_basic_auth_password": PASSWORD,
        "mfa_store": f"sqlite:///{tmp_path}/mfa.sqlite3",
        "mfa_outbox": tmp_path / "outbox.jsonl",
        "port": free_port(),
        "host": "127.0.0.1",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def signalwire_settings(tmp_path: Any, port: int, **overrides: Any) -> Settings:
    """Settings for a test agent whose SignalWire is the fake API listening on ``port``."""
    values: dict[str, Any] = {
        "signalwire_project_id": "test-project",
        "signalwire_api_token": "test-token",
        "signalwire_space": f"127.0.0.1:{port}",
        "mfa_upstream_timeout": 1.0,
        **overrides,
    }
    return settings_for(tmp_path, **values)


async def call_is_verified(runtime: Runtime, call_id: str) -> bool:
    """Whether the store holds the call's verified record (what the engine keeps, not the model)."""
    record = await runtime.store.get_record(CALL_RECORD, call_id)
    return bool(record and record.get("verified"))


def record_events(runtime: Runtime) -> list[Event]:
    """Every event the runtime publishes from now on, in order."""
    seen: list[Event] = []

    async def capture(event: Event) -> None:
        seen.append(event)

    runtime.publisher.add_sink("test", capture)
    return seen


@dataclass
class RunningAgent:
    base_url: str
    agent: MfaAgent
    runtime: Runtime
    settings: Settings

    @property
    def auth(self) -> aiohttp.BasicAuth:
        return aiohttp.BasicAuth(USER, PASSWORD)


@contextlib.asynccontextmanager
async def serve_agent(
    settings: Settings, *, clock: Any = None, runtime: Runtime | None = None
) -> AsyncIterator[RunningAgent]:
    """The real app (SDK routes, our lifespan, the server's edge) served by uvicorn on a loopback port.

    ``runtime``: one built (not started) by the test, e.g. to watch its events from the start.
    """
    if runtime is None:
        runtime = Runtime(settings, clock=clock) if clock else Runtime(settings)
    agent = MfaAgent(settings, runtime=runtime)
    app = build_app(agent)
    # The server `python agent.py` runs (its protocols, limits and WebSocket cap), on the test's loop.
    async with serving(uvicorn.Server(uvicorn_config(app, settings))):
        yield RunningAgent(f"http://127.0.0.1:{settings.port}", agent, runtime, settings)


@contextlib.asynccontextmanager
async def serving(server: uvicorn.Server) -> AsyncIterator[None]:
    """``server`` on the test's loop, from the moment it listens until the block ends."""
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield
    finally:
        server.should_exit = True
        await task


def signalwire_signature(signing_key: str, url: str, body: bytes) -> str:
    """The signature SignalWire puts on a JSON request it POSTs (hex HMAC-SHA1 over the URL it
    called, without credentials, and the raw body)."""
    public = str(yarl.URL(url).with_user(None))
    return hmac.new(signing_key.encode(), public.encode() + body, hashlib.sha1).hexdigest()


@dataclass
class FakePlatform:
    """One call as the SignalWire platform would make it.

    With ``signing_key`` (the project's Signing Key) every request is signed as the
    platform signs it (`X-SignalWire-Signature`).
    """

    session: aiohttp.ClientSession
    base_url: str
    auth: aiohttp.BasicAuth
    caller_id_num: str = "+12025550143"
    call_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    swml_query: str = ""
    urls: dict[str, str] = field(default_factory=dict)
    meta_data: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    global_data: dict[str, Any] = field(default_factory=dict)
    signing_key: str | None = None

    def signed(self, url: str, body: bytes) -> dict[str, str]:
        """The headers of a JSON POST of ``body`` to ``url``, signed when there is a key."""
        headers = {"Content-Type": "application/json"}
        if self.signing_key is not None:
            headers["X-SignalWire-Signature"] = signalwire_signature(self.signing_key, url, body)
        return headers

    async def start_call(self) -> dict[str, Any]:
        """Fetch the SWML as the platform does when the call starts, and note the function URLs."""
        swml = await self.fetch_swml(f"{self.base_url}/{self.swml_query}", self.auth)
        self.note_urls(swml_ai(swml)["SWAIG"]["functions"])
        return swml

    async def start_hosted_call(
        self, host_url: str, host_auth: aiohttp.BasicAuth, *, name_the_call: bool = True
    ) -> list[dict[str, Any]]:
        """Start a call on a host agent: fetch its SWML, ask each of its includes for the
        definitions (naming this call, or not), and note their URLs. The definitions."""
        swml = await self.fetch_swml(host_url, host_auth)
        definitions = []
        for include in swml_ai(swml)["SWAIG"].get("includes", []):
            found = await self.discover(include, name_the_call=name_the_call)
            self.note_urls(found)
            definitions.extend(found)
        return definitions

    async def discover(self, include: dict[str, Any], *, name_the_call: bool = True) -> list[dict[str, Any]]:
        """The definitions an include's URL answers a `get_signature` with (credentials from the URL)."""
        body: dict[str, Any] = {
            "action": "get_signature",
            "functions": include["functions"],
            "meta_data": include.get("meta_data", {}),
            "version": "2.0",
            "content_type": "text/swaig",
            "content_disposition": "function signature request",
            "project_id": "test-project",
            "space_id": "test-space",
        }
        if name_the_call:
            body["call_id"] = self.call_id
        async with self.session.post(include["url"], json=body) as resp:
            assert resp.status == 200, await resp.text()
            definitions: list[dict[str, Any]] = await resp.json()
        return definitions

    async def fetch_swml(self, url: str, auth: aiohttp.BasicAuth) -> dict[str, Any]:
        call = {"call": {"call_id": self.call_id, "from": self.caller_id_num, "to": "+12025550100"}}
        body = json.dumps(call).encode()
        async with self.session.post(url, data=body, auth=auth, headers=self.signed(url, body)) as resp:
            assert resp.status == 200, await resp.text()
            swml: dict[str, Any] = await resp.json(content_type=None)
        return swml

    def note_urls(self, functions: list[dict[str, Any]]) -> None:
        for function in functions:
            if "web_hook_url" in function:
                self.urls[function["function"]] = function["web_hook_url"]
                self.tokens[function["function"]] = function.get("meta_data_token", "")

    def payload(self, function: str, arguments: dict[str, Any]) -> dict[str, Any]:
        token = self.tokens.get(function, "")
        return {
            "function": function,
            "argument": {"parsed": [arguments], "raw": json.dumps(arguments)},
            "call_id": self.call_id,
            "ai_session_id": str(uuid.uuid4()),
            "caller_id_num": self.caller_id_num,
            "caller_id_name": "Test Caller",
            "meta_data_token": token,
            "meta_data": dict(self.meta_data.get(token, {})),
            "global_data": dict(self.global_data),
            "project_id": "test-project",
            "space_id": "test-space",
            "content_type": "text/swaig",
            "version": "2.0",
        }

    async def post(self, function: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST one SWAIG request to the function's URL; the platform insists on HTTP 200."""
        url, body = self.urls[function], json.dumps(payload).encode()
        async with self.session.post(url, data=body, headers=self.signed(url, body)) as resp:
            text = await resp.text()
            assert resp.status == 200, f"{resp.status}: {text}"
            result: dict[str, Any] = json.loads(text)
        return result

    async def call(self, function: str, **arguments: Any) -> dict[str, Any]:
        """Call a function and apply its actions the way the platform does."""
        result = await self.post(function, self.payload(function, arguments))
        self.apply(function, result)
        return result

    def apply(self, function: str, result: dict[str, Any]) -> None:
        token = self.tokens.get(function, "")
        for action in result.get("action", []):
            if "set_meta_data" in action:
                self.meta_data.setdefault(token, {}).update(action["set_meta_data"])
            if "set_global_data" in action:
                self.global_data.update(action["set_global_data"])


def swml_ai(swml: dict[str, Any]) -> dict[str, Any]:
    """The `ai` verb of an SWML document."""
    ai: dict[str, Any] = next(verb["ai"] for verb in swml["sections"]["main"] if "ai" in verb)
    return ai


def actions(result: dict[str, Any], name: str) -> list[Any]:
    return [action[name] for action in result.get("action", []) if name in action]


def user_events(result: dict[str, Any]) -> list[dict[str, Any]]:
    events = []
    for swml in actions(result, "SWML"):
        for verb in swml["sections"]["main"]:
            if "user_event" in verb:
                events.append(verb["user_event"]["event"])
    return events


def changed_step(result: dict[str, Any]) -> str | None:
    for action in result.get("action", []):
        if "change_step" in action:
            return str(action["change_step"])
        context = action.get("context_switch") or action.get("change_context")
        if context:
            return str(context)
    return None


def read_outbox(settings: Settings) -> list[dict[str, Any]]:
    path = settings.mfa_outbox
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class Delivered:
    """One message an in-process agent delivered, as its delivery got it: the code stays apart.

    ``via`` is the outbox file it was written to, or ``"signalwire"`` for SignalWire messaging.
    """

    via: Path | str
    to: str
    channel: str
    message: Message
    reference: str | None = None  # the verification it was sent for


# This test's messages, in the order they were delivered; kept by the spy in tests/conftest.py.
DELIVERED: list[Delivered] = []


def delivered_codes(settings: Settings) -> list[str]:
    """The codes of every message written to ``settings``' outbox in this test, oldest first."""
    outbox = settings.mfa_outbox.resolve()
    return [sent.message.code for sent in DELIVERED if sent.via == outbox]


def last_code(settings: Settings) -> str:
    """The code of the newest message written to ``settings``' outbox in this test."""
    return delivered_codes(settings)[-1]


def code_in_outbox_body(body: str) -> str:
    """The code in an outbox line's body, read as the README tells a developer to: its last word.

    Only for an agent in another process, whose deliveries the test cannot see
    (an agent in this process: `last_code`).
    """
    return body.rsplit(" ", 1)[-1]

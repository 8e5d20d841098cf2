"""The platform gets from our hot path exactly what the SDK would have sent, up to the tokens.

`sdk_adapter.py` serves the SWML fetch and the SWAIG requests without the SDK's router
(`DirectRoutes`), fills a document the SDK rendered once instead of rendering it per
call (`SwmlTemplates`), and answers SWAIG requests step for step as the SDK does
(`SdkAgent._sdk_swaig`). Here the same requests go to the agent as deployed and to
the same agent with the SDK doing all of it (its routes, its render, its SWAIG
handler), for several configurations; every answer must be the same bytes once each
function token (new for every call: an expiry, a nonce, a signature) is replaced by
the function and call it was issued for, after checking it is good for them.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlsplit

import pytest
from fastapi import FastAPI, Request, Response
from signalwire import AgentBase
from signalwire.core.security.session_manager import SessionManager

import sdk_adapter
from agent import MfaAgent, build_app
from config import Settings
from tests.platform import PASSWORD, USER, last_code, settings_for

SECRET = "wire-format-test-secret-0123456789"
CALL = "5bd0e2d4-8e1c-4b7a-9c55-2f1e9d3a7b10"
TOKEN_IN_URL = re.compile(r"__token=([A-Za-z0-9_-]+(?:%3D)*)")
DISCOVERY_ID = re.compile(r"[0-9a-f]{32}")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIME = re.compile(r'"at":"[0-9T:.-]+Z"')


class SdkOnly(MfaAgent):
    """The same agent with the SDK doing all of it: its render, its SWAIG handler (the app
    is built without `DirectRoutes`, so its routes serve every request)."""

    def _render_swml(self, call_id: str | None = None, modifications: dict[str, Any] | None = None) -> str:
        document: str = AgentBase._render_swml(self, call_id, modifications)
        return document

    async def _sdk_swaig(self, request: Request, response: Response) -> sdk_adapter.SwaigAnswer:
        answer: sdk_adapter.SwaigAnswer = await AgentBase._handle_swaig_request(self, request, response)
        return answer


def sdk_only_app(agent: SdkOnly) -> FastAPI:
    app = build_app(agent)
    app.user_middleware = [m for m in app.user_middleware if not _is_direct_routes(m.cls)]
    return app


def _is_direct_routes(cls: object) -> bool:
    return cls is sdk_adapter.DirectRoutes


class Wire:
    """One HTTP answer as the client reads it."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


async def http(
    app: Any,
    method: str,
    target: str,
    body: bytes = b"",
    headers: Iterable[tuple[str, str]] = (),
    auth: bool = True,
) -> Wire:
    """One request straight into ``app``'s ASGI interface, as uvicorn would hand it over."""
    path, _, query = target.partition("?")
    sent = [(name.lower(), value) for name, value in headers]
    if auth:
        sent.append(("authorization", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()))
    if body:
        sent.append(("content-length", str(len(body))))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote_plus(path),
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(name.encode(), value.encode()) for name, value in sent],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 3000),
    }
    messages: list[dict[str, Any]] = []
    given = False

    async def receive() -> dict[str, Any]:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)
    start = next(message for message in messages if message["type"] == "http.response.start")
    content = b"".join(
        message.get("body", b"") for message in messages if message["type"] == "http.response.body"
    )
    return Wire(start["status"], [(k.decode(), v.decode()) for k, v in start["headers"]], content)


def tokens_named(text: str) -> str:
    """``text`` with each function token replaced by what it is for, once it is shown good for that."""

    def named(match: re.Match[str]) -> str:
        token = unquote_plus(match.group(1))
        call_id, function = base64.urlsafe_b64decode(token).decode().rsplit(".", 4)[:2]
        assert SessionManager(secret_key=SECRET).validate_tool_token(function, token, call_id), token
        subject = DISCOVERY_ID.sub("<discovery>", call_id) if call_id.startswith("include/") else call_id
        return f"__token=<{function} for {UUID.sub('<id>', subject)}>"

    text = DISCOVERY_ID.sub("<discovery>", TOKEN_IN_URL.sub(named, text))
    # What the engine makes new for each verification and event.
    return TIME.sub('"at":"<time>"', UUID.sub("<id>", text))


def same_on_the_wire(ours: Wire, theirs: Wire, call_ids: Iterable[str] = (CALL,)) -> None:
    assert ours.status == theirs.status
    assert ours.headers == theirs.headers or _lengths_aside(ours.headers) == _lengths_aside(theirs.headers)
    ours_text, theirs_text = tokens_named(ours.body.decode()), tokens_named(theirs.body.decode())
    # A document fetched without a call id is made for one the SDK invents each time.
    for text in (ours_text, theirs_text):
        assert "__token=<" in text or "__token" not in text
    ours_text = _invented_calls_named(ours_text, call_ids)
    theirs_text = _invented_calls_named(theirs_text, call_ids)
    assert ours_text == theirs_text
    # With the tokens named, the bytes differ only where the tokens' lengths do: none at all.
    assert len(ours.body) == len(theirs.body) or "for <invented>" in ours_text


def _lengths_aside(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name, value) for name, value in headers if name != "content-length"]


def _invented_calls_named(text: str, known: Iterable[str]) -> str:
    keep = {UUID.sub("<id>", call_id) for call_id in known}
    return re.sub(
        r"for ([^>]+)>",
        lambda m: (
            m.group(0) if m.group(1) in keep or m.group(1).startswith("include/") else "for <invented>>"
        ),
        text,
    )


CONFIGURATIONS = {
    "English, no person, nothing after verification": {},
    "Spanish with a person to transfer to": {"mfa_language": "es-US", "mfa_transfer_to": "+15551230000"},
    "French, handed on to an https SWML after verification": {
        "mfa_language": "fr-FR",
        "mfa_on_verified": "https://next.example.com/swml",
    },
    "English, a SIP person and a number after verification": {
        "mfa_transfer_to": "sip:desk@example.com",
        "mfa_on_verified": "+15551239999",
    },
}
PROXY_BASES = {"no proxy base": None, "SWML_PROXY_URL_BASE": "https://mfa.example.com:8443"}


class Agents:
    """Our agent as deployed and the same with the SDK doing all of it, both started; and how
    many documents the SDK has rendered for ours."""

    def __init__(self, ours: MfaAgent, theirs: SdkOnly) -> None:
        self.ours, self.theirs = ours, theirs
        self.ours_app, self.theirs_app = build_app(ours), sdk_only_app(theirs)
        self.renders_for_ours = 0
        self.sdk_swml_answers_for_ours = 0
        self.settings: tuple[Settings, Settings] | None = None

    def __iter__(self) -> Iterator[FastAPI]:
        return iter((self.ours_app, self.theirs_app))


@asynccontextmanager
async def two_agents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proxy: str | None, **overrides: Any
) -> AsyncIterator[Agents]:
    if proxy:
        monkeypatch.setenv("SWML_PROXY_URL_BASE", proxy)
    else:
        monkeypatch.delenv("SWML_PROXY_URL_BASE", raising=False)
    settings = settings_for(tmp_path, signalwire_swaig_secret=SECRET, mfa_provider="local", **overrides)
    # Each on a store of its own, so neither answers a request from the other's first answer.
    (tmp_path / "sdk").mkdir()
    sdk_settings = settings_for(
        tmp_path / "sdk",
        signalwire_swaig_secret=SECRET,
        mfa_provider="local",
        port=settings.port,
        **overrides,
    )
    agents = Agents(MfaAgent(settings), SdkOnly(sdk_settings))
    agents.settings = (settings, sdk_settings)
    render = AgentBase._render_swml

    def counted(agent: AgentBase, *args: Any) -> str:
        agents.renders_for_ours += agent is agents.ours
        document: str = render(agent, *args)
        return document

    monkeypatch.setattr(AgentBase, "_render_swml", counted)
    root = AgentBase._handle_root_request

    async def answered(agent: AgentBase, request: Request) -> Response:
        agents.sdk_swml_answers_for_ours += agent is agents.ours
        answer: Response = await root(agent, request)
        return answer

    monkeypatch.setattr(AgentBase, "_handle_root_request", answered)
    async with AsyncExitStack() as running:
        for app in agents:
            await running.enter_async_context(app.router.lifespan_context(app))
        yield agents


def platform_swml_body(call_id: str | None = CALL) -> bytes:
    """What the platform posts to fetch a call's SWML."""
    call = {"call_id": call_id, "from": "+12025550123", "to": "+12025550100"} if call_id else {}
    return json.dumps({"call": call, "vars": {}}).encode()


JSON = ("content-type", "application/json")
SWML_REQUESTS = {
    "the platform's fetch": ("/", platform_swml_body(), [JSON]),
    "with the call id at the top": ("/", json.dumps({"call_id": CALL}).encode(), [JSON]),
    "with an agent id": ("/?agent_id=front-desk", platform_swml_body(), [JSON]),
    "without a call id": ("/", platform_swml_body(None), [JSON]),
    "without a body": ("/", b"", []),
    "through a proxy's headers": (
        "/",
        platform_swml_body(),
        [JSON, ("x-forwarded-host", "tunnel.example.net"), ("x-forwarded-proto", "https")],
    ),
    "through a host that is not this one": ("/", platform_swml_body(), [JSON, ("host", "mfa.internal:9000")]),
    "the platform's fetch again": ("/", platform_swml_body(), [JSON]),
}


@pytest.mark.parametrize("proxy", PROXY_BASES.values(), ids=list(PROXY_BASES))
@pytest.mark.parametrize("overrides", CONFIGURATIONS.values(), ids=list(CONFIGURATIONS))
async def test_the_swml_document_is_the_sdks_up_to_the_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proxy: str | None, overrides: dict[str, Any]
) -> None:
    async with two_agents(tmp_path, monkeypatch, proxy, **overrides) as agents:
        ours, theirs = agents
        for name, (target, body, headers) in SWML_REQUESTS.items():
            ours_answer = await http(ours, "POST", target, body, headers)
            theirs_answer = await http(theirs, "POST", target, body, headers)
            assert ours_answer.status == 200, name
            try:
                same_on_the_wire(ours_answer, theirs_answer)
            except AssertionError as difference:
                raise AssertionError(f"{name}: {difference}") from None
        # The SDK rendered ours once per set of URLs (its proxy base, the agent id), not per call.
        distinct_urls = 2 if proxy else 4
        assert agents.renders_for_ours == distinct_urls
        assert len(agents.ours._swml) == distinct_urls
        document = (await http(ours, "POST", "/", platform_swml_body(), [JSON])).body.decode()
        assert agents.renders_for_ours == distinct_urls
        # A request like one answered before is answered without the SDK's handler at all.
        answered_by_sdk = agents.sdk_swml_answers_for_ours
        again = await http(ours, "POST", "/", platform_swml_body(), [JSON])
        same_on_the_wire(again, await http(theirs, "POST", "/", platform_swml_body(), [JSON]))
        assert agents.sdk_swml_answers_for_ours == answered_by_sdk
        assert agents.sdk_swml_answers_for_ours < len(SWML_REQUESTS)
        if proxy:
            assert f"@{urlsplit(proxy).netloc}/swaig/?__token=" in document


def function_urls(document: Wire) -> dict[str, str]:
    ai = next(verb["ai"] for verb in document.json()["sections"]["main"] if "ai" in verb)
    return {function["function"]: function["web_hook_url"] for function in ai["SWAIG"]["functions"]}


def swaig_body(function: Any, arguments: Any = None, *, call_id: Any = CALL, **extra: Any) -> bytes:
    body: dict[str, Any] = {
        "function": function,
        "call_id": call_id,
        "caller_id_num": "+12025550123",
        **extra,
    }
    if arguments is not None:
        body["argument"] = {"parsed": [arguments], "raw": json.dumps(arguments)}
    return json.dumps(body).encode()


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


async def test_swaig_answers_are_the_sdks_for_every_kind_of_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_agents(tmp_path, monkeypatch, None, mfa_transfer_to="+15551230000") as agents:
        ours, theirs = agents
        urls = []
        for app in (ours, theirs):
            urls.append(
                function_urls(await http(app, "POST", "/?agent_id=front-desk", platform_swml_body(), [JSON]))
            )
        verify = [path_of(found["verify_mfa"]) for found in urls]
        send = [path_of(found["send_mfa"]) for found in urls]
        requests: dict[str, tuple[list[str], bytes, list[tuple[str, str]]]] = {
            "a check before any code was sent": (
                verify,
                swaig_body("verify_mfa", {"token": "123456"}),
                [JSON],
            ),
            "the same again (answered from the first)": (
                verify,
                swaig_body("verify_mfa", {"token": "123456"}),
                [JSON],
            ),
            "arguments as raw JSON only": (
                verify,
                json.dumps(
                    {"function": "verify_mfa", "call_id": CALL, "argument": {"raw": '{"token": "99"}'}}
                ).encode(),
                [JSON],
            ),
            "arguments as a flat object": (
                verify,
                json.dumps(
                    {"function": "verify_mfa", "call_id": CALL, "arguments": {"token": "98"}}
                ).encode(),
                [JSON],
            ),
            "raw arguments that are not JSON": (
                verify,
                json.dumps(
                    {"function": "verify_mfa", "call_id": CALL, "argument": {"raw": "{nope"}}
                ).encode(),
                [JSON],
            ),
            "arguments that are not an object": (
                verify,
                swaig_body("verify_mfa", None, argument=[1]),
                [JSON],
            ),
            "a token for another function": (verify, swaig_body("send_mfa", {"channel": "sms"}), [JSON]),
            "another call's id": (send, swaig_body("send_mfa", {}, call_id="another-call"), [JSON]),
            "a call id that is not text": (send, swaig_body("send_mfa", {}, call_id=12), [JSON]),
            "no token": (["/swaig"] * 2, swaig_body("send_mfa", {}), [JSON]),
            "a wrong token": (["/swaig/?__token=bm9wZQ%3D%3D"] * 2, swaig_body("send_mfa", {}), [JSON]),
            "a token in `token`": (
                [path.replace("__token=", "token=") for path in send],
                swaig_body("send_mfa", {"channel": "sms", "phone_number": ""}),
                [JSON],
            ),
            "a function that does not exist": (send, swaig_body("no_such_function", {}), [JSON]),
            "a function name that is not one": (send, swaig_body("1 drop", {}), [JSON]),
            "a function name that is not text": (send, swaig_body(["send_mfa"], {}), [JSON]),
            "no function": (send, json.dumps({"call_id": CALL}).encode(), [JSON]),
            "not JSON": (send, b"{not json", [JSON]),
            "JSON but not an object": (send, b"[1, 2, 3]", [JSON]),
            "not UTF-8": (send, b'{"function": "\xff"}', [JSON]),
            "nested deeper than JSON can be read": (send, b"[" * 100_000 + b"]" * 100_000, [JSON]),
            "a text content type": (send, swaig_body("send_mfa", {}), [("content-type", "text/plain")]),
            "no content type": (send, swaig_body("transfer_to_person", {}), []),
            "a discovery": (
                ["/swaig/"] * 2,
                json.dumps({"action": "get_signature", "functions": ["verify_mfa", "send_mfa"]}).encode(),
                [JSON],
            ),
            "a discovery for a call, with an agent id": (
                ["/swaig"] * 2,
                json.dumps(
                    {"action": "get_signature", "call_id": CALL, "meta_data": {"agent_id": "host-desk"}}
                ).encode(),
                [JSON],
            ),
        }
        for name, (paths, body, headers) in requests.items():
            ours_answer = await http(ours, "POST", paths[0], body, headers)
            print(name, ours_answer.status, ours_answer.body[:150])
            theirs_answer = await http(theirs, "POST", paths[1], body, headers)
            try:
                same_on_the_wire(ours_answer, theirs_answer)
            except AssertionError as difference:
                raise AssertionError(f"{name}: {difference}") from None

        # An include's function request, through the URL its discovery gave out.
        discovery = json.dumps({"action": "get_signature", "call_id": "hosted-call-1"}).encode()
        answers = []
        for app in (ours, theirs):
            definitions = (await http(app, "POST", "/swaig", discovery, [JSON])).json()
            url = next(item["web_hook_url"] for item in definitions if item["function"] == "verify_mfa")
            answers.append(
                await http(
                    app,
                    "POST",
                    path_of(url),
                    swaig_body("verify_mfa", {"token": "1"}, call_id="hosted-call-1"),
                    [JSON],
                )
            )
        same_on_the_wire(answers[0], answers[1])


async def test_a_refused_request_is_refused_in_the_same_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_agents(tmp_path, monkeypatch, None) as agents:
        ours, theirs = agents
        for path in ("/", "/swaig", "/swaig/"):
            ours_answer = await http(ours, "POST", path, swaig_body("send_mfa", {}), [JSON], auth=False)
            theirs_answer = await http(theirs, "POST", path, swaig_body("send_mfa", {}), [JSON], auth=False)
            same_on_the_wire(ours_answer, theirs_answer)
            assert ours_answer.status == 401
        for method, path in (("GET", "/"), ("GET", "/swaig"), ("POST", "//swaig"), ("POST", "/swaig//")):
            same_on_the_wire(await http(ours, method, path), await http(theirs, method, path))
        # A fetch of the SWML with a body the platform would not send, after one it would.
        for app in agents:
            await http(app, "POST", "/", platform_swml_body(), [JSON])
        odd_bodies = {
            "not JSON": b"{nope",
            "a list": b"[1]",
            "call not an object": b'{"call": "x"}',
            "an empty call id": b'{"call_id": ""}',
            "a call id that is a number": b'{"call_id": 5}',
            "a call id that is an object": b'{"call": {"call_id": {"a": 1}}}',
            "nested deeper than JSON can be read": b"[" * 100_000 + b"]" * 100_000,
            "a top call id of zero, a nested one": b'{"call_id": 0, "call": {"call_id": "nested-call-0001"}}',
        }
        for name, body in odd_bodies.items():
            ours_answer = await http(ours, "POST", "/", body, [JSON])
            theirs_answer = await http(theirs, "POST", "/", body, [JSON])
            try:
                same_on_the_wire(ours_answer, theirs_answer, ["5", "nested-call-0001", "{'a': 1}"])
            except AssertionError as difference:
                raise AssertionError(f"{name}: {difference}") from None
        text = ("content-type", "text/plain")
        same_on_the_wire(
            await http(ours, "POST", "/", platform_swml_body(), [text]),
            await http(theirs, "POST", "/", platform_swml_body(), [text]),
        )


async def test_a_whole_call_is_answered_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with two_agents(tmp_path, monkeypatch, None, mfa_on_verified="+15551239999") as agents:
        assert agents.settings is not None
        urls = [
            function_urls(await http(app, "POST", "/?agent_id=front-desk", platform_swml_body(), [JSON]))
            for app in agents
        ]
        meta_data: list[dict[str, Any]] = [{}, {}]

        async def step(function: str, arguments: list[dict[str, Any]]) -> Wire:
            """The same step of the call on both agents (each with its own code); ours's answer."""
            answers = []
            for index, app in enumerate(agents):
                body = swaig_body(function, arguments[index], meta_data=meta_data[index])
                answer = await http(app, "POST", path_of(urls[index][function]), body, [JSON])
                for action in answer.json().get("action", []):
                    meta_data[index] = {**meta_data[index], **action.get("set_meta_data", {})}
                answers.append(answer)
            same_on_the_wire(answers[0], answers[1])
            return answers[0]

        assert "was sent" in (await step("send_mfa", [{"channel": "sms"}] * 2)).json()["response"]
        codes = [last_code(settings) for settings in agents.settings]
        wrong = [{"token": code[:-1] + ("1" if code[-1] != "1" else "2")} for code in codes]
        assert "not correct" in (await step("verify_mfa", wrong)).json()["response"]
        verified = await step("verify_mfa", [{"token": code} for code in codes])
        assert "connect" in verified.body.decode()  # handed on to MFA_ON_VERIFIED


async def test_with_a_signing_key_only_signed_requests_are_served_as_by_the_sdk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from signalwire.core.security.webhook_validator import _hex_hmac_sha1

    monkeypatch.setenv("SIGNALWIRE_SIGNING_KEY", "PSK_wire_format_signing_key")

    def signed(target: str, body: bytes) -> tuple[str, str]:
        url = f"http://127.0.0.1:3000{target}"  # as the agent sees it (no proxy here)
        return ("x-signalwire-signature", _hex_hmac_sha1("PSK_wire_format_signing_key", url + body.decode()))

    async with two_agents(tmp_path, monkeypatch, None) as agents:
        swml = platform_swml_body()
        for headers, status in (([JSON], 403), ([JSON, ("x-signalwire-signature", "0" * 40)], 403)):
            for target in ("/", "/swaig", "/swaig/"):
                answers = [await http(app, "POST", target, swml, headers) for app in agents]
                same_on_the_wire(answers[0], answers[1])
                assert answers[0].status == status, target
        answers = [await http(app, "POST", "/", swml, [JSON, signed("/", swml)]) for app in agents]
        same_on_the_wire(answers[0], answers[1])
        assert answers[0].status == 200
        urls = [path_of(function_urls(answer)["verify_mfa"]) for answer in answers]
        body = swaig_body("verify_mfa", {"token": "123456"})
        checked = [
            await http(app, "POST", url, body, [JSON, signed(url, body)])
            for app, url in zip(agents, urls, strict=True)
        ]
        same_on_the_wire(checked[0], checked[1])
        assert "No code has been sent" in checked[0].json()["response"]

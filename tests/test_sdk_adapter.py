"""The SDK internals `sdk_adapter.py` leans on are still there, and still behave as it relies on.

One test per internal: each fails if the SDK changes it underneath, so a new SDK release
is tried here before `sdk_adapter.CHECKED_SDK_VERSIONS` is widened to take it. They
drive a fresh `AgentBase` (or a bare `SdkAgent`), not the verification agent, so a
failure names the SDK and nothing of ours.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.metadata
import inspect
import json
import re
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from signalwire import AgentBase
from signalwire.core.function_result import FunctionResult
from signalwire.core.security import webhook_middleware
from signalwire.core.security.session_manager import SessionManager
from signalwire.core.swaig_function import SWAIGFunction
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

import sdk_adapter

AUTH = ("probe", "probe-password")
REFUSED = "the security token for this function is invalid or expired"


class Probe(sdk_adapter.SdkAgent):
    """The smallest agent on the adapter: one secure function, hooks set by each test."""

    def __init__(self) -> None:
        super().__init__(name="probe", route="/", basic_auth=AUTH, suppress_logs=True)
        self.answer: dict[str, Any] | None = None
        self.admit = False
        self.query: dict[str, str] = {}
        self.define_tool(
            name="echo",
            description="Echo",
            parameters={"x": {"type": "string", "description": "anything"}},
            handler=self._echo,
            secure=True,
        )

    async def _echo(self, args: dict[str, Any], raw_data: dict[str, Any]) -> FunctionResult:
        return FunctionResult("ran")

    async def answer_swaig(self, request: Request, sdk: sdk_adapter.SdkSwaig) -> sdk_adapter.SwaigAnswer:
        return self.answer if self.answer is not None else await sdk()

    def token_admitted(self, function_name: str, token: str | None, call_id: str | None) -> bool:
        return self.admit

    def webhook_query(self, endpoint: str) -> dict[str, str]:
        return self.query if endpoint == "swaig" else {}


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


def _auth_header(auth: tuple[str, str] = AUTH) -> tuple[str, str]:
    return ("authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())


def _scope(method: str, path: str, headers: Iterable[tuple[str, str]], query: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers],
        "client": ("127.0.0.1", 40000),
        "server": ("agent.example", 3000),
    }


async def _request(
    app: Any,
    method: str,
    path: str,
    *,
    body: bytes = b"",
    headers: Iterable[tuple[str, str]] = (),
    query: str = "",
) -> Answer:
    """One HTTP request straight into an ASGI app."""
    messages: list[dict[str, Any]] = []
    done = asyncio.Event()
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    await app(_scope(method, path, headers, query), receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    received = {name.decode().lower(): value.decode() for name, value in start["headers"]}
    content = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return Answer(start["status"], received, content)


def _swaig_body(call_id: str = "call-1", **extra: Any) -> bytes:
    return json.dumps(
        {
            "function": "echo",
            "argument": {"parsed": [{"x": "1"}], "raw": '{"x": "1"}'},
            "call_id": call_id,
            **extra,
        }
    ).encode()


async def _swaig(app: Any, body: bytes, query: str = "") -> Answer:
    headers = [_auth_header(), ("content-type", "application/json")]
    return await _request(app, "POST", "/swaig", body=body, headers=headers, query=query)


async def _function_url(agent: AgentBase, call_id: str = "call-1") -> str:
    """The `web_hook_url` the SDK renders into the SWML for `echo`."""
    swml = json.loads(agent._render_swml(call_id))
    ai = next(verb["ai"] for verb in swml["sections"]["main"] if "ai" in verb)
    function = next(f for f in ai["SWAIG"]["functions"] if f["function"] == "echo")
    url: str = function["web_hook_url"]
    return url


def _params(method: Any) -> tuple[str, ...]:
    return tuple(inspect.signature(method).parameters)[1:]


# -- the version range ---------------------------------------------------------------------


def test_the_installed_sdk_is_one_the_adapter_was_checked_against() -> None:
    sdk_adapter.check_sdk()
    assert sdk_adapter.CHECKED_SDK_VERSIONS == ">=3.7.5,<3.8"
    assert importlib.metadata.version("signalwire-sdk") == sdk_adapter.installed_sdk_version()


def test_requirements_install_only_the_checked_range() -> None:
    requirements = (Path(__file__).parent.parent / "requirements.txt").read_text().splitlines()
    assert f"signalwire-sdk{sdk_adapter.CHECKED_SDK_VERSIONS}" in requirements


@pytest.mark.parametrize("version", ["3.8.0", "4.0.0", "3.7.4", "3.6.9", "3.7.5rc1", "unknown"])
def test_start_up_stops_with_one_line_on_an_sdk_outside_the_range(
    monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    monkeypatch.setattr(sdk_adapter, "installed_sdk_version", lambda: version)
    with pytest.raises(SystemExit) as stopped:
        sdk_adapter.check_sdk()
    line = str(stopped.value.code)
    assert "\n" not in line
    assert f"signalwire-sdk {version} is installed" in line
    assert ">=3.7.5,<3.8" in line


@pytest.mark.parametrize("version", ["3.7.5", "3.7.6", "3.7.10", "3.7.5.post1"])
def test_a_release_within_the_range_is_taken(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    monkeypatch.setattr(sdk_adapter, "installed_sdk_version", lambda: version)
    sdk_adapter.check_sdk()


def test_start_up_stops_with_one_line_without_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> str:
        raise importlib.metadata.PackageNotFoundError("signalwire-sdk")

    monkeypatch.setattr(sdk_adapter, "installed_sdk_version", missing)
    with pytest.raises(SystemExit, match=r"^sdk error: signalwire-sdk is not installed; .*>=3\.7\.5,<3\.8$"):
        sdk_adapter.check_sdk()


def test_start_up_stops_with_one_line_when_an_internal_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SessionManager, "create_tool_token", None)
    with pytest.raises(SystemExit) as stopped:
        sdk_adapter.check_sdk()
    assert str(stopped.value.code).count("\n") == 0
    assert "SessionManager has no create_tool_token()" in str(stopped.value.code)


def test_start_up_stops_when_an_overridden_method_changes_its_parameters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def changed(self: AgentBase, endpoint: str, query: dict[str, str], fragment: str) -> str:
        return ""

    monkeypatch.setattr(AgentBase, "_build_webhook_url", changed)
    changed_line = r"_build_webhook_url\(\) no longer takes \(endpoint, query_params\)"
    with pytest.raises(SystemExit, match=changed_line):
        sdk_adapter.check_sdk()


# -- the overridden methods --------------------------------------------------------------------


async def test_handle_swaig_request_is_where_the_sdk_answers_every_swaig_request() -> None:
    assert _params(AgentBase._handle_swaig_request) == ("request", "response")
    agent = Probe()
    app = agent.get_app()
    refused = await _swaig(app, _swaig_body(), query="__token=wrong")
    assert REFUSED in refused.json()["response"]
    agent.answer = {"response": "ours"}
    assert (await _swaig(app, _swaig_body())).json() == {"response": "ours"}
    # The catch-all's paths too (a doubled slash is not the router's).
    assert (await _request(app, "POST", "//swaig/", body=_swaig_body(), headers=[_auth_header()])).json() == {
        "response": "ours"
    }


async def test_tool_token_rejection_decides_every_function_call_and_takes_the_conversation_id() -> None:
    parameters = ("function_name", "token", "call_id", "conversation_id")
    assert _params(AgentBase._tool_token_rejection) == parameters
    agent = Probe()
    app = agent.get_app()
    token = agent.create_token("echo", "call-1")

    assert REFUSED in (await _swaig(app, _swaig_body())).json()["response"]
    assert (await _swaig(app, _swaig_body(), query=f"__token={token}")).json()["response"] == "ran"
    # The SDK takes a token for the conversation under another call id; the adapter does not.
    assert AgentBase._tool_token_rejection(agent, "echo", token, "call-2", "call-1") is None
    forged = _swaig_body(call_id="call-2", conversation_id="call-1")
    assert REFUSED in (await _swaig(app, forged, query=f"__token={token}")).json()["response"]
    # What the agent admits runs without the SDK's say.
    agent.admit = True
    assert (await _swaig(app, _swaig_body())).json()["response"] == "ran"


async def test_build_webhook_url_makes_the_function_urls_of_the_swml() -> None:
    assert _params(AgentBase._build_webhook_url) == ("endpoint", "query_params")
    agent = Probe()
    agent.query = {"agent_id": "front-desk"}
    url = await _function_url(agent)
    query = parse_qs(urlsplit(url).query)
    assert urlsplit(url).path.rstrip("/") == "/swaig"
    assert query["agent_id"] == ["front-desk"]
    assert "__token" in query
    assert "q=1" in agent._build_webhook_url("swaig", {"q": "1"})


# -- function tokens ----------------------------------------------------------------------------


async def test_session_manager_signs_the_swml_tokens_with_its_secret_key() -> None:
    assert "secret_key" in inspect.signature(SessionManager).parameters
    agent = Probe()
    agent.use_token_secret("first-secret")
    assert agent.token_secret == "first-secret"
    assert agent._session_manager.secret_key == "first-secret"
    token = parse_qs(urlsplit(await _function_url(agent)).query)["__token"][0]

    assert agent.signed_with_any("echo", token, "call-1", ["first-secret"])
    assert not agent.signed_with_any("echo", token, "call-1", ["another-secret"])
    assert not agent.signed_with_any("echo", token, "call-2", ["first-secret"])
    assert SessionManager(secret_key="first-secret").validate_tool_token("echo", token, "call-1")
    assert agent.signed_with_any("echo", agent.create_token("echo", "x"), "x", ["first-secret"])
    assert agent.token_lifetime == 3600  # AgentBase's token_expiry_secs default


# -- SWAIG functions and requests -------------------------------------------------------------


async def test_validate_args_is_what_the_sdk_calls_on_each_registered_function() -> None:
    agent = Probe()
    function = agent._tool_registry.get_function("echo")
    assert isinstance(function, SWAIGFunction)
    assert _params(SWAIGFunction.validate_args) == ("args",)
    called: list[dict[str, Any]] = []

    def recording(args: dict[str, Any]) -> tuple[bool, list[str]]:
        called.append(args)
        return True, []

    function.validate_args = recording  # type: ignore[method-assign]
    agent.admit = True
    assert (await _swaig(agent.get_app(), _swaig_body())).json()["response"] == "ran"
    assert called == [{"x": "1"}]

    agent.skip_sdk_argument_validation(["echo"])
    assert function.validate_args({"x": 5}) == (True, [])


def test_define_tools_and_to_swaig_give_each_function_its_definition() -> None:
    assert "base_url" in inspect.signature(SWAIGFunction.to_swaig).parameters
    agent = Probe()
    functions = agent.own_functions()
    assert list(functions) == ["echo"]
    definition = agent.definition(functions["echo"], {"include": "d1"})
    assert definition["function"] == "echo"
    assert definition["description"] == "Echo"
    assert definition["parameters"]["properties"] == {"x": {"type": "string", "description": "anything"}}
    assert urlsplit(definition["web_hook_url"]).path.rstrip("/") == "/swaig"
    assert parse_qs(urlsplit(definition["web_hook_url"]).query)["include"] == ["d1"]


def test_detect_proxy_from_request_builds_urls_for_the_address_the_request_came_through() -> None:
    agent = Probe()
    headers = [("host", "agent.internal:3000"), ("x-forwarded-host", "mfa.example.com")]
    request = Request(_scope("POST", "/swaig", [*headers, ("x-forwarded-proto", "https")], ""))
    agent.read_proxy_from(request)
    url = agent.definition(agent.own_functions()["echo"], {})["web_hook_url"]
    assert urlsplit(url).scheme == "https"
    assert urlsplit(url).hostname == "mfa.example.com"


def test_check_basic_auth_and_check_content_type_judge_a_swaig_post() -> None:
    agent = Probe()

    def post(*headers: tuple[str, str], method: str = "POST") -> Request:
        return Request(_scope(method, "/swaig", headers, ""))

    json_type = ("content-type", "application/json")
    assert agent.is_swaig_post(post(_auth_header(), json_type))
    assert agent.is_swaig_post(post(_auth_header()))  # no content type is taken as JSON
    assert not agent.is_swaig_post(post(_auth_header(("probe", "wrong")), json_type))
    assert not agent.is_swaig_post(post(json_type))
    assert not agent.is_swaig_post(post(_auth_header(), ("content-type", "text/plain")))
    assert not agent.is_swaig_post(post(_auth_header(), json_type, method="GET"))


def test_get_basic_auth_credentials_starts_with_the_user_and_password() -> None:
    agent = Probe()
    assert agent.get_basic_auth_credentials()[:2] == AUTH
    assert sdk_adapter.basic_auth_credentials(agent) == AUTH


async def test_the_sdk_answers_an_unreadable_swaig_body_with_a_status_the_adapter_knows() -> None:
    app = AgentBase(name="bare", basic_auth=AUTH, suppress_logs=True).get_app()
    for body in (b"not json", b"[1, 2]", b"{}"):
        answer = await _swaig(app, body)
        assert answer.status != 200, body
        assert sdk_adapter.sdk_could_not_read(sdk_adapter.Response(status_code=answer.status)), body


async def test_the_sdk_answers_401_as_sdk_unauthorized_does() -> None:
    app = AgentBase(name="bare", basic_auth=AUTH, suppress_logs=True).get_app()
    ours = sdk_adapter.sdk_unauthorized()
    for method, path in (("GET", "/"), ("POST", "/swaig"), ("POST", "//swaig/")):
        answer = await _request(app, method, path, headers=[_auth_header(("probe", "wrong"))])
        assert answer.status == ours.status_code == 401, path
        assert answer.body == ours.body, path
        assert answer.headers["www-authenticate"] == ours.headers["www-authenticate"], path
        assert answer.headers["content-type"] == ours.headers["content-type"], path


# -- the SDK's app ----------------------------------------------------------------------------


async def test_the_security_headers_middleware_is_found_and_replaced_by_the_same_headers() -> None:
    for ssl in (False, True):
        sdk_agent = AgentBase(name="bare", basic_auth=AUTH, suppress_logs=True)
        sdk_agent.ssl_enabled = ssl
        sdk_app = sdk_agent.get_app()
        assert sdk_adapter.find_security_headers_middleware(sdk_app) is not None
        theirs = (await _request(sdk_app, "GET", "/health")).headers

        agent = AgentBase(name="bare", basic_auth=AUTH, suppress_logs=True)
        app = agent.get_app()
        sdk_adapter.replace_security_headers_middleware(app, agent)
        assert sdk_adapter.find_security_headers_middleware(app) is None
        agent.ssl_enabled = ssl  # read per response, as the SDK's does
        ours = (await _request(app, "GET", "/health")).headers

        for name, value in sdk_adapter.SECURITY_HEADERS:
            assert theirs[name.lower()] == ours[name.lower()] == value
        assert theirs.get("strict-transport-security") == ours.get("strict-transport-security")
        assert ours.get("strict-transport-security") == (sdk_adapter.HSTS if ssl else None)


def test_ssl_enabled_is_the_attribute_the_sdk_reads() -> None:
    agent = AgentBase(name="bare", basic_auth=AUTH, suppress_logs=True)
    assert isinstance(agent.ssl_enabled, bool)
    assert not sdk_adapter.ssl_enabled(agent)
    agent.ssl_enabled = True
    assert sdk_adapter.ssl_enabled(agent)
    other = AgentBase(name="bare", basic_auth=AUTH, suppress_logs=True)
    other._ssl_enabled = True  # the other name the SDK's middleware reads
    assert sdk_adapter.ssl_enabled(other)
    # Nothing sets `_ssl_enabled`: reading it goes to the SDK's __getattr__, which the adapter skips.
    assert "_ssl_enabled" not in vars(agent) and not hasattr(type(agent), "_ssl_enabled")


async def test_the_catch_all_route_is_handle_all_routes_and_serves_exactly_the_listed_paths() -> None:
    agent = AgentBase(name="bare", basic_auth=AUTH, suppress_logs=True)
    app = agent.get_app()
    catch_alls = sdk_adapter.catch_all_routes(app)
    assert [route.path for route in catch_alls] == ["/{full_path:path}"] * 2
    assert app.router.routes[-len(catch_alls) :] == catch_alls
    assert {method for route in catch_alls for method in route.methods or ()} == {"GET", "POST"}
    # Every path _dispatch_unmatched serves, read from its source: the listed ones, no more.
    source = inspect.getsource(AgentBase._dispatch_unmatched)
    assert set(re.findall(r'clean_path == "([a-z_]+)"', source)) | {""} == sdk_adapter.SDK_CATCH_ALL_PATHS
    unknown = await _request(app, "GET", "/nothing-here", headers=[_auth_header()])
    assert (unknown.status, unknown.json()) == (200, {"error": "Path not found"})

    sdk_adapter.answer_unknown_paths_with_404(app, agent)
    unknown = await _request(app, "GET", "/nothing-here", headers=[_auth_header()])
    assert unknown.status == 404


async def test_routing_callbacks_are_served_by_the_catch_all() -> None:
    agent = AgentBase(name="bare", basic_auth=AUTH, suppress_logs=True)
    agent.register_routing_callback(lambda request, body: None, path="/sip")
    assert "/sip" in agent._routing_callbacks
    app = agent.get_app()
    sdk_adapter.answer_unknown_paths_with_404(app, agent)
    answer = await _request(app, "POST", "/sip/", body=b"{}", headers=[_auth_header()])
    assert answer.status == 200
    assert "sections" in answer.json()


async def test_the_app_is_built_after_get_app_so_routes_and_middleware_can_still_change() -> None:
    agent = AgentBase(name="bare", basic_auth=AUTH, suppress_logs=True)
    app = agent.get_app()
    assert any(getattr(route, "path", None) == "/ready" for route in app.router.routes)
    sdk_adapter.remove_route(app, "/ready")
    assert not any(getattr(route, "path", None) == "/ready" for route in app.router.routes)

    seen: list[str] = []

    class Innermost:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            seen.append(scope["path"])
            await self.app(scope, receive, send)

    sdk_adapter.add_innermost_middleware(app, Middleware(Innermost))
    assert app.user_middleware[-1].cls is Innermost
    answer = await _request(app, "GET", "/health")
    assert answer.status == 200
    assert seen == ["/health"]


async def test_the_sdk_app_has_no_lifespan_of_its_own_to_keep() -> None:
    app = AgentBase(name="bare", basic_auth=AUTH, suppress_logs=True).get_app()
    assert app.router.on_startup == [] and app.router.on_shutdown == []
    async with app.router.lifespan_context(app) as state:
        assert not state
    ran: list[str] = []

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        ran.append("start")
        yield
        ran.append("stop")

    sdk_adapter.use_lifespan(app, lifespan)
    async with app.router.lifespan_context(app):
        assert ran == ["start"]
    assert ran == ["start", "stop"]


# -- the hot path: what DirectRoutes, SwmlTemplates and _sdk_swaig lean on ------------------------


def _tokens_named(document: str) -> str:
    return sdk_adapter._TOKEN_IN_URL.sub("__token=<token>", document)


def test_render_swml_gives_a_document_that_differs_between_calls_only_in_its_tokens() -> None:
    assert _params(AgentBase._render_swml) == ("call_id", "modifications")
    agent = Probe()
    first = AgentBase._render_swml(agent, "3f1c0a52-call-one")
    second = AgentBase._render_swml(agent, "9b7e4d10-call-two")
    assert first != second
    assert _tokens_named(first) == _tokens_named(second)
    assert "call-one" not in _tokens_named(first)
    template = sdk_adapter.SwmlTemplate.cut(first)
    assert template is not None and template.functions == ("echo",)
    token = agent.create_token("echo", "another-call")
    filled = template.fill([token])
    assert _tokens_named(filled) == _tokens_named(first)
    assert parse_qs(urlsplit(_echo_url(filled)).query)["__token"] == [token]


def _echo_url(document: str) -> str:
    ai = next(verb["ai"] for verb in json.loads(document)["sections"]["main"] if "ai" in verb)
    url: str = next(f for f in ai["SWAIG"]["functions"] if f["function"] == "echo")["web_hook_url"]
    return url


def test_a_document_is_kept_only_when_it_can_be_given_back_exactly() -> None:
    agent = Probe()
    document = AgentBase._render_swml(agent, "3f1c0a52-call-one")
    assert sdk_adapter.SwmlTemplate.cut(document) is not None
    # No token; a token that is not the SDK's; the call's id outside its tokens; two calls.
    assert sdk_adapter.SwmlTemplate.cut(_tokens_named(document)) is None
    assert sdk_adapter.SwmlTemplate.cut(document.replace("__token=", "__token=x", 1)) is None
    assert sdk_adapter.SwmlTemplate.cut(document.replace('"Echo"', '"3f1c0a52-call-one"')) is None
    other = agent.create_token("echo", "another-call")
    two_calls = document.replace('"version"', f'"__token={other}", "version"', 1)
    assert sdk_adapter.SwmlTemplate.cut(two_calls) is None
    # A call whose id is common text is not learned from; the next one is.
    templates = sdk_adapter.SwmlTemplates()
    templates.learn(("k",), AgentBase._render_swml(agent, "e"))
    assert len(templates) == 0
    templates.learn(("k",), document)
    assert len(templates) == 1


def test_the_agent_renders_once_per_set_of_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    agent = Probe()
    renders: list[str | None] = []
    render = AgentBase._render_swml

    def counted(self: AgentBase, call_id: str | None = None, modifications: Any = None) -> str:
        renders.append(call_id)
        document: str = render(self, call_id, modifications)
        return document

    monkeypatch.setattr(AgentBase, "_render_swml", counted)
    documents = [agent._render_swml(f"call-{n:04d}-abcdef") for n in range(3)]
    assert renders == ["call-0000-abcdef"]
    for n, document in enumerate(documents):
        token = parse_qs(urlsplit(_echo_url(document)).query)["__token"][0]
        assert agent.signed_with_any("echo", token, f"call-{n:04d}-abcdef", [agent.token_secret])
    # Without a call id, one is made up for the document, as the SDK does.
    token = parse_qs(urlsplit(_echo_url(agent._render_swml(None))).query)["__token"][0]
    assert base64.urlsafe_b64decode(token).decode().split(".")[0]
    # Another agent id, another set of URLs: rendered by the SDK again.
    agent.query = {"agent_id": "front-desk"}
    assert "agent_id=front-desk" in _echo_url(agent._render_swml("call-0005-abcdef"))
    assert len(renders) == 2
    agent.forget_swml()
    agent._render_swml("call-0006-abcdef")
    assert len(renders) == 3


def test_the_request_proxy_url_is_what_the_sdk_builds_urls_on() -> None:
    from signalwire.core.mixins.web_mixin import _request_proxy_url

    agent = Probe()
    plain = agent._render_swml("call-0001-abcdef")
    token = _request_proxy_url.set("https://tunnel.example.net")
    try:
        proxied = agent._render_swml("call-0002-abcdef")
    finally:
        _request_proxy_url.reset(token)
    assert urlsplit(_echo_url(proxied)).hostname == "tunnel.example.net"
    assert urlsplit(_echo_url(plain)).hostname != "tunnel.example.net"
    assert len(agent._swml) == 2


async def test_the_sdk_routes_the_platforms_posts_to_handle_root_request_and_handle_swaig_request() -> None:
    for name in ("_handle_root_request", "_read_body_with_limit"):
        assert _params(getattr(AgentBase, name)) == ("request",)
    agent = Probe()
    app = agent.get_app()
    assert {sdk_adapter.SWML_ENDPOINT, sdk_adapter.SWAIG_ENDPOINT} <= sdk_adapter.sdk_post_endpoints(
        app.router.routes
    )
    reached: list[str] = []
    root, swaig = agent._handle_root_request, agent._handle_swaig_request

    async def recording_root(request: Request) -> Any:
        reached.append(f"root {request.url.path}")
        return await root(request)

    async def recording_swaig(request: Request, response: Any) -> Any:
        reached.append(f"swaig {request.url.path}")
        return await swaig(request, response)

    agent._handle_root_request = recording_root  # type: ignore[method-assign]
    agent._handle_swaig_request = recording_swaig  # type: ignore[method-assign]
    for path in sdk_adapter.direct_paths(agent):
        await _request(app, "POST", path, body=_swaig_body(), headers=[_auth_header()])
    assert reached == ["root /", "swaig /swaig", "swaig /swaig/"]


async def test_direct_routes_answer_as_the_sdks_routes_and_leave_everything_else_to_the_app() -> None:
    sdk_app = Probe().get_app()
    agent = Probe()
    app = agent.get_app()
    sdk_adapter.serve_directly(app, agent)
    token = agent.create_token("echo", "call-1")
    for method, path, query in (
        ("POST", "/", ""),
        ("POST", "/swaig", f"__token={token}"),
        ("POST", "/swaig/", "__token=wrong"),
        ("GET", "/", ""),
        ("POST", "//swaig", ""),
        ("GET", "/health", ""),
    ):
        headers = [_auth_header(), ("content-type", "application/json")]
        ours = await _request(app, method, path, body=_swaig_body(), headers=headers, query=query)
        theirs = await _request(sdk_app, method, path, body=_swaig_body(), headers=headers, query=query)
        assert (ours.status, ours.headers.keys()) == (theirs.status, theirs.headers.keys()), path
        if path != "/" and "__token" not in query:
            assert ours.body == theirs.body, path
    assert agent._swml, "the SWML fetch went through the agent's own render"


async def test_webhook_signature_check_is_none_without_a_signing_key_and_refuses_unsigned_posts() -> None:
    from signalwire.core.security.webhook_validator import _hex_hmac_sha1

    assert Probe()._webhook_signature_check() is None
    agent = Probe()
    agent.signing_key = "PSK_test_signing_key"
    agent.admit = True
    app = agent.get_app()
    sdk_adapter.serve_directly(app, agent)
    assert agent._webhook_signature_check() is not None
    for path in ("/", "/swaig", "/swaig/"):
        unsigned = await _request(app, "POST", path, body=_swaig_body(), headers=[_auth_header()])
        assert unsigned.status == 403, path
        wrong = ("x-signalwire-signature", "0" * 40)
        assert (
            await _request(app, "POST", path, body=_swaig_body(), headers=[_auth_header(), wrong])
        ).status == 403
        url = str(Request(_scope("POST", path, [], "")).url)
        signed = (
            "x-signalwire-signature",
            _hex_hmac_sha1("PSK_test_signing_key", url + _swaig_body().decode()),
        )
        answer = await _request(app, "POST", path, body=_swaig_body(), headers=[_auth_header(), signed])
        assert answer.status == 200, path


class Functions(sdk_adapter.SdkAgent):
    """Functions of every kind the SDK dispatches: async and plain, failing, answering None or text."""

    def __init__(self) -> None:
        super().__init__(name="functions", route="/", basic_auth=AUTH, suppress_logs=True)

        async def async_echo(args: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
            return {"response": json.dumps(args, sort_keys=True), "action": [{"say": "é"}]}

        def plain(args: dict[str, Any], raw: dict[str, Any]) -> FunctionResult:
            return FunctionResult("plain").add_action("set_global_data", {"a": 1})

        async def failing(args: dict[str, Any], raw: dict[str, Any]) -> Any:
            raise RuntimeError("boom")

        def failing_plain(args: dict[str, Any], raw: dict[str, Any]) -> Any:
            raise RuntimeError("plain boom")

        async def nothing(args: dict[str, Any], raw: dict[str, Any]) -> None:
            return None

        async def text(args: dict[str, Any], raw: dict[str, Any]) -> Any:
            return "neither a result nor a dict"

        for name, handler, secure in (
            ("async_echo", async_echo, True),
            ("plain", plain, True),
            ("failing", failing, False),
            ("failing_plain", failing_plain, False),
            ("nothing", nothing, False),
            ("text", text, False),
        ):
            self.define_tool(
                name=name,
                description=name,
                parameters={"x": {"type": "string", "description": "x"}},
                handler=handler,
                secure=secure,
            )


def _swaig_requests(agent: AgentBase) -> list[tuple[str, bytes, list[tuple[str, str]]]]:
    json_type = ("content-type", "application/json")
    good = f"__token={agent.create_token('async_echo', 'c1')}"

    def body(**fields: Any) -> bytes:
        return json.dumps(fields).encode()

    parsed = {"parsed": [{"x": "1"}], "raw": '{"x": "2"}'}
    return [
        (good, body(function="async_echo", call_id="c1", argument=parsed), [json_type]),
        (good, body(function="async_echo", call_id="c1", argument={"raw": '{"x": "2"}'}), [json_type]),
        (good, body(function="async_echo", call_id="c1", argument={"raw": "{bad"}), [json_type]),
        (
            good,
            body(function="async_echo", call_id="c1", argument={"parsed": [{"x": "a"}, {"x": "b"}]}),
            [json_type],
        ),
        (good, body(function="async_echo", call_id="c1", argument={"parsed": []}), [json_type]),
        (good, body(function="async_echo", call_id="c1", argument={"parsed": ["x"]}), [json_type]),
        (good, body(function="async_echo", call_id="c1", arguments={"x": "3"}), [json_type]),
        (good, body(function="async_echo", call_id="c1", argument="x", arguments={"x": "4"}), [json_type]),
        (good.replace("__token", "token"), body(function="async_echo", call_id="c1"), [json_type]),
        (good, body(function="async_echo", call_id="c2"), [json_type]),
        (good, body(function="async_echo", call_id="c2", conversation_id="c1"), [json_type]),
        (good, body(function="async_echo"), [json_type]),
        ("", body(function="async_echo", call_id="c1"), [json_type]),
        (f"__token={agent.create_token('plain', 'c1')}", body(function="plain", call_id="c1"), []),
        ("", body(function="failing", call_id="c1", argument=parsed), [json_type]),
        ("", body(function="failing_plain", call_id="c1"), [json_type]),
        ("", body(function="nothing", call_id="c1"), [json_type]),
        ("", body(function="text", call_id="c1"), [json_type]),
        ("", body(function="missing", call_id="c1"), [json_type]),
        ("", body(function="1bad", call_id="c1"), [json_type]),
        ("", body(function=7, call_id="c1"), [json_type]),
        ("", body(function="", call_id="c1"), [json_type]),
        ("", body(call_id="c1"), [json_type]),
        ("", b"[1]", [json_type]),
        ("", b"not json", [json_type]),
        ("", b"", [json_type]),
        ("", body(function="async_echo", call_id="c1"), [("content-type", "text/plain")]),
        (
            "",
            body(function="async_echo", call_id="c1"),
            [("content-type", "application/json; charset=utf-8")],
        ),
    ]


async def test_sdk_swaig_answers_every_swaig_post_as_the_sdks_handler_does() -> None:
    for name, parameters in (
        ("_swaig_configures_per_call", ()),
        ("_swaig_handler_is_async", ("target", "function_name")),
        ("on_function_call", ("name", "args", "raw_data")),
        ("_webhook_signature_check", ()),
    ):
        assert _params(getattr(AgentBase, name)) == parameters
    agent = Functions()
    for query, body, headers in [*_swaig_requests(agent), ("", b"{}", [])]:
        for credentials in (AUTH, ("functions", "wrong")):
            sent = [_auth_header(credentials), *headers]
            ours = await agent._sdk_swaig(
                Request(_scope("POST", "/swaig", sent, query), _body(body)), Response()
            )
            theirs = await AgentBase._handle_swaig_request(
                agent, Request(_scope("POST", "/swaig", sent, query), _body(body)), Response()
            )
            assert _as_wire(ours) == _as_wire(theirs), (query, body, headers, credentials)


async def test_sdk_swaig_leaves_a_per_call_configuration_to_the_sdk() -> None:
    agent = Functions()
    assert not agent._swaig_configures_per_call()
    configured: list[str] = []
    agent.add_per_call_config(lambda query, body, headers, copy: configured.append(str(body.get("call_id"))))
    assert agent._swaig_configures_per_call()
    request = Request(
        _scope("POST", "/swaig", [_auth_header()], ""),
        _body(json.dumps({"function": "nothing", "call_id": "c9"}).encode()),
    )
    answer = await agent._sdk_swaig(request, Response())
    assert _as_wire(answer)[1] == json.dumps(
        {"response": "Function executed successfully"}, separators=(",", ":")
    )
    assert configured == ["c9"]


async def test_read_body_with_limit_refuses_a_body_over_the_sdks_limit() -> None:
    agent = Functions()
    huge = b" " * (10 * 1024 * 1024 + 1)
    request = Request(_scope("POST", "/swaig", [_auth_header()], ""), _body(huge))
    with pytest.raises(ValueError, match="too large"):
        await agent._read_body_with_limit(request)
    answer = await agent._sdk_swaig(
        Request(_scope("POST", "/swaig", [_auth_header()], ""), _body(huge)), Response()
    )
    assert _as_wire(answer)[0] == 413


def _body(content: bytes) -> Any:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": content, "more_body": False}

    return receive


def _as_wire(answer: sdk_adapter.SwaigAnswer) -> tuple[int, str, dict[str, str]]:
    """(status, body, headers) as the route would send ``answer``."""
    response = answer if isinstance(answer, Response) else sdk_adapter.JSONResponse(answer)
    return response.status_code, bytes(response.body).decode(), dict(response.headers)


async def test_a_swml_fetch_like_one_answered_before_skips_the_sdks_handler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = Probe()
    app = agent.get_app()
    sdk_adapter.serve_directly(app, agent)
    answered: list[str] = []
    root = AgentBase._handle_root_request

    async def counted(self: AgentBase, request: Request) -> Any:
        answered.append(request.headers.get("host", ""))
        return await root(self, request)

    monkeypatch.setattr(AgentBase, "_handle_root_request", counted)

    async def fetch(call_id: str, *headers: tuple[str, str]) -> str:
        body = json.dumps({"call": {"call_id": call_id}}).encode()
        answer = await _request(app, "POST", "/", body=body, headers=[_auth_header(), *headers])
        assert answer.status == 200
        return _echo_url(answer.body.decode())

    for n in range(3):
        url = await fetch(f"call-{n:04d}-abcdef")
        token = parse_qs(urlsplit(url).query)["__token"][0]
        assert agent.signed_with_any("echo", token, f"call-{n:04d}-abcdef", [agent.token_secret])
    # The first fetch moved the SDK's proxy state (the server's own name is not local), so
    # the second is the SDK's too; from the third on, none is.
    assert len(answered) == 2
    # Another address for the URLs: the SDK answers it, and the next plain fetch (its proxy
    # state moved again); after that the plain fetch is known again.
    assert (
        urlsplit(await fetch("call-0100-abcdef", ("host", "mfa.example.org"))).hostname == "mfa.example.org"
    )
    assert urlsplit(await fetch("call-0101-abcdef")).hostname == "agent.example"
    assert len(answered) == 4
    await fetch("call-0102-abcdef")
    assert len(answered) == 4
    # Wrong credentials are the SDK's to refuse.
    refused = await _request(app, "POST", "/", body=b"{}", headers=[_auth_header(("probe", "nope"))])
    assert refused.status == 401 and len(answered) == 5


@pytest.mark.parametrize(
    ("body", "found"),
    [
        ({"call": {"call_id": "c-1"}}, (True, "c-1")),
        ({"call_id": "c-2", "call": {"call_id": "c-1"}}, (True, "c-2")),
        ({"call_id": "", "call": {"call_id": "c-1"}}, (True, "c-1")),
        ({}, (True, None)),
        ({"call": {}}, (True, None)),
        ({"call_id": ""}, (False, None)),
        ({"call_id": 7}, (False, None)),
        ({"call": "c-1"}, (False, None)),
        ([1], (False, None)),
    ],
)
def test_the_call_id_of_a_swml_fetch_is_where_the_sdk_looks_for_it(
    body: Any, found: tuple[bool, Any]
) -> None:
    assert sdk_adapter._swml_call_id(body) == found


def test_a_call_id_the_sdk_mints_no_token_for_is_rendered_by_the_sdk() -> None:
    agent = Probe()
    agent._render_swml("3f1c0a52-call-one")  # the document is kept
    document = json.loads(agent._render_swml(""))
    ai = next(verb["ai"] for verb in document["sections"]["main"] if "ai" in verb)
    echo = next(f for f in ai["SWAIG"]["functions"] if f["function"] == "echo")
    assert "web_hook_url" not in echo  # the SDK's own render: no token, so no URL, for an empty id


async def test_a_client_that_leaves_in_the_middle_of_its_body_gets_nothing_and_breaks_nothing() -> None:
    agent = Probe()
    app = agent.get_app()
    sdk_adapter.replace_security_headers_middleware(app, agent)  # the SDK's has nothing to send either
    sdk_adapter.serve_directly(app, agent)
    for path in sdk_adapter.direct_paths(agent):
        sent = await _leaving(app, path)
        assert sent == [], path


async def _leaving(app: Any, path: str) -> list[Any]:
    """What ``app`` sends to a client that sends part of its body and leaves."""
    chunks = [{"type": "http.request", "body": b'{"call": ', "more_body": True}, {"type": "http.disconnect"}]
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(_scope("POST", path, [_auth_header(), ("content-length", "100")], ""), receive, send)
    return sent


# -- SignalWire's webhook signatures --------------------------------------------------


def test_signatures_are_checked_as_the_sdk_documents_them() -> None:
    # The test vectors of the SDK's security.md ("Webhook Signature Validation").
    form_url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    form = "CallSid=CA1234567890ABCDE&Caller=%2B14158675309&Digits=1234&From=%2B14158675309&To=%2B18005551212"
    signed = {"x-signalwire-signature": "RSOYDt4T1cUTdK1PDd93/VVr8B8="}
    assert sdk_adapter.signed_by_signalwire("12345", form_url, signed, form)
    assert sdk_adapter.signed_by_signalwire(
        "12345", form_url, {"x-twilio-signature": signed["x-signalwire-signature"]}, form
    )
    # With the default port written into the URL, as the platform signs some requests.
    assert sdk_adapter.signed_by_signalwire(
        "12345", "https://mycompany.com:443/myapp.php?foo=1&bar=2", signed, form
    )
    assert not sdk_adapter.signed_by_signalwire("12346", form_url, signed, form)
    assert not sdk_adapter.signed_by_signalwire("12345", form_url, signed, form.replace("1234&", "1235&"))
    assert not sdk_adapter.signed_by_signalwire("12345", form_url, {}, form)
    json_url, body = (
        "https://example.ngrok.io/webhook",
        '{"event":"call.state","params":{"call_id":"abc-123","state":"answered"}}',
    )
    json_signed = {"x-signalwire-signature": "c3c08c1fefaf9ee198a100d5906765a6f394bf0f"}
    assert sdk_adapter.signed_by_signalwire("PSKtest1234567890abcdef", json_url, json_signed, body)
    assert tuple(inspect.signature(webhook_middleware.validate).parameters) == sdk_adapter.SIGNATURE_CHECK


@pytest.mark.parametrize(
    ("module", "name", "said"),
    [
        ("web_mixin", "_request_proxy_url", "web_mixin has no _request_proxy_url context variable"),
        ("_sync_handlers", "run_sync_handler", "_sync_handlers has no run_sync_handler()"),
    ],
)
def test_start_up_stops_with_one_line_when_a_module_internal_of_the_hot_path_is_gone(
    monkeypatch: pytest.MonkeyPatch, module: str, name: str, said: str
) -> None:
    monkeypatch.delattr(getattr(sdk_adapter, module), name)
    with pytest.raises(SystemExit) as stopped:
        sdk_adapter.check_sdk()
    assert str(stopped.value.code).count("\n") == 0
    assert said in str(stopped.value.code)


def test_security_headers_are_set_as_the_sdks_response_headers_would_be() -> None:
    for hsts in (False, True):
        for start in (
            [(b"content-type", b"application/json"), (b"content-length", b"2")],
            [(b"x-frame-options", b"SAMEORIGIN"), (b"content-type", b"text/html")],
            [(b"Referrer-Policy", b"no-referrer"), (b"referrer-policy", b"same-origin")],
            [],
        ):
            ours: dict[str, Any] = {"type": "http.response.start", "headers": list(start)}
            sdk_adapter.set_security_headers(ours, hsts=hsts)

            expected = MutableHeaders(raw=list(start))
            for name, value in sdk_adapter.SECURITY_HEADERS:
                expected[name] = value
            if hsts:
                expected["Strict-Transport-Security"] = sdk_adapter.HSTS
            assert ours["headers"] == expected.raw, (start, hsts)

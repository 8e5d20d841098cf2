"""Another agent includes our functions (`SWAIG.includes`), and the platform drives them.

The host is `examples/host_agent.py`, served like any SDK agent. The platform
fetches its SWML, asks each include's URL for the definitions (`get_signature`,
with the include's meta_data, naming the call or not), and then posts SWAIG
requests to each definition's `web_hook_url`, carrying meta_data and
global_data forward as for our own SWML.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import aiohttp
import pytest
import uvicorn

from examples.host_agent import FUNCTIONS, HostAgent
from tests.platform import (
    PASSWORD,
    USER,
    FakePlatform,
    RunningAgent,
    actions,
    call_is_verified,
    changed_step,
    free_port,
    last_code,
    read_outbox,
    record_events,
    serve_agent,
    serving,
    settings_for,
    signalwire_signature,
    swml_ai,
    user_events,
)
from tests.processes import AgentProcess

CALLER = "+12025550143"
REFUSED = "the security token for this function is invalid or expired"
HOST_AUTH = aiohttp.BasicAuth("host", "host-password-for-tests")


@dataclass
class Host:
    url: str
    agent: HostAgent


@contextlib.asynccontextmanager
async def serve_host(include_url: str, agent_id: str | None) -> AsyncIterator[Host]:
    """The example host agent, served on a loopback port."""
    port = free_port()
    agent = HostAgent(
        include_url,
        agent_id=agent_id,
        host="127.0.0.1",
        port=port,
        basic_auth=(HOST_AUTH.login, HOST_AUTH.password),
        suppress_logs=True,
    )
    config = uvicorn.Config(agent.get_app(), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    async with serving(uvicorn.Server(config)):
        yield Host(f"http://127.0.0.1:{port}/", agent)


def include_url(agent: RunningAgent, path: str = "/swaig") -> str:
    """Our SWAIG URL with our credentials in it, as a host's include lists it."""
    return f"http://{USER}:{PASSWORD}@127.0.0.1:{agent.settings.port}{path}"


@pytest.fixture
async def agent(tmp_path: Any) -> AsyncIterator[RunningAgent]:
    async with serve_agent(settings_for(tmp_path)) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def call_on(http: aiohttp.ClientSession, agent: RunningAgent, **kwargs: Any) -> FakePlatform:
    return FakePlatform(http, agent.base_url, agent.auth, caller_id_num=CALLER, **kwargs)


async def discover(http: aiohttp.ClientSession, url: str, body: dict[str, Any], **kwargs: Any) -> Any:
    async with http.post(url, json={"action": "get_signature", **body}, **kwargs) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def with_query(url: str, **changes: str | None) -> str:
    """``url`` with query parameters changed (None: removed)."""
    parts = urlsplit(url)
    query = {name: values[0] for name, values in parse_qs(parts.query, keep_blank_values=True).items()}
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode({k: v for k, v in query.items() if v is not None})))


def query_value(url: str, name: str) -> str:
    return parse_qs(urlsplit(url).query)[name][0]


def on(agent: RunningAgent, urls: dict[str, str]) -> dict[str, str]:
    """The same URLs (credentials, query) at ``agent``'s address, as a load balancer may send them."""
    netloc = f"{USER}:{PASSWORD}@127.0.0.1:{agent.settings.port}"
    return {name: urlunsplit(urlsplit(url)._replace(netloc=netloc)) for name, url in urls.items()}


def token_for(secret: str, function: str, subject: str) -> str:
    """A token in the SDK's format, signed with ``secret``."""
    expiry, nonce = int(time.time()) + 600, "0123456789abcdef"
    message = f"{subject}:{function}:{expiry}:{nonce}"
    signature = hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()
    return base64.urlsafe_b64encode(f"{subject}.{function}.{expiry}.{nonce}.{signature}".encode()).decode()


# -- a host's call, start to end -------------------------------------------------------


@pytest.mark.parametrize("name_the_call", [True, False], ids=["discovery-names-the-call", "names-none"])
async def test_a_host_agent_verifies_its_caller_with_the_included_functions(
    agent: RunningAgent, http: aiohttp.ClientSession, name_the_call: bool
) -> None:
    events = record_events(agent.runtime)
    async with serve_host(include_url(agent), "help-line") as host:
        platform = call_on(http, agent)
        definitions = await platform.start_hosted_call(host.url, HOST_AUTH, name_the_call=name_the_call)

        assert [d["function"] for d in definitions] == FUNCTIONS
        for definition in definitions:
            assert definition["description"] and definition["parameters"]["type"] == "object"
            assert definition["meta_data_token"] == "mfa_verification" and definition["fillers"]
            query = parse_qs(urlsplit(definition["web_hook_url"]).query)
            assert query["agent_id"] == ["help-line"] and query["include"] and query["__token"]
        assert definitions[1]["parameters"]["required"] == ["token"]

        sent = await platform.call("send_mfa")
        assert "ending in 0143" in sent["response"]
        mfa = actions(sent, "set_meta_data")[0]["mfa"]
        assert mfa["id"] and mfa["success"] is True and mfa["channel"] == "sms"
        assert [event["type"] for event in user_events(sent)] == ["mfa.sent"]

        verified = await platform.call("verify_mfa", token=last_code(agent.settings))
        assert "verified" in verified["response"]
        assert platform.meta_data["mfa_verification"]["verified"] is True
        assert platform.global_data == {"mfa_verified": True}
        assert [event["type"] for event in user_events(verified)] == ["mfa.verified"]
        assert await call_is_verified(agent.runtime, platform.call_id)

        # The host has its own prompt and steps: nothing moves it to ours.
        for answer in (sent, verified):
            assert changed_step(answer) is None
    assert [(e.type, e.agent_id, e.call_id) for e in events] == [
        ("mfa.sent", "help-line", platform.call_id),
        ("mfa.verified", "help-line", platform.call_id),
    ]


async def test_each_host_reports_under_the_agent_id_of_its_include(
    agent: RunningAgent, http: aiohttp.ClientSession
) -> None:
    events = record_events(agent.runtime)
    async with (
        serve_host(include_url(agent), "clinic-a") as clinic,
        serve_host(include_url(agent), "bank-b") as bank,
        serve_host(include_url(agent), "not a valid id!") as unnamed,
    ):
        calls = {}
        for host in (clinic, bank, unnamed):
            platform = call_on(http, agent)
            await platform.start_hosted_call(host.url, HOST_AUTH)
            await platform.call("send_mfa")
            await platform.call("verify_mfa", token=last_code(agent.settings))
            calls[platform.call_id] = host
    by_call = {(e.call_id, e.type): e.agent_id for e in events}
    ids = list(calls)
    assert by_call[(ids[0], "mfa.sent")] == by_call[(ids[0], "mfa.verified")] == "clinic-a"
    assert by_call[(ids[1], "mfa.sent")] == by_call[(ids[1], "mfa.verified")] == "bank-b"
    # An agent id that AGENT_ID would not take is ignored: the deployment's own.
    assert by_call[(ids[2], "mfa.sent")] == agent.settings.agent_id == "mfa"


# -- discovery ---------------------------------------------------------------------


async def test_discovery_needs_the_credentials(agent: RunningAgent, http: aiohttp.ClientSession) -> None:
    body = {"action": "get_signature", "functions": FUNCTIONS, "call_id": str(uuid.uuid4())}
    for path in ("/swaig", "/swaig/"):
        for auth in (None, aiohttp.BasicAuth(USER, "wrong")):
            async with http.post(agent.base_url + path, json=body, auth=auth) as resp:
                assert resp.status == 401
                assert "web_hook_url" not in await resp.text()


async def test_discovery_answers_with_and_without_the_trailing_slash(
    agent: RunningAgent, http: aiohttp.ClientSession
) -> None:
    answers = [
        await discover(http, agent.base_url + path, {"functions": FUNCTIONS}, auth=agent.auth)
        for path in ("/swaig", "/swaig/")
    ]
    for definitions in answers:
        assert [d["function"] for d in definitions] == FUNCTIONS
    # Every discovery gets its own id and tokens.
    assert answers[0][0]["web_hook_url"] != answers[1][0]["web_hook_url"]


async def test_an_agent_id_on_the_include_url_counts_unless_meta_data_names_one(
    agent: RunningAgent, http: aiohttp.ClientSession
) -> None:
    url = agent.base_url + "/swaig?agent_id=from-url"
    for meta_data, expected in (({}, "from-url"), ({"agent_id": "from-meta"}, "from-meta")):
        definitions = await discover(http, url, {"meta_data": meta_data}, auth=agent.auth)
        assert {query_value(d["web_hook_url"], "agent_id") for d in definitions} == {expected}


@pytest.mark.parametrize(
    ("asked", "defined"),
    [
        (["verify_mfa", "transfer_money", "send_mfa", "verify_mfa"], ["verify_mfa", "send_mfa"]),
        (["transfer_money"], []),
        ([], FUNCTIONS),
        (None, FUNCTIONS),
        ("send_mfa", ["send_mfa"]),
        ({"send_mfa": True}, []),
    ],
)
async def test_discovery_defines_only_our_functions_that_were_asked_for(
    agent: RunningAgent, http: aiohttp.ClientSession, asked: Any, defined: list[str]
) -> None:
    body = {} if asked is None else {"functions": asked}
    definitions = await discover(http, agent.base_url + "/swaig", body, auth=agent.auth)
    assert [d["function"] for d in definitions] == defined


async def test_function_urls_follow_swml_proxy_url_base(
    tmp_path: Any, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWML_PROXY_URL_BASE", "https://mfa.example.com")
    async with serve_agent(settings_for(tmp_path)) as agent:
        definitions = await discover(http, agent.base_url + "/swaig", {}, auth=agent.auth)
    for definition in definitions:
        assert definition["web_hook_url"].startswith(f"https://{USER}:{PASSWORD}@mfa.example.com/swaig/?")


async def test_a_proxy_url_base_set_in_dot_env_reaches_the_sdks_urls_and_signature_check(
    tmp_path: Any, http: aiohttp.ClientSession
) -> None:
    # The SDK reads SWML_PROXY_URL_BASE from the process environment only; a deployer who
    # puts it in .env (with the Signing Key) must get function URLs and signature checks
    # built on the same public URL, or every signed call would be refused.
    key = "PSKtest-dot-env-0123456789"
    (tmp_path / ".env").write_text(
        f"SWML_PROXY_URL_BASE=https://mfa.example.com\nSIGNALWIRE_SIGNING_KEY={key}\n"
        f"MFA_STORE=sqlite:///{tmp_path}/mfa.sqlite3\nMFA_OUTBOX={tmp_path}/outbox.jsonl\n"
    )
    agent = AgentProcess({}, tmp_path / "agent.log")
    await agent.start()
    try:
        body = json.dumps({"call_id": str(uuid.uuid4())}).encode()
        public = "https://mfa.example.com/"
        signed = {
            "Content-Type": "application/json",
            "X-SignalWire-Signature": signalwire_signature(key, public, body),
        }
        async with http.post(agent.base_url + "/", data=body, headers=signed, auth=agent.auth) as resp:
            assert resp.status == 200, agent.log()
            swml = await resp.json()
        urls = [f["web_hook_url"] for f in swml_ai(swml)["SWAIG"]["functions"]]
        assert urls and all(
            url.startswith(f"https://{USER}:{PASSWORD}@mfa.example.com/swaig") for url in urls
        )
        unsigned = {"Content-Type": "application/json"}
        async with http.post(agent.base_url + "/", data=body, headers=unsigned, auth=agent.auth) as resp:
            assert resp.status == 403
    finally:
        await agent.stop()


# -- tokens: one call each ----------------------------------------------------------


async def test_a_token_for_the_named_call_serves_no_other(
    agent: RunningAgent, http: aiohttp.ClientSession
) -> None:
    async with serve_host(include_url(agent), "help-line") as host:
        call_a = call_on(http, agent)
        await call_a.start_hosted_call(host.url, HOST_AUTH, name_the_call=True)
        other = call_a.payload("send_mfa", {})
        other["call_id"] = str(uuid.uuid4())
        refused = await call_a.post("send_mfa", other)
        assert REFUSED in refused["response"] and not refused.get("action")
        assert read_outbox(agent.settings) == []
        assert "ending in 0143" in (await call_a.call("send_mfa"))["response"]


async def test_a_discovery_that_named_no_call_serves_the_first_call_only(
    tmp_path: Any, store_url: str, http: aiohttp.ClientSession
) -> None:
    async with (
        serve_agent(settings_for(tmp_path, mfa_store=store_url)) as agent,
        serve_host(include_url(agent), "help-line") as host,
    ):
        call_a = call_on(http, agent)
        await call_a.start_hosted_call(host.url, HOST_AUTH, name_the_call=False)
        assert "ending in 0143" in (await call_a.call("send_mfa"))["response"]

        # The same URLs under another call id: no fresh per-call limits for made-up calls.
        for function, arguments in (("send_mfa", {}), ("verify_mfa", {"token": "123456"})):
            call_b = call_a.payload(function, arguments)
            call_b["call_id"] = str(uuid.uuid4())
            refused = await call_a.post(function, call_b)
            assert REFUSED in refused["response"] and not refused.get("action")
        assert len(read_outbox(agent.settings)) == 1

        verified = await call_a.call("verify_mfa", token=last_code(agent.settings))
        assert actions(verified, "set_meta_data") == [{"verified": True}]


async def test_forged_and_borrowed_tokens_are_refused(
    agent: RunningAgent, http: aiohttp.ClientSession
) -> None:
    platform = call_on(http, agent)
    include = {"url": include_url(agent), "functions": FUNCTIONS}
    platform.note_urls(await platform.discover(include, name_the_call=False))
    send_url, verify_url = platform.urls["send_mfa"], platform.urls["verify_mfa"]
    subject = "include/" + query_value(send_url, "include")
    another = await platform.discover(include, name_the_call=False)

    forged = {
        "a key not ours": (
            with_query(send_url, __token=token_for("not-our-key", "send_mfa", subject)),
            "send_mfa",
        ),
        "verify_mfa's token": (with_query(send_url, __token=query_value(verify_url, "__token")), "send_mfa"),
        "another function": (send_url, "verify_mfa"),
        "another discovery": (
            with_query(send_url, include=query_value(another[0]["web_hook_url"], "include")),
            "send_mfa",
        ),
        "no discovery id": (with_query(send_url, include=""), "send_mfa"),
        "no include at all": (with_query(send_url, include=None), "send_mfa"),
    }
    for why, (url, function) in forged.items():
        arguments = {"token": "123456"} if function == "verify_mfa" else {}
        async with http.post(url, json=platform.payload(function, arguments)) as resp:
            answer = await resp.json()
        assert resp.status == 200 and REFUSED in answer["response"], why
    # A token that names a discovery passes as no call's own, whatever call id a request gives.
    as_call = {**platform.payload("send_mfa", {}), "call_id": subject}
    async with http.post(with_query(send_url, include=None), json=as_call) as resp:
        assert "did not come from a call" in (await resp.json())["response"]
    assert read_outbox(agent.settings) == []
    # The honest request still goes through: none of the above bound the discovery.
    assert "ending in 0143" in (await platform.call("send_mfa"))["response"]


async def test_the_first_calls_of_a_discovery_racing_agree_on_one(
    agent: RunningAgent, http: aiohttp.ClientSession
) -> None:
    platform = call_on(http, agent)
    platform.note_urls(
        await platform.discover({"url": include_url(agent), "functions": FUNCTIONS}, name_the_call=False)
    )
    # The platform sending its first request again while it runs: one code, one answer.
    payload = platform.payload("send_mfa", {})
    repeats = await asyncio.gather(*(platform.post("send_mfa", payload) for _ in range(3)))
    assert all(answer == repeats[0] for answer in repeats) and "ending in 0143" in repeats[0]["response"]
    # Other calls racing for a fresh discovery: exactly one of them gets it.
    platform.note_urls(
        await platform.discover({"url": include_url(agent), "functions": FUNCTIONS}, name_the_call=False)
    )
    racing = []
    for _ in range(4):
        payload = platform.payload("send_mfa", {})
        payload["call_id"] = str(uuid.uuid4())
        racing.append(platform.post("send_mfa", payload))
    answers = await asyncio.gather(*racing)
    assert sum(REFUSED not in answer["response"] for answer in answers) == 1
    assert len(read_outbox(agent.settings)) == 2


async def test_another_instance_accepts_a_discoverys_tokens(
    tmp_path: Any, store_url: str, http: aiohttp.ClientSession
) -> None:
    settings = [settings_for(tmp_path, mfa_store=store_url) for _ in range(2)]
    async with serve_agent(settings[0]) as one, serve_agent(settings[1]) as two:
        platform = call_on(http, one)
        include = {"url": include_url(one), "functions": FUNCTIONS}
        discovered = on(
            one,
            {d["function"]: d["web_hook_url"] for d in await platform.discover(include, name_the_call=False)},
        )
        platform.urls = on(two, discovered)  # the call's requests land on the other instance
        assert "ending in 0143" in (await platform.call("send_mfa"))["response"]
        other = {**platform.payload("send_mfa", {}), "call_id": str(uuid.uuid4())}
        assert REFUSED in (await platform.post("send_mfa", other))["response"]
        platform.urls = discovered
        verified = await platform.call("verify_mfa", token=last_code(one.settings))
        assert actions(verified, "set_meta_data") == [{"verified": True}]


# -- what a host hears ---------------------------------------------------------------


async def test_a_host_is_never_moved_to_our_steps_while_our_own_calls_still_are(
    tmp_path: Any, http: aiohttp.ClientSession
) -> None:
    settings = settings_for(tmp_path, mfa_max_failures_per_call=2)
    async with serve_agent(settings) as agent, serve_host(include_url(agent), "help-line") as host:
        hosted = call_on(http, agent)
        await hosted.start_hosted_call(host.url, HOST_AUTH)
        own = call_on(http, agent)
        await own.start_call()
        for platform in (hosted, own):
            answers = [await platform.call("send_mfa")]
            for wrong in ("000000", "111111", "222222"):
                if wrong != last_code(settings):
                    answers.append(await platform.call("verify_mfa", token=wrong))
            answers.append(await platform.call("send_mfa"))
            assert "locked" in answers[-1]["response"]
            steps = [changed_step(answer) for answer in answers]
            if platform is hosted:
                assert steps == [None] * len(answers)
            else:
                assert steps[0] == "await_code" and steps[-1] == "locked"
            for answer in answers:
                assert "await_code" not in answer["response"] and "step" not in answer["response"]


async def test_a_hosts_swml_lists_our_url_and_functions(
    agent: RunningAgent, http: aiohttp.ClientSession
) -> None:
    async with serve_host(include_url(agent), "help-line") as host:
        swml = await call_on(http, agent).fetch_swml(host.url, HOST_AUTH)
    assert swml_ai(swml)["SWAIG"]["includes"] == [
        {"url": include_url(agent), "functions": FUNCTIONS, "meta_data": {"agent_id": "help-line"}}
    ]
    assert "functions" not in swml_ai(swml)["SWAIG"]

"""The agent end to end, driven the way the SignalWire platform drives it.

The agent is the SDK's real app under uvicorn; SignalWire's MFA API is the
fake in `tests/fakes`, reached over HTTP through SIGNALWIRE_SPACE.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.fakes.signalwire_api import FakeSignalWire, make_fake_signalwire
from tests.platform import (
    FakeClock,
    FakePlatform,
    RunningAgent,
    actions,
    call_is_verified,
    changed_step,
    free_port,
    serve_agent,
    signalwire_settings,
    user_events,
)

CALLER = "+12025550143"
MFA_API = "/api/relay/rest/mfa"  # faults for the MFA API, not the number lookup before a send


@dataclass
class World:
    agent: RunningAgent
    fake: FakeSignalWire
    clock: FakeClock
    http: aiohttp.ClientSession

    def platform(self, **kwargs: Any) -> FakePlatform:
        return FakePlatform(self.http, self.agent.base_url, self.agent.auth, caller_id_num=CALLER, **kwargs)


@pytest.fixture
async def world(aiohttp_server: Any, tmp_path: Any, request: Any) -> AsyncIterator[World]:
    clock = FakeClock()
    fake = make_fake_signalwire(clock=clock)
    server = await aiohttp_server(fake.app)
    settings = signalwire_settings(tmp_path, server.port, **getattr(request, "param", {}))
    async with serve_agent(settings, clock=clock) as agent, aiohttp.ClientSession() as http:
        yield World(agent, fake, clock, http)


def text(result: dict[str, Any]) -> str:
    response = result["response"]
    assert isinstance(response, str)
    return response


async def send(platform: FakePlatform, **arguments: Any) -> dict[str, Any]:
    if not platform.urls:
        await platform.start_call()
    return await platform.call("send_mfa", **arguments)


def sent_code(world: World, platform: FakePlatform) -> str:
    return world.fake.code_for(world.fake.sent[-1]["id"])


def spoken(code: str) -> str:
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    return " ".join(words[int(digit)] for digit in code)


async def test_a_code_is_sent_to_the_caller_and_verified(world: World) -> None:
    platform = world.platform()
    swml = await platform.start_call()
    functions = {f["function"]: f for f in swml["sections"]["main"][-1]["ai"]["SWAIG"]["functions"]}
    assert functions["send_mfa"]["meta_data_token"] == functions["verify_mfa"]["meta_data_token"]
    assert "__token=" in platform.urls["send_mfa"] and "fillers" in functions["verify_mfa"]

    sent = await send(platform)
    assert "ending in 0143" in text(sent)
    assert world.fake.sent[-1]["to"] == CALLER
    mfa = actions(sent, "set_meta_data")[0]["mfa"]
    assert mfa["id"] and mfa["success"] is True and mfa["channel"] == "sms"
    assert changed_step(sent) == "await_code"
    assert [event["type"] for event in user_events(sent)] == ["mfa.sent"]

    code = sent_code(world, platform)
    verified = await platform.call("verify_mfa", token=spoken(code))
    assert "verified" in text(verified)
    assert actions(verified, "set_meta_data") == [{"verified": True}]
    assert actions(verified, "set_global_data") == [{"mfa_verified": True}]
    assert changed_step(verified) == "verified"
    assert [event["type"] for event in user_events(verified)] == ["mfa.verified"]
    assert await call_is_verified(world.agent.runtime, platform.call_id)


async def test_a_wrong_code_says_how_many_tries_are_left_then_the_right_one_verifies(world: World) -> None:
    platform = world.platform()
    await send(platform)
    code = sent_code(world, platform)
    wrong = "0000000" if code != "000000" else "111111"
    first = await platform.call("verify_mfa", token=wrong[:6])
    assert "not correct" in text(first) and "2 tries left" in text(first)
    assert not actions(first, "set_meta_data")
    assert [event["type"] for event in user_events(first)] == ["mfa.rejected"]
    second = await platform.call("verify_mfa", token=code)
    assert actions(second, "set_meta_data") == [{"verified": True}]


async def test_used_up_attempts_end_the_code_even_for_the_right_one(world: World) -> None:
    platform = world.platform()
    await send(platform)
    code = sent_code(world, platform)
    wrongs = [guess for guess in ("111111", "222222", "333333", "444444") if guess != code][:3]
    answers = [await platform.call("verify_mfa", token=guess) for guess in wrongs[:2]]
    assert "1 try left" in text(answers[-1])
    last = await platform.call("verify_mfa", token=wrongs[2])
    assert "no longer be used" in text(last) and "send_mfa" in text(last)
    assert "mfa.locked" in [event["type"] for event in user_events(last)]
    after = await platform.call("verify_mfa", token=code)
    assert "no longer be used" in text(after)
    assert not actions(after, "set_meta_data")


async def test_an_expired_code_is_refused_and_a_new_one_is_offered(world: World) -> None:
    platform = world.platform()
    await send(platform)
    code = sent_code(world, platform)
    world.clock.now += world.agent.settings.mfa_valid_for + 1
    expired = await platform.call("verify_mfa", token=code)
    assert "expired" in text(expired) and "send_mfa" in text(expired)
    assert not actions(expired, "set_meta_data")


async def test_verifying_before_any_code_was_sent_asks_to_send_one(world: World) -> None:
    platform = world.platform()
    await platform.start_call()
    answer = await platform.call("verify_mfa", token="123456")
    assert "No code has been sent" in text(answer) and "send_mfa" in text(answer)
    assert world.fake.count("/api") == 0


async def test_a_new_code_can_be_sent_in_the_same_call_and_the_newest_is_checked(world: World) -> None:
    platform = world.platform()
    await send(platform)
    await send(platform, channel="call")
    assert [m["channel"] for m in world.fake.sent] == ["sms", "call"]
    verified = await platform.call("verify_mfa", token=sent_code(world, platform))
    assert actions(verified, "set_meta_data") == [{"verified": True}]


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        ("500", "not answering"),
        ("429", "not answering"),
        ("non_json", "not answering"),
        ("reset", "not answering"),
        ("hang", "not answering"),
        ("401", "refused"),
        ("422", "refused"),
    ],
)
async def test_a_failed_send_is_said_plainly_and_sends_nothing(world: World, fault: str, says: str) -> None:
    platform = world.platform()
    await platform.start_call()
    world.fake.fail_next(fault, path_prefix=MFA_API)
    failed = await platform.call("send_mfa")
    assert says in text(failed) and "Nothing was sent" in text(failed)
    assert not actions(failed, "set_meta_data")
    assert world.fake.sent == []
    # Not a repeat of a success, so trying again goes through.
    retried = await platform.call("send_mfa")
    assert "ending in 0143" in text(retried)
    assert len(world.fake.sent) == 1


@pytest.mark.parametrize("fault", ["500", "reset", "non_json"])
async def test_a_failed_check_uses_no_attempt(world: World, fault: str) -> None:
    platform = world.platform()
    await send(platform)
    code = sent_code(world, platform)
    world.fake.fail_next(fault, path_prefix="/api/relay/rest/mfa/" + world.fake.sent[-1]["id"])
    failed = await platform.call("verify_mfa", token=code)
    assert "not checked" in text(failed) and "No attempt was used" in text(failed)
    verified = await platform.call("verify_mfa", token=code)
    assert actions(verified, "set_meta_data") == [{"verified": True}]


@pytest.mark.parametrize("world", [{"signalwire_space": f"127.0.0.1:{free_port()}"}], indirect=True)
async def test_an_unreachable_provider_is_said_plainly(world: World) -> None:
    platform = world.platform()
    await platform.start_call()
    failed = await platform.call("send_mfa")
    assert "not answering" in text(failed)


async def test_bad_arguments_get_a_clear_answer_and_use_nothing(world: World) -> None:
    platform = world.platform()
    await platform.start_call()
    bad_channel = await platform.call("send_mfa", channel="pigeon")
    assert "not valid (channel)" in text(bad_channel)
    assert world.fake.sent == []
    await platform.call("send_mfa")
    no_token = await platform.call("verify_mfa")
    assert "not valid (token)" in text(no_token)
    unreadable = await platform.call("verify_mfa", token="banana bread")
    assert "could not be read" in text(unreadable)
    wrong_type = await platform.call("verify_mfa", token={"digits": [1, 2]})
    assert "not valid (token)" in text(wrong_type)
    code = sent_code(world, platform)
    verified = await platform.call("verify_mfa", token=int(code) if code[0] != "0" else code)
    assert actions(verified, "set_meta_data") == [{"verified": True}]


async def test_a_body_without_call_context_is_refused_with_http_200(world: World) -> None:
    platform = world.platform()
    await platform.start_call()
    payload = platform.payload("send_mfa", {})
    for broken in ({**payload, "call_id": None}, {**payload, "meta_data": "nope"}):
        answer = await platform.post("send_mfa", broken)
        assert "response" in answer or "error" in answer
    assert world.fake.sent == []


async def test_only_the_callers_own_number_by_default(world: World) -> None:
    platform = world.platform()
    await platform.start_call()
    other = await platform.call("send_mfa", phone_number="+14155550123")
    assert "only go to the number this call comes from" in text(other)
    same = await platform.call("send_mfa", phone_number="+1 (202) 555-0143")
    assert "ending in 0143" in text(same)
    assert [m["to"] for m in world.fake.sent] == [CALLER]


async def test_every_route_but_health_needs_credentials(world: World) -> None:
    base = world.agent.base_url
    for method, path in [("GET", "/"), ("POST", "/"), ("POST", "/swaig")]:
        async with world.http.request(method, base + path, json={}) as resp:
            assert resp.status == 401, path
    async with world.http.get(base + "/health") as resp:
        assert resp.status == 200


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "strict-origin-when-cross-origin",
}


async def test_every_response_carries_the_sdks_security_headers(world: World) -> None:
    # sdk_adapter.py sets them with its own middleware in place of the SDK's; none may be lost.
    platform = world.platform()
    await platform.start_call()
    base, auth = world.agent.base_url, world.agent.auth
    requests = [
        ("POST", "/", auth, {"call": {"call_id": "c1"}}, 200),
        ("POST", platform.urls["send_mfa"], None, platform.payload("send_mfa", {}), 200),
        ("POST", "/swaig", None, {}, 401),
        ("GET", "/health", None, None, 200),
        ("GET", "/verifications/nope", auth, None, 404),
    ]
    for method, path, credentials, body, status in requests:
        url = path if path.startswith("http") else base + path
        async with world.http.request(method, url, auth=credentials, json=body) as resp:
            assert resp.status == status, path
            for name, value in SECURITY_HEADERS.items():
                assert resp.headers.get(name) == value, (path, name)
            assert "Strict-Transport-Security" not in resp.headers
    world.agent.agent.ssl_enabled = True  # what SWML_SSL_ENABLED does; the SDK adds HSTS then
    async with world.http.get(base + "/health") as resp:
        assert resp.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


async def test_a_function_url_without_its_call_token_runs_nothing(world: World) -> None:
    platform = world.platform()
    await platform.start_call()
    url = platform.urls["send_mfa"].split("?")[0]
    async with world.http.post(url, json=platform.payload("send_mfa", {})) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert "invalid" in json.dumps(body).lower() or "expired" in json.dumps(body).lower()
    assert world.fake.sent == []


async def test_a_repeated_request_sends_once_and_gets_the_first_answer(world: World) -> None:
    platform = world.platform()
    await platform.start_call()
    payload = platform.payload("send_mfa", {})
    world.fake.delay = 0.2  # the repeats arrive while the first is still running
    answers = await asyncio.gather(*(platform.post("send_mfa", payload) for _ in range(4)))
    world.fake.delay = 0
    late = await platform.post("send_mfa", payload)
    assert len(world.fake.sent) == 1
    assert all(answer == answers[0] for answer in [*answers, late])
    # The model's next request carries the meta_data the first answer set: a real resend.
    platform.apply("send_mfa", answers[0])
    await platform.call("send_mfa")
    assert len(world.fake.sent) == 2


async def test_the_same_wrong_code_said_again_is_answered_alike_and_costs_one_try(world: World) -> None:
    platform = world.platform()
    await send(platform)
    wrong = "111111" if sent_code(world, platform) != "111111" else "222222"
    first = await platform.call("verify_mfa", token=wrong)
    again = await platform.call("verify_mfa", token=wrong)
    assert first == again and "2 tries left" in text(again)


async def test_a_repeated_correct_code_stays_verified(world: World) -> None:
    platform = world.platform()
    await send(platform)
    payload = platform.payload("verify_mfa", {"token": sent_code(world, platform)})
    first, repeat = [await platform.post("verify_mfa", payload) for _ in range(2)]
    assert first == repeat and actions(repeat, "set_meta_data") == [{"verified": True}]


async def test_no_code_or_full_number_ever_reaches_the_model(world: World) -> None:
    platform = world.platform()
    texts = [text(await send(platform))]
    code = sent_code(world, platform)
    texts.append(text(await platform.call("verify_mfa", token="999999" if code != "999999" else "888888")))
    texts.append(text(await platform.call("verify_mfa", token=code)))
    texts.append(text(await platform.call("verify_mfa", token=code)))
    for said in texts:
        assert code not in said
        assert CALLER not in said and CALLER[1:] not in said and "2025550143" not in said

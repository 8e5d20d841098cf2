"""Abuse and faults: the agent sends nothing it should not, and always answers.

SMS pumping, code guessing, a model talked into skipping the check, a failing
provider, a repeating platform: each is a named behaviour tested here through
the same HTTP requests the platform makes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from engine.models import Event
from tests.fakes.signalwire_api import FakeSignalWire, make_fake_signalwire
from tests.platform import (
    FakeClock,
    FakePlatform,
    RunningAgent,
    actions,
    call_is_verified,
    changed_step,
    record_events,
    serve_agent,
    signalwire_settings,
)

CALLER = "+12025550143"


@dataclass
class World:
    agent: RunningAgent
    fake: FakeSignalWire
    clock: FakeClock
    http: aiohttp.ClientSession
    events: list[Event]

    def platform(self, caller: str = CALLER) -> FakePlatform:
        return FakePlatform(self.http, self.agent.base_url, self.agent.auth, caller_id_num=caller)

    async def call(self, caller: str = CALLER) -> FakePlatform:
        platform = self.platform(caller)
        await platform.start_call()
        return platform

    def code(self) -> str:
        return self.fake.code_for(self.fake.sent[-1]["id"])


@pytest.fixture
async def world(aiohttp_server: Any, tmp_path: Any, request: Any) -> AsyncIterator[World]:
    clock = FakeClock()
    fake = make_fake_signalwire(clock=clock)
    server = await aiohttp_server(fake.app)
    settings = signalwire_settings(tmp_path, server.port, **getattr(request, "param", {}))
    async with serve_agent(settings, clock=clock) as agent, aiohttp.ClientSession() as http:
        yield World(agent, fake, clock, http, record_events(agent.runtime))


ANY_DESTINATION = {"mfa_destinations": "any", "mfa_allowed_countries": "US,CA,GB"}


@pytest.mark.parametrize("world", [ANY_DESTINATION], indirect=True)
@pytest.mark.parametrize(
    ("number", "reason"),
    [
        ("+19005550123", "premium_rate"),  # US premium-rate
        ("+447400123456", None),  # an ordinary GB mobile: allowed
        ("+33884012345", "region_not_allowed"),  # FR, and shared-cost: refused either way
        ("+15550100", "invalid"),
        ("not a number", "invalid"),
        ("0202 555 0143", "invalid"),  # no country code
    ],
)
async def test_destinations_are_checked_before_anything_is_sent(
    world: World, number: str, reason: str | None
) -> None:
    platform = await world.call()
    answer = await platform.call("send_mfa", phone_number=number)
    if reason is None:
        assert "ending in 3456" in answer["response"]
        assert len(world.fake.sent) == 1
        return
    assert answer["response"].startswith("Nothing was sent")
    assert world.fake.sent == []
    failed = [e for e in world.events if e.type == "mfa.send_failed"]
    assert [e.reason for e in failed] == [reason]


@pytest.mark.parametrize("world", [{"mfa_destinations": "any"}], indirect=True)
async def test_shared_cost_numbers_are_refused_in_any_region(world: World) -> None:
    platform = await world.call()
    answer = await platform.call("send_mfa", phone_number="+33884012345")
    assert "premium-rate or shared-cost" in answer["response"]
    assert world.fake.sent == []


async def test_a_call_gets_three_codes_then_is_told_when_it_can_have_another(world: World) -> None:
    platform = await world.call()
    for _ in range(3):
        await platform.call("send_mfa")
    refused = await platform.call("send_mfa")
    assert "Nothing was sent" in refused["response"] and "60 minutes" in refused["response"]
    assert len(world.fake.sent) == 3


async def test_one_number_gets_five_codes_an_hour_whatever_the_calls(world: World) -> None:
    for _ in range(5):
        await (await world.call()).call("send_mfa")
    refused = await (await world.call()).call("send_mfa")
    assert "Too many codes were sent to that number" in refused["response"]
    assert len(world.fake.sent) == 5
    world.clock.now += 3601
    allowed = await (await world.call()).call("send_mfa")
    assert "ending in 0143" in allowed["response"]


@pytest.mark.parametrize("world", [{"mfa_sends_per_agent_per_minute": 2}], indirect=True)
async def test_the_agent_as_a_whole_has_a_send_rate(world: World) -> None:
    for caller in ("+12025550101", "+12025550102"):
        await (await world.call(caller)).call("send_mfa")
    refused = await (await world.call("+12025550103")).call("send_mfa")
    assert "sending too many codes" in refused["response"] and "seconds" in refused["response"]


@pytest.mark.parametrize("world", [{"mfa_max_failures_per_call": 4}], indirect=True)
async def test_a_new_code_does_not_buy_more_guesses(world: World) -> None:
    platform = await world.call()
    await platform.call("send_mfa")
    for guess in ("100001", "100002", "100003"):
        await platform.call("verify_mfa", token=guess)
    await platform.call("send_mfa")
    locked = await platform.call("verify_mfa", token="100004")
    assert "locked" in locked["response"] and changed_step(locked) == "locked"
    right = await platform.call("verify_mfa", token=world.code())
    assert "locked" in right["response"] and not actions(right, "set_meta_data")
    again = await platform.call("send_mfa")
    assert "Nothing was sent" in again["response"] and len(world.fake.sent) == 2


async def test_only_a_correct_code_verifies_nothing_the_model_passes(world: World) -> None:
    victim = await world.call("+12025550177")
    await victim.call("send_mfa")
    attacker = await world.call()
    attacker.global_data["mfa_verified"] = True
    forged = {"mfa": {"id": world.fake.sent[-1]["id"]}, "verified": True}
    attacker.meta_data[attacker.tokens["verify_mfa"]] = forged
    answer = await attacker.call("verify_mfa", token=world.code())  # even with the victim's code
    assert "No code has been sent" in answer["response"]
    assert not await call_is_verified(world.agent.runtime, attacker.call_id)
    assert not await call_is_verified(world.agent.runtime, victim.call_id)


async def test_guessing_at_one_number_is_bounded_by_its_daily_failure_budget(world: World) -> None:
    settings = world.agent.settings
    budget = settings.mfa_max_failures_per_number_per_day
    # The budget is what bounds guessing: sends x tries would allow more.
    assert budget < settings.mfa_sends_per_number_per_hour * settings.mfa_max_attempts
    refusals = []
    for _ in range(settings.mfa_sends_per_number_per_hour + 3):
        platform = await world.call()
        sent = await platform.call("send_mfa")
        if "Nothing was sent" in sent["response"]:
            refusals.append(sent["response"])
            continue
        right = world.code()
        for n in range(settings.mfa_max_attempts + 2):
            guess = f"{(int(right) + 1 + n) % 1_000_000:06d}"  # a guesser never knows the code
            await platform.call("verify_mfa", token=guess)
    checked = sum(e.type == "mfa.rejected" for e in world.events)
    assert checked == budget  # every guess beyond the budget was refused unchecked
    assert not any(e.type == "mfa.verified" for e in world.events)
    # Past the budget no new code goes to the number, and the caller hears when one may.
    assert len(world.fake.sent) == -(-budget // settings.mfa_max_attempts)
    assert "Too many wrong codes were entered for that number today" in refusals[0]
    assert "24 hours" in refusals[0]
    locked = [e.reason for e in world.events if e.type == "mfa.locked"]
    assert locked[-1] == "number_failures" and set(locked[:-1]) == {"max_attempts"}
    world.clock.now += 24 * 3600
    allowed = await (await world.call()).call("send_mfa")
    assert "ending in 0143" in allowed["response"]


@pytest.mark.parametrize("world", [{"mfa_max_failures_per_number_per_day": 2}], indirect=True)
async def test_a_right_code_is_never_counted_as_a_failure(world: World) -> None:
    # Each attempt is counted as a failure before its code is judged; a right one gives it back.
    for _ in range(3):
        platform = await world.call()
        await platform.call("send_mfa")
        verified = await platform.call("verify_mfa", token=world.code())
        assert actions(verified, "set_meta_data") == [{"verified": True}], verified["response"]
    assert not any(e.type in ("mfa.rejected", "mfa.locked") for e in world.events)


async def test_a_number_locked_by_wrong_codes_on_the_api_is_locked_on_calls_too(world: World) -> None:
    budget = world.agent.settings.mfa_max_failures_per_number_per_day
    url = f"{world.agent.base_url}/verifications"
    for _ in range(-(-budget // world.agent.settings.mfa_max_attempts)):
        async with world.http.post(url, json={"to": CALLER}, auth=world.agent.auth) as resp:
            verification = await resp.json()
        for guess in range(world.agent.settings.mfa_max_attempts):
            check = f"{url}/{verification['id']}/check"
            async with world.http.post(check, json={"code": f"{guess:06d}"}, auth=world.agent.auth) as resp:
                assert resp.status == 200
    platform = await world.call()
    refused = await platform.call("send_mfa")
    assert "Too many wrong codes were entered for that number today" in refused["response"]
    assert sum(e.type == "mfa.rejected" for e in world.events) == budget


async def test_a_failing_provider_trips_the_breaker_and_recovers(world: World) -> None:
    platform = await world.call()
    world.fake.fail_next("500", count=5, path_prefix="/api/relay/rest/mfa")
    for _ in range(5):
        answer = await platform.call("send_mfa", channel="sms")
        assert "not answering" in answer["response"]
        platform.meta_data.clear()
    calls_before = world.fake.count("/api")
    fast = await (await world.call("+12025550160")).call("send_mfa")
    assert "not answering" in fast["response"]
    assert world.fake.count("/api") == calls_before  # answered at once, provider not called
    async with world.http.get(f"{world.agent.base_url}/ready", auth=world.agent.auth) as resp:
        assert (await resp.json())["provider_circuit"] == "open"
    world.clock.now += 30  # the cool-down passes; the provider has recovered
    recovered = await (await world.call("+12025550161")).call("send_mfa")
    assert "ending in 0161" in recovered["response"]
    async with world.http.get(f"{world.agent.base_url}/ready", auth=world.agent.auth) as resp:
        assert (await resp.json())["provider_circuit"] == "closed"


FAULTS = ["500", "429", "non_json", "reset", "hang"]


def _sent_ids(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return [data["mfa"] for data in actions(answer, "set_meta_data") if "mfa" in data]


async def test_chaos_every_fault_while_calls_run_in_parallel(world: World) -> None:
    """Each fault in turn, under parallel calls: HTTP 200 within the bound, nothing sent twice."""
    for round_number, fault in enumerate(FAULTS):
        world.fake.fail_next(fault, count=3)
        platforms = [await world.call(f"+1202555{round_number:02d}{n:02d}") for n in range(8)]

        async def one_call(platform: FakePlatform) -> list[dict[str, Any]]:
            answers = []
            for function, arguments in (("send_mfa", {}), ("send_mfa", {}), ("verify_mfa", {"token": "1"})):
                payload = platform.payload(function, arguments)
                # The platform repeats each request it sent, as it does after a timeout.
                pair = await asyncio.gather(*(platform.post(function, payload) for _ in range(2)))
                # A failed first try is forgotten, so its repeat may succeed; never both.
                ids = {mfa["id"] for answer in pair for mfa in _sent_ids(answer)}
                assert len(ids) <= 1, pair
                kept = next((answer for answer in pair if _sent_ids(answer)), pair[-1])
                platform.apply(function, kept)
                answers.append(kept)
            return answers

        async with asyncio.timeout(10):  # the platform's patience, for every answer
            results = await asyncio.gather(*(one_call(p) for p in platforms))
        for answers in results:
            assert all(isinstance(answer["response"], str) and answer["response"] for answer in answers)
        successes = sum(bool(_sent_ids(answer)) for answers in results for answer in answers[:2])
        world.clock.now += 3600  # a new hour: limits and breaker start afresh
        sent_this_round = [m for m in world.fake.sent if m["to"].startswith(f"+1202555{round_number:02d}")]
        assert len(sent_this_round) == successes, fault


MALFORMED_BODIES: list[Any] = [
    b"",
    b"not json",
    b"{",
    b"[]",
    b"null",
    b'"a string"',
    b"\xff\xfe\x00",
    b"[" * 5000 + b"]" * 5000,
]


async def test_unreadable_bodies_get_http_200_and_a_sayable_answer(world: World) -> None:
    platform = await world.call()
    url = platform.urls["send_mfa"]
    for body in MALFORMED_BODIES:
        async with world.http.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 200, body[:20]
            answer = await resp.json()
            assert isinstance(answer.get("response"), str), answer
    assert world.fake.sent == []


def _payloads(platform: FakePlatform, function: str) -> list[bytes]:
    good = platform.payload(function, {})
    deep = '{"a": ' * 3000 + '"x"' + "}" * 3000  # deeper than any JSON parser here will follow
    nested = json.dumps({**good, "argument": {"parsed": ["DEEP"], "raw": "{}"}}).replace('"DEEP"', deep)
    shapes: list[dict[str, Any]] = [
        {**good, "argument": {"parsed": [{"channel": 7}], "raw": "{}"}},
        {**good, "argument": {"parsed": [{"channel": "sms", "phone_number": ["+1"]}], "raw": "{}"}},
        {**good, "argument": {"parsed": [{"phone_number": "9" * 10_000}], "raw": "{}"}},
        {**good, "argument": {"parsed": "nope", "raw": "{"}},
        {**good, "argument": None},
        {**good, "meta_data": ["not", "an", "object"]},
        {**good, "meta_data": {"mfa": {"id": {"$ne": None}}}},
        {**good, "caller_id_num": "🙂" * 50},
        {**good, "caller_id_num": None},
        {**good, "caller_id_num": "+1202555014\u0663"},
        {**good, "call_id": "🙂"},
    ]
    return [json.dumps(shape).encode() for shape in shapes] + [nested.encode()]


async def test_wrongly_shaped_payloads_are_answered_cleanly(world: World) -> None:
    platform = await world.call()
    for function in ("send_mfa", "verify_mfa"):
        for body in _payloads(platform, function):
            headers = {"Content-Type": "application/json"}
            async with world.http.post(platform.urls[function], data=body, headers=headers) as resp:
                assert resp.status == 200
                answer = await resp.json()
                assert isinstance(answer.get("response"), str), (function, answer)
    # Only the two bodies whose arguments could not be read at all were taken as "no
    # arguments", which for send_mfa means the caller's own number; every other shape sent nothing.
    assert [m["to"] for m in world.fake.sent] == [CALLER, CALLER]

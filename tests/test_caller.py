"""The caller's side: what a real caller does, and a way on from every step.

Driven the way the platform drives the agent, with the local engine (codes in
the outbox) and with SignalWire's MFA API (the fake in `tests/fakes`).
"""

from __future__ import annotations

import asyncio
import contextlib
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
    read_outbox,
    record_events,
    serve_agent,
    settings_for,
    signalwire_settings,
)

CALLER = "+12025550143"


@dataclass
class Call:
    """One call to an agent, with the codes sent on it as the caller received them."""

    agent: RunningAgent
    platform: FakePlatform
    events: list[Event]
    fake: FakeSignalWire | None

    def codes(self) -> list[str]:
        if self.fake is not None:
            return [self.fake.code_for(message["id"]) for message in self.fake.sent]
        return [str(m["body"]).rsplit(" ", 1)[-1] for m in read_outbox(self.agent.settings)]


@contextlib.asynccontextmanager
async def a_call(provider: str, tmp_path: Any, aiohttp_server: Any, **overrides: Any) -> AsyncIterator[Call]:
    clock = FakeClock()
    fake = None
    if provider == "signalwire":
        fake = make_fake_signalwire(clock=clock)
        server = await aiohttp_server(fake.app)
        settings = signalwire_settings(tmp_path, server.port, **overrides)
    else:
        settings = settings_for(tmp_path, **overrides)
    async with serve_agent(settings, clock=clock) as agent, aiohttp.ClientSession() as http:
        platform = FakePlatform(http, agent.base_url, agent.auth, caller_id_num=CALLER)
        await platform.start_call()
        yield Call(agent, platform, record_events(agent.runtime), fake)


def wrong(code: str) -> str:
    return "".join(str((int(digit) + 1) % 10) for digit in code)


@pytest.mark.parametrize("provider", ["local", "signalwire"])
async def test_a_code_sent_earlier_still_verifies_after_a_resend(
    provider: str, tmp_path: Any, aiohttp_server: Any
) -> None:
    async with a_call(provider, tmp_path, aiohttp_server) as call:
        await call.platform.call("send_mfa")
        await call.platform.call("send_mfa")  # "I didn't get it": a second code
        first, second = call.codes()
        assert first != second or provider == "local"

        answer = await call.platform.call("verify_mfa", token=first)  # the first text arrived late

        assert actions(answer, "set_meta_data") == [{"verified": True}], answer
        assert await call.agent.runtime.engine.is_call_verified(call.platform.call_id)


@pytest.mark.parametrize("provider", ["local", "signalwire"])
async def test_a_wrong_reading_counts_once_however_many_live_codes_it_meets(
    provider: str, tmp_path: Any, aiohttp_server: Any
) -> None:
    limit = 4
    async with a_call(
        provider, tmp_path, aiohttp_server, mfa_max_failures_per_call=limit, mfa_max_attempts=10
    ) as call:
        for _ in range(3):
            await call.platform.call("send_mfa")
        codes = call.codes()
        guesses = [f"{n:06d}" for n in range(100) if f"{n:06d}" not in codes][:limit]
        answers = [await call.platform.call("verify_mfa", token=guess) for guess in guesses]

        assert all("not correct" in a["response"] for a in answers[:-1]), answers
        assert "locked" in answers[-1]["response"]
        assert sum(event.type == "mfa.rejected" for event in call.events) == limit
        # Locked: even the right code is not checked now.
        right = await call.platform.call("verify_mfa", token=codes[0])
        assert "locked" in right["response"]


# -- a landline cannot read a text --------------------------------------------------

LOOKUP = "/api/relay/rest/lookup"


async def test_a_landline_gets_its_code_by_a_call_and_is_looked_up_once_a_day(
    tmp_path: Any, aiohttp_server: Any
) -> None:
    async with a_call("signalwire", tmp_path, aiohttp_server) as call:
        assert call.fake is not None
        call.fake.line_types[CALLER] = "landline"

        sent = await call.platform.call("send_mfa", channel="sms")

        assert call.fake.sent[-1]["channel"] == "call"
        assert "landline" in sent["response"] and "phone call" in sent["response"]
        assert actions(sent, "set_meta_data")[0]["mfa"]["channel"] == "call"
        verified = await call.platform.call("verify_mfa", token=call.codes()[-1])
        assert actions(verified, "set_meta_data") == [{"verified": True}]
        # Another call from the same number: the answer is remembered, not asked again.
        other = FakePlatform(
            call.platform.session, call.agent.base_url, call.agent.auth, caller_id_num=CALLER
        )
        await other.start_call()
        await other.call("send_mfa")
        assert call.fake.sent[-1]["channel"] == "call"
        assert call.fake.count(LOOKUP, method="GET") == 1


@pytest.mark.parametrize("fault", ["500", "hang", "401"])
async def test_a_failed_or_slow_lookup_never_blocks_a_send(
    fault: str, tmp_path: Any, aiohttp_server: Any
) -> None:
    async with a_call("signalwire", tmp_path, aiohttp_server) as call:
        assert call.fake is not None
        call.fake.line_types[CALLER] = "landline"
        call.fake.fail_next(fault, path_prefix=LOOKUP)
        started = asyncio.get_running_loop().time()

        sent = await call.platform.call("send_mfa", channel="sms")

        assert asyncio.get_running_loop().time() - started < 4  # the lookup gave up after 1.5 s
        assert "was sent by text message" in sent["response"]
        assert call.fake.sent[-1]["channel"] == "sms"  # by the channel asked for


async def test_the_line_type_check_can_be_turned_off(tmp_path: Any, aiohttp_server: Any) -> None:
    async with a_call("signalwire", tmp_path, aiohttp_server, mfa_line_type_check="off") as call:
        assert call.fake is not None
        call.fake.line_types[CALLER] = "landline"
        await call.platform.call("send_mfa")
        assert call.fake.sent[-1]["channel"] == "sms"
        assert call.fake.count(LOOKUP, method="GET") == 0


async def test_a_landline_the_numbering_plan_knows_is_called_without_a_lookup(
    tmp_path: Any, aiohttp_server: Any
) -> None:
    async with a_call("signalwire", tmp_path, aiohttp_server, mfa_destinations="any") as call:
        assert call.fake is not None
        sent = await call.platform.call("send_mfa", phone_number="+442079460000")
        assert call.fake.sent[-1]["channel"] == "call" and "landline" in sent["response"]
        assert call.fake.count(LOOKUP, method="GET") == 0

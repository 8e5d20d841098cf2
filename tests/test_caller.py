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
    call_is_verified,
    delivered_codes,
    read_outbox,
    record_events,
    serve_agent,
    settings_for,
    signalwire_settings,
    swml_ai,
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
        return delivered_codes(self.agent.settings)


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
        assert await call_is_verified(call.agent.runtime, call.platform.call_id)


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


# -- the keypad ------------------------------------------------------------------------


async def test_the_swml_lets_callers_type_the_code_and_press_pound(
    tmp_path: Any, aiohttp_server: Any
) -> None:
    async with a_call("local", tmp_path, aiohttp_server) as call:
        ai = swml_ai(await call.platform.start_call())
        assert ai["params"]["digit_terminators"] == "#"
        assert 5000 <= ai["params"]["digit_timeout"] <= 30000
        assert any("keypad" in rule for rule in ai["prompt"]["pom"][1]["bullets"])
        await call.platform.call("send_mfa")
        code = call.codes()[-1]
        typed = await call.platform.call("verify_mfa", token=" ".join(code) + " #")
        assert actions(typed, "set_meta_data") == [{"verified": True}]


# -- a way on from every step ------------------------------------------------------------

PERSON = "+12025550199"


async def test_without_a_person_configured_no_person_is_offered_or_promised(
    tmp_path: Any, aiohttp_server: Any
) -> None:
    async with a_call("local", tmp_path, aiohttp_server, mfa_max_failures_per_call=2) as call:
        ai = swml_ai(await call.platform.start_call())
        assert "transfer_to_person" not in [f["function"] for f in ai["SWAIG"]["functions"]]
        await call.platform.call("send_mfa")
        right = call.codes()[-1]
        answers = [
            await call.platform.call("verify_mfa", token=guess)
            for guess in (wrong(right), wrong(wrong(right)))
        ]
        assert "locked" in answers[-1]["response"]
        for answer in answers:
            assert "person" not in answer["response"] and "hand" not in answer["response"]
        locked_step = next(
            step for step in ai["prompt"]["contexts"]["default"]["steps"] if step["name"] == "locked"
        )
        assert "person" not in locked_step["text"] and locked_step["functions"] == []


async def test_a_locked_call_is_offered_a_person_and_connected_there(
    tmp_path: Any, aiohttp_server: Any
) -> None:
    async with a_call(
        "local", tmp_path, aiohttp_server, mfa_max_failures_per_call=1, mfa_transfer_to=PERSON
    ) as call:
        ai = swml_ai(await call.platform.start_call())
        steps = {step["name"]: step for step in ai["prompt"]["contexts"]["default"]["steps"]}
        # Offered in every step: a caller may ask for a person at any time.
        assert all("transfer_to_person" in step["functions"] for step in steps.values())
        assert "transfer_to_person" in steps["locked"]["text"]
        await call.platform.call("send_mfa")
        locked = await call.platform.call("verify_mfa", token=wrong(call.codes()[-1]))
        assert "locked" in locked["response"] and "transfer_to_person" in locked["response"]

        moved = await call.platform.call("transfer_to_person")

        connect = [
            verb["connect"]
            for a in actions(moved, "SWML")
            for verb in a["sections"]["main"]
            if "connect" in verb
        ]
        assert connect == [{"to": PERSON}]
        assert moved.get("post_process") is True  # said before the call moves
        transferred = [e for e in call.events if e.type == "mfa.transferred"]
        assert len(transferred) == 1 and transferred[0].call_id == call.platform.call_id


async def test_a_caller_may_ask_for_a_person_before_any_code(tmp_path: Any, aiohttp_server: Any) -> None:
    async with a_call("local", tmp_path, aiohttp_server, mfa_transfer_to="sip:desk@example.com") as call:
        moved = await call.platform.call("transfer_to_person")
        assert "connecting" in moved["response"].lower()
        assert [e.type for e in call.events] == ["mfa.transferred"]


@pytest.mark.parametrize(
    ("next_agent", "verb"),
    [
        ("https://next.example.com/swml", "transfer"),
        ("+12025550198", "connect"),
        ("sip:next@example.com", "connect"),
    ],
)
async def test_a_verified_call_is_handed_on_with_what_the_next_agent_needs(
    next_agent: str, verb: str, tmp_path: Any, aiohttp_server: Any
) -> None:
    async with a_call("local", tmp_path, aiohttp_server, mfa_on_verified=next_agent) as call:
        sent = await call.platform.call("send_mfa")
        verification_id = actions(sent, "set_meta_data")[0]["mfa"]["id"]

        verified = await call.platform.call("verify_mfa", token=call.codes()[-1])

        assert call.platform.global_data == {
            "mfa_verified": True,
            "mfa_verification_id": verification_id,
            "mfa_verified_number": "***0143",
        }
        moves = [verb_ for a in actions(verified, "SWML") for verb_ in a["sections"]["main"] if verb in verb_]
        assert len(moves) == 1
        assert next_agent in str(moves[0])
        assert verified.get("post_process") is True


async def test_without_a_next_agent_a_verified_call_stays(tmp_path: Any, aiohttp_server: Any) -> None:
    async with a_call("local", tmp_path, aiohttp_server) as call:
        await call.platform.call("send_mfa")
        verified = await call.platform.call("verify_mfa", token=call.codes()[-1])
        swml = [verb for a in actions(verified, "SWML") for verb in a["sections"]["main"]]
        assert all("user_event" in verb for verb in swml)
        assert call.platform.global_data == {"mfa_verified": True}


# -- languages ---------------------------------------------------------------------------

DIGIT_WORDS = {
    "en-US": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
    "es-US": ["cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve"],
    "fr-FR": ["zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"],
}
SAYS = {
    "en-US": ("Hello", "Your verification code is", "Sending your code now."),
    "es-US": ("Hola", "Su código de verificación es", "Enviando su código ahora."),
    "fr-FR": ("Bonjour", "Votre code de vérification est", "J'envoie votre code."),
}


@pytest.mark.parametrize("language", ["en-US", "es-US", "fr-FR"])
async def test_a_whole_call_in_each_language(language: str, tmp_path: Any, aiohttp_server: Any) -> None:
    greeting, message, filler = SAYS[language]
    async with a_call("local", tmp_path, aiohttp_server, mfa_language=language) as call:
        ai = swml_ai(await call.platform.start_call())
        assert [entry["code"] for entry in ai["languages"]] == [language]
        assert ai["params"]["static_greeting"].startswith(greeting)
        send = next(f for f in ai["SWAIG"]["functions"] if f["function"] == "send_mfa")
        assert filler in send["fillers"][language]

        await call.platform.call("send_mfa")
        body = str(read_outbox(call.agent.settings)[-1]["body"])
        assert body.startswith(message)
        spoken = " ".join(DIGIT_WORDS[language][int(digit)] for digit in call.codes()[-1])
        verified = await call.platform.call("verify_mfa", token=spoken)

        assert actions(verified, "set_meta_data") == [{"verified": True}], verified

"""Trust: every limit holds exactly, whoever asks, however often, and on whichever instance.

Each test here is an attack an outsider could make: many different wrong codes
at once over one call's codes and over two instances, agent ids and call ids
made up to get fresh limits, one interface reaching into another's
verifications, a code tried on a call that is already verified, and numbers
that cannot (or must not) receive a code. The limits run on both stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest

from engine.errors import DestinationRefused
from engine.models import Event
from engine.phone import checked_destination
from tests.platform import (
    FakePlatform,
    RunningAgent,
    actions,
    last_code,
    read_outbox,
    record_events,
    serve_agent,
    settings_for,
)

CALLER = "+12025550143"


@contextlib.asynccontextmanager
async def two_instances(tmp_path: Any, store_url: str, **overrides: Any) -> AsyncIterator[list[RunningAgent]]:
    """Two agents sharing one store and one outbox, as two instances behind one address."""
    settings = [settings_for(tmp_path, mfa_store=store_url, **overrides) for _ in range(2)]
    async with serve_agent(settings[0]) as one, serve_agent(settings[1]) as two:
        yield [one, two]


def on(agent: RunningAgent, url: str) -> str:
    """The same URL (path, query, credentials) on another instance."""
    parts = urlsplit(url)
    credentials = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=credentials + urlsplit(agent.base_url).netloc))


def judged(events: list[Event]) -> int:
    """Wrong codes that were checked (each one raises `mfa.rejected`)."""
    return sum(event.type == "mfa.rejected" for event in events)


async def test_parallel_different_wrong_codes_over_a_calls_codes_never_pass_its_limit(
    tmp_path: Any, store_url: str
) -> None:
    limit = 5
    async with (
        two_instances(
            tmp_path, store_url, mfa_max_failures_per_call=limit, mfa_max_attempts=20, mfa_sends_per_call=3
        ) as agents,
        aiohttp.ClientSession() as http,
    ):
        events = [record_events(agent.runtime) for agent in agents]
        platform = FakePlatform(http, agents[0].base_url, agents[0].auth, caller_id_num=CALLER)
        await platform.start_call()
        ids = []
        for _ in range(3):  # three live codes on one call
            sent = await platform.call("send_mfa")
            ids.append(actions(sent, "set_meta_data")[0]["mfa"]["id"])
        right = last_code(agents[0].settings)

        async def guess(n: int) -> dict[str, Any]:
            payload = platform.payload("verify_mfa", {"token": f"{(int(right) + 1 + n) % 10**6:06d}"})
            payload["meta_data"] = {"mfa": {"id": ids[n % 3]}}
            url = on(agents[n % 2], platform.urls["verify_mfa"])
            async with http.post(url, json=payload) as resp:
                assert resp.status == 200
                return dict(await resp.json())

        answers = await asyncio.gather(*(guess(n) for n in range(40)))

        assert judged(events[0]) + judged(events[1]) == limit
        assert sum("Verification is locked for this call" in a["response"] for a in answers) == 40 - limit + 1
        # The right code is refused too: the call is locked.
        payload = platform.payload("verify_mfa", {"token": right})
        async with http.post(on(agents[1], platform.urls["verify_mfa"]), json=payload) as resp:
            assert "locked" in (await resp.json())["response"]


async def test_parallel_wrong_codes_from_many_calls_never_pass_a_numbers_daily_budget(
    tmp_path: Any, store_url: str
) -> None:
    budget = 4
    async with (
        two_instances(
            tmp_path,
            store_url,
            mfa_max_failures_per_number_per_day=budget,
            mfa_max_attempts=10,
            mfa_max_failures_per_call=10,
        ) as agents,
        aiohttp.ClientSession() as http,
    ):
        events = [record_events(agent.runtime) for agent in agents]
        calls = []
        for n in range(3):
            platform = FakePlatform(http, agents[n % 2].base_url, agents[0].auth, caller_id_num=CALLER)
            await platform.start_call()
            await platform.call("send_mfa")
            calls.append(platform)

        async def guess(n: int) -> str:
            platform = calls[n % 3]
            payload = platform.payload("verify_mfa", {"token": f"{n:06d}"})
            async with http.post(on(agents[n % 2], platform.urls["verify_mfa"]), json=payload) as resp:
                return str((await resp.json())["response"])

        answers = await asyncio.gather(*(guess(n) for n in range(30)))

        assert judged(events[0]) + judged(events[1]) == budget
        assert any("paused for this phone number" in answer for answer in answers)
        refused = await calls[0].call("send_mfa")
        assert "Too many wrong codes were entered for that number today" in refused["response"]


async def test_no_agent_id_call_id_or_interface_escapes_the_deployment_wide_send_cap(
    tmp_path: Any, store_url: str
) -> None:
    cap = 12
    # Forty unverified codes to a country new to the deployment: the pumping guard would stop
    # them before the cap does (its own tests: test_pumping_guard.py).
    async with (
        two_instances(
            tmp_path, store_url, mfa_sends_per_minute=cap, mfa_destinations="any", mfa_fraud_guard=False
        ) as agents,
        aiohttp.ClientSession() as http,
    ):

        async def by_call(n: int) -> None:
            agent = agents[n % 2]
            number = f"+1202555{n:04d}"
            platform = FakePlatform(http, agent.base_url, agent.auth, caller_id_num=number)
            platform.swml_query = f"?agent_id=made-up-{uuid.uuid4().hex[:12]}"  # a fresh id every call
            await platform.start_call()
            await platform.call("send_mfa")

        async def by_api(n: int) -> None:
            agent = agents[n % 2]
            url = f"{agent.base_url}/verifications?agent_id=api-{n}"
            async with http.post(url, json={"to": f"+1303555{n:04d}"}, auth=agent.auth) as resp:
                assert resp.status in (201, 429), await resp.text()

        await asyncio.gather(*(by_call(n) for n in range(20)), *(by_api(n) for n in range(20)))

        assert len(read_outbox(agents[0].settings)) == cap


async def test_each_interface_acts_only_on_its_own_verifications(tmp_path: Any) -> None:
    async with serve_agent(settings_for(tmp_path)) as agent, aiohttp.ClientSession() as http:
        platform = FakePlatform(http, agent.base_url, agent.auth, caller_id_num=CALLER)
        await platform.start_call()
        sent = await platform.call("send_mfa")
        call_id = actions(sent, "set_meta_data")[0]["mfa"]["id"]
        code = last_code(agent.settings)
        base = f"{agent.base_url}/verifications/{call_id}"
        for method, url, body in [
            ("GET", base, None),
            ("POST", f"{base}/check", {"code": code}),
            ("POST", f"{base}/cancel", None),
        ]:
            async with http.request(method, url, json=body, auth=agent.auth) as resp:
                assert resp.status == 404, (url, await resp.text())
        # The call's code is untouched: no try was used, and it still verifies the call.
        verified = await platform.call("verify_mfa", token=code)
        assert actions(verified, "set_meta_data") == [{"verified": True}]

        # An API verification is not the call's to check either, and the walkthrough's
        # instances are not the API's.
        async with http.post(f"{agent.base_url}/verifications", json={"to": CALLER}, auth=agent.auth) as resp:
            api_id = (await resp.json())["id"]
        other = FakePlatform(http, agent.base_url, agent.auth, caller_id_num=CALLER)
        await other.start_call()
        other.meta_data[other.tokens["verify_mfa"]] = {"mfa": {"id": api_id}}
        answer = await other.call("verify_mfa", token=last_code(agent.settings))
        assert "No code has been sent" in answer["response"]
        start = f"{agent.base_url}/orchestrators/E4_SmsPhoneVerification"
        async with http.post(start, json=CALLER, auth=agent.auth) as resp:
            instance = await resp.json()
        status = instance["statusQueryGetUri"]
        async with http.get(status, auth=agent.auth) as resp:
            workflow_id = (await resp.json())["customStatus"]["verificationId"]
        async with http.get(f"{agent.base_url}/verifications/{workflow_id}", auth=agent.auth) as resp:
            assert resp.status == 404


async def test_a_verified_call_is_told_so_and_no_new_code_is_judged(tmp_path: Any) -> None:
    async with serve_agent(settings_for(tmp_path)) as agent, aiohttp.ClientSession() as http:
        events = record_events(agent.runtime)
        platform = FakePlatform(http, agent.base_url, agent.auth, caller_id_num=CALLER)
        await platform.start_call()
        await platform.call("send_mfa")
        right = last_code(agent.settings)
        await platform.call("verify_mfa", token=right)
        wrong = f"{(int(right) + 1) % 10**6:06d}"

        answer = await platform.call("verify_mfa", token=wrong)

        assert "already verified" in answer["response"]
        assert "correct" not in answer["response"]
        assert actions(answer, "set_meta_data") == [{"verified": True}]
        # A new code asked for after verifying is not judged either.
        await platform.call("send_mfa")
        again = await platform.call("verify_mfa", token="000000")
        assert "already verified" in again["response"]
        assert judged(events) == 0


# -- destinations: one parser for every interface ----------------------------------

# (number, channel, refusal reason or None when a code may go there)
DESTINATIONS = [
    ("+12025550143", "sms", None),  # US: fixed line or mobile
    ("+447400123456", "sms", None),  # GB mobile
    ("+442079460000", "call", None),  # GB landline, by voice
    ("+442079460000", "sms", None),  # ... and asked for by text: called instead
    ("+1 (202) 555-0143", "sms", None),  # punctuated as people write it
    ("+19005550123", "sms", "premium_rate"),
    ("+33884012345", "sms", "shared_cost"),
    ("+881612345678", "sms", "non_geographic"),  # satellite
    ("+882345678901", "sms", "invalid"),  # international network, not a valid number here
    ("+883510012345", "sms", "non_geographic"),
    ("+80012345678", "sms", "non_geographic"),  # universal freephone
    ("+18003569377", "sms", "not_a_phone"),  # toll-free
    ("+1800FLOWERS", "sms", "invalid"),  # vanity letters are not guessed at
    ("+447012345678", "sms", "not_a_phone"),  # GB personal number
    ("12025550143", "sms", "invalid"),  # no country code
    ("+1202555014\u0663", "sms", "invalid"),  # a digit of another script
    ("+1 202 555 0143 ext 5", "sms", "invalid"),
]


@pytest.mark.parametrize(("number", "channel", "reason"), DESTINATIONS)
def test_the_destination_policy(number: str, channel: str, reason: str | None) -> None:
    if reason is None:
        destination = checked_destination(number, ())
        assert destination.e164.startswith("+")
        assert destination.landline is number.startswith("+4420")
        return
    with pytest.raises(DestinationRefused) as refusal:
        checked_destination(number, ())
    assert refusal.value.reason == reason


async def test_every_interface_refuses_the_same_destinations(tmp_path: Any) -> None:
    settings = settings_for(tmp_path, mfa_destinations="any", mfa_sends_per_number_per_hour=50)
    async with serve_agent(settings) as agent, aiohttp.ClientSession() as http:
        events = record_events(agent.runtime)
        for number, channel, reason in DESTINATIONS:
            platform = FakePlatform(http, agent.base_url, agent.auth, caller_id_num=CALLER)
            await platform.start_call()
            by_call = await platform.call("send_mfa", phone_number=number, channel=channel)
            url = f"{agent.base_url}/verifications"
            async with http.post(url, json={"to": number, "channel": channel}, auth=agent.auth) as resp:
                by_api = resp.status, await resp.json()
            if reason is None:
                assert "was sent" in by_call["response"], number
                assert by_api[0] == 201, (number, by_api)
            else:
                assert by_call["response"].startswith("Nothing was sent"), number
                assert by_api[0] == 422 and by_api[1]["error"]["code"] == "destination_refused", number
        refusals = [e.reason for e in events if e.type == "mfa.send_failed"]
        expected = [reason for _, _, reason in DESTINATIONS if reason is not None]
        assert refusals == [reason for reason in expected for _ in range(2)]

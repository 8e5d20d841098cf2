"""The phone-verification walkthrough's requests, unchanged but for the host, against the real app.

Start `E4_SmsPhoneVerification` with the number as a JSON string, read the
code from the outbox (the local provider's stand-in for the SMS), raise
`SmsChallengeResponse` with it, and poll the status URI. The window is moved
with a fake clock, never waited for.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engine.models import Event
from engine.providers import local as local_provider
from tests.platform import FakeClock, RunningAgent, last_code, read_outbox, serve_agent, settings_for

NUMBER = "+14255550123"
START = "/orchestrators/E4_SmsPhoneVerification"


@dataclass
class Walkthrough:
    agent: RunningAgent
    http: aiohttp.ClientSession
    clock: FakeClock
    events: list[Event] = field(default_factory=list)
    published: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, method: str, url: str, body: Any = None, **kwargs: Any) -> tuple[int, Any, Any]:
        """A request as the walkthrough makes it: JSON bodies, absolute URLs, Basic auth."""
        if not url.startswith("http"):
            url = self.agent.base_url + url
        kwargs.setdefault("auth", self.agent.auth)
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": "application/json"}
        async with self.http.request(method, url, data=data, headers=headers, **kwargs) as resp:
            text = await resp.text()
            assert NUMBER not in text and NUMBER[1:] not in text, text  # the input is masked
            return resp.status, json.loads(text) if text else None, resp.headers

    async def start(self, number: str = NUMBER) -> dict[str, Any]:
        status, links, headers = await self.send("POST", START, number)
        assert status == 202, links
        assert headers["Location"] == links["statusQueryGetUri"]
        return dict(links)

    async def raise_code(self, links: dict[str, Any], code: Any, event: str = "SmsChallengeResponse") -> int:
        url = links["sendEventPostUri"].replace("{eventName}", event)
        status, _, _ = await self.send("POST", url, code)
        return status

    async def status(self, links: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        status, body, _ = await self.send("GET", links["statusQueryGetUri"])
        return status, body


async def open_walkthrough(tmp_path: Path, **overrides: Any) -> AsyncIterator[Walkthrough]:
    clock = FakeClock()
    settings = settings_for(tmp_path, **overrides)
    async with serve_agent(settings, clock=clock) as agent, aiohttp.ClientSession() as http:
        walkthrough = Walkthrough(agent, http, clock)

        async def record(event: Event) -> None:
            walkthrough.events.append(event)
            walkthrough.published.set()

        agent.runtime.publisher.add_sink("test", record)
        yield walkthrough


@pytest.fixture
async def walk(tmp_path: Path) -> AsyncIterator[Walkthrough]:
    async for walkthrough in open_walkthrough(tmp_path):
        yield walkthrough


def wrong(code: str) -> str:
    return "".join(str((int(digit) + 1) % 10) for digit in code)


async def test_the_walkthrough_verifies_a_phone(walk: Walkthrough) -> None:
    links = await walk.start()
    base = walk.agent.base_url
    instance = f"{base}/runtime/webhooks/durabletask/instances/{links['id']}"
    assert links == {
        "id": links["id"],
        "statusQueryGetUri": instance,
        "sendEventPostUri": f"{instance}/raiseEvent/{{eventName}}",
        "terminatePostUri": f"{instance}/terminate",
        "purgeHistoryDeleteUri": instance,
    }
    message = read_outbox(walk.agent.settings)[-1]
    assert message["to"] == NUMBER and message["channel"] == "sms"
    code = last_code(walk.agent.settings)
    assert len(code) == 4 and code.isdigit()

    status, running = await walk.status(links)
    assert status == 202
    assert running["runtimeStatus"] == "Running" and running["output"] is None
    assert running["input"] == "***0123"
    assert running["createdTime"] == running["lastUpdatedTime"] == "2027-01-15T08:00:00Z"

    walk.clock.now += 42
    assert await walk.raise_code(links, int(code)) == 202  # a JSON number, as the walkthrough sends it
    status, done = await walk.status(links)
    assert status == 200
    assert done["runtimeStatus"] == "Completed" and done["output"] is True
    assert done["lastUpdatedTime"] == "2027-01-15T08:00:42Z"

    # Completion is pushed too: the engine's events, for the verification the status names.
    verification_id = done["customStatus"]["verificationId"]
    assert [(event.type, event.verification_id) for event in walk.events] == [
        ("mfa.sent", verification_id),
        ("mfa.verified", verification_id),
    ]


async def test_the_code_may_come_as_a_string(walk: Walkthrough) -> None:
    links = await walk.start()
    assert await walk.raise_code(links, last_code(walk.agent.settings)) == 202
    assert (await walk.status(links))[1]["output"] is True


async def test_a_numeric_code_that_lost_its_leading_zero_still_matches(
    walk: Walkthrough, monkeypatch: pytest.MonkeyPatch
) -> None:
    # JSON has no number 0042: the walkthrough's client sends 42 for that code.
    monkeypatch.setattr(local_provider, "new_code", lambda length, allow_alphas=False: "0042")
    links = await walk.start()
    assert last_code(walk.agent.settings) == "0042"
    assert await walk.raise_code(links, 42) == 202
    assert (await walk.status(links))[1]["output"] is True


async def test_the_window_ends_without_a_code(walk: Walkthrough) -> None:
    links = await walk.start()
    code = last_code(walk.agent.settings)
    walk.clock.now += 89
    assert (await walk.status(links))[1]["runtimeStatus"] == "Running"
    walk.clock.now += 2
    status, done = await walk.status(links)
    assert (status, done["runtimeStatus"], done["output"]) == (200, "Completed", False)
    assert await walk.raise_code(links, code) == 410  # too late, even with the right code
    assert [event.type for event in walk.events] == ["mfa.sent", "mfa.expired"]


async def test_the_durable_timer_ends_the_window_without_anyone_asking(walk: Walkthrough) -> None:
    links = await walk.start()
    walk.clock.now += 91
    # The engine's expiry timer (it wakes at least once a second), not a status query, publishes it.
    async with asyncio.timeout(5):
        while len(walk.events) < 2:
            walk.published.clear()
            await walk.published.wait()
    assert [event.type for event in walk.events] == ["mfa.sent", "mfa.expired"]
    assert (await walk.status(links))[1]["output"] is False


async def test_four_wrong_codes_end_it(walk: Walkthrough) -> None:
    links = await walk.start()
    code = last_code(walk.agent.settings)
    for tries_left in (3, 2, 1):
        assert await walk.raise_code(links, wrong(code)) == 202
        status, running = await walk.status(links)
        assert (status, running["runtimeStatus"]) == (202, "Running")
        assert running["customStatus"]["attemptsLeft"] == tries_left
    assert await walk.raise_code(links, wrong(code)) == 202
    status, done = await walk.status(links)
    assert (status, done["runtimeStatus"], done["output"]) == (200, "Completed", False)
    assert await walk.raise_code(links, code) == 410


async def test_terminate_then_purge(walk: Walkthrough) -> None:
    links = await walk.start()
    code = last_code(walk.agent.settings)
    status, body, _ = await walk.send("DELETE", links["purgeHistoryDeleteUri"])
    assert status == 412 and body["error"]["code"] == "instance_running"

    status, _, _ = await walk.send("POST", links["terminatePostUri"] + "?reason=changed%20my%20mind")
    assert status == 202
    status, done = await walk.status(links)
    assert (status, done["runtimeStatus"], done["output"]) == (200, "Terminated", "changed my mind")
    assert await walk.raise_code(links, code) == 410
    assert (await walk.send("POST", links["terminatePostUri"]))[0] == 410
    assert walk.events[-1].type == "mfa.canceled"

    status, body, _ = await walk.send("DELETE", links["purgeHistoryDeleteUri"])
    assert (status, body) == (200, {"instancesDeleted": 1})
    for method, url in [
        ("GET", links["statusQueryGetUri"]),
        ("DELETE", links["purgeHistoryDeleteUri"]),
        ("POST", links["terminatePostUri"]),
    ]:
        status, body, _ = await walk.send(method, url)
        assert status == 404 and body["error"]["code"] == "not_found"
    assert await walk.raise_code(links, code) == 404


async def test_events_and_bodies_it_does_not_wait_for(walk: Walkthrough) -> None:
    links = await walk.start()
    code = last_code(walk.agent.settings)
    status, body, _ = await walk.send(
        "POST", links["sendEventPostUri"].replace("{eventName}", "Approval"), code
    )
    assert status == 400 and body["error"]["code"] == "unknown_event"
    for bad in (True, 12.5, -1, [code], {"code": code}, None, "", "no code here"):
        url = links["sendEventPostUri"].replace("{eventName}", "SmsChallengeResponse")
        status, body, _ = (
            await walk.send("POST", url, bad) if bad is not None else await walk.send("POST", url)
        )
        assert status == 422 and body["error"]["code"] == "invalid_request", (bad, body)
    status, running = await walk.status(links)
    assert running["customStatus"]["attemptsLeft"] == 4  # none of them spent a try
    assert await walk.raise_code(links, code) == 202


async def test_unknown_instances_and_refused_numbers(walk: Walkthrough) -> None:
    status, body, _ = await walk.send("GET", "/runtime/webhooks/durabletask/instances/0123abcd")
    assert status == 404 and body["error"]["code"] == "not_found"

    status, body, _ = await walk.send("POST", START, "+1 900 555 0123")
    assert status == 422 and body["error"]["code"] == "destination_refused"
    for bad in ({"phone": NUMBER}, 14255550123, "not a number"):
        status, body, _ = await walk.send("POST", START, bad)
        assert status == 422, body
    assert read_outbox(walk.agent.settings) == []


async def test_the_workflow_shares_the_rate_limits(tmp_path: Path) -> None:
    async for walk in open_walkthrough(tmp_path, mfa_sends_per_number_per_hour=1):
        await walk.start()
        status, body, headers = await walk.send("POST", START, NUMBER)
        assert status == 429 and body["error"]["code"] == "rate_limited"
        assert int(headers["Retry-After"]) >= 1


async def test_the_workflow_shape_is_configurable(tmp_path: Path) -> None:
    overrides = {"mfa_workflow_token_length": 6, "mfa_workflow_window": 30, "mfa_workflow_tries": 1}
    async for walk in open_walkthrough(tmp_path, **overrides):
        links = await walk.start()
        code = last_code(walk.agent.settings)
        assert len(code) == 6
        assert await walk.raise_code(links, wrong(code)) == 202
        assert (await walk.status(links))[1]["output"] is False


async def test_credentials_are_required(walk: Walkthrough) -> None:
    links = await walk.start()
    for method, url in [
        ("POST", walk.agent.base_url + START),
        ("GET", links["statusQueryGetUri"]),
        ("POST", links["sendEventPostUri"].replace("{eventName}", "SmsChallengeResponse")),
        ("POST", links["terminatePostUri"]),
        ("DELETE", links["purgeHistoryDeleteUri"]),
    ]:
        async with walk.http.request(method, url, json="1234") as resp:
            assert resp.status == 401, url
            assert (await resp.json())["error"]["code"] == "unauthorized"
    assert (await walk.status(links))[1]["runtimeStatus"] == "Running"


async def test_an_instance_survives_a_restart(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    clock = FakeClock()
    async with serve_agent(settings, clock=clock) as agent, aiohttp.ClientSession() as http:
        links = await Walkthrough(agent, http, clock).start()
    async with serve_agent(settings, clock=clock) as agent, aiohttp.ClientSession() as http:
        walk = Walkthrough(agent, http, clock)
        # Same host and port, so the URIs from before the restart still work.
        assert await walk.raise_code(links, last_code(settings)) == 202
        assert (await walk.status(links))[1]["output"] is True

"""`/verifications` end to end: the real app under uvicorn, driven over HTTP as a web or app
backend would drive it, with a fake clock for lifetimes and the local provider's outbox for codes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engine.models import Event
from tests.platform import FakeClock, RunningAgent, last_code, read_outbox, serve_agent, settings_for

NUMBER = "+12025550143"


@dataclass
class Api:
    agent: RunningAgent
    http: aiohttp.ClientSession
    clock: FakeClock
    events: list[Event] = field(default_factory=list)

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, aiohttp.ClientResponse]:
        kwargs.setdefault("auth", self.agent.auth)
        async with self.http.request(method, self.agent.base_url + path, **kwargs) as resp:
            text = await resp.text()
            assert NUMBER not in text and NUMBER[1:] not in text, text  # never the full number
            return resp.status, json.loads(text) if text else None, resp

    async def start(self, to: str = NUMBER, **body: Any) -> dict[str, Any]:
        status, started, _ = await self.request("POST", "/verifications", json={"to": to, **body})
        assert status == 201, started
        return dict(started)

    async def check(self, verification_id: str, code: str) -> tuple[int, Any]:
        status, body, _ = await self.request(
            "POST", f"/verifications/{verification_id}/check", json={"code": code}
        )
        return status, body


async def open_api(tmp_path: Path, **overrides: Any) -> AsyncIterator[Api]:
    clock = FakeClock()
    settings = settings_for(tmp_path, **overrides)
    async with serve_agent(settings, clock=clock) as agent, aiohttp.ClientSession() as http:
        api = Api(agent, http, clock)

        async def record(event: Event) -> None:
            api.events.append(event)

        agent.runtime.publisher.add_sink("test", record)
        yield api


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async for running in open_api(tmp_path):
        yield running


def wrong(code: str) -> str:
    return "".join(str((int(digit) + 1) % 10) for digit in code)


async def test_a_verification_is_started_checked_and_read(api: Api) -> None:
    status, started, resp = await api.request(
        "POST", "/verifications?agent_id=signup-web", json={"to": NUMBER, "channel": "sms"}
    )
    assert status == 201
    assert started["status"] == "pending" and started["to"] == "***0143" and started["channel"] == "sms"
    assert started["attempts_left"] == 3
    assert resp.headers["Location"] == f"{api.agent.base_url}/verifications/{started['id']}"
    message = read_outbox(api.agent.settings)[-1]
    assert message["to"] == NUMBER and message["channel"] == "sms"
    code = last_code(api.agent.settings)
    assert code not in json.dumps(started)

    status, checked = await api.check(started["id"], wrong(code))
    assert status == 200
    assert checked["status"] == "pending" and checked["attempts_left"] == 2
    assert checked["outcome"] == "wrong_code" and checked["valid"] is False

    status, checked = await api.check(started["id"], code)
    assert (status, checked["status"], checked["outcome"], checked["valid"]) == (
        200,
        "approved",
        "approved",
        True,
    )

    status, read, _ = await api.request("GET", f"/verifications/{started['id']}")
    assert status == 200 and read["status"] == "approved" and read["id"] == started["id"]

    # The same events as a call's, published once each, under the agent id the request named.
    assert [event.type for event in api.events] == ["mfa.sent", "mfa.rejected", "mfa.verified"]
    assert {event.agent_id for event in api.events} == {"signup-web"}
    assert {event.verification_id for event in api.events} == {started["id"]}


async def test_codes_are_read_as_people_type_them(api: Api) -> None:
    started = await api.start()
    code = last_code(api.agent.settings)
    status, checked = await api.check(started["id"], f" {code[:3]}-{code[3:]} ")
    assert status == 200 and checked["status"] == "approved"


async def test_a_check_after_the_end_answers_the_final_status(api: Api) -> None:
    approved = await api.start()
    code = last_code(api.agent.settings)
    await api.check(approved["id"], code)
    status, again = await api.check(approved["id"], wrong(code))
    # Approved stays approved, but only the request whose code approved it is `valid`.
    assert (status, again["status"], again["outcome"], again["valid"]) == (
        200,
        "approved",
        "already_approved",
        False,
    )

    used_up = await api.start()
    code = last_code(api.agent.settings)
    outcomes = [(await api.check(used_up["id"], wrong(code)))[1] for _ in range(3)]
    assert [body["attempts_left"] for body in outcomes] == [2, 1, 0]
    assert outcomes[-1]["status"] == "max_attempts_reached"
    status, late = await api.check(used_up["id"], code)  # the right code, too late
    assert (status, late["status"], late["valid"]) == (200, "max_attempts_reached", False)

    canceled = await api.start()
    code = last_code(api.agent.settings)
    status, body, _ = await api.request("POST", f"/verifications/{canceled['id']}/cancel")
    assert status == 200 and body["status"] == "canceled"
    status, body, _ = await api.request("POST", f"/verifications/{canceled['id']}/cancel")
    assert status == 200 and body["status"] == "canceled"
    status, late = await api.check(canceled["id"], code)
    assert (status, late["status"], late["valid"]) == (200, "canceled", False)

    expired = await api.start()
    code = last_code(api.agent.settings)
    api.clock.now = api.clock.now + api.agent.settings.mfa_valid_for + 1
    status, body, _ = await api.request("GET", f"/verifications/{expired['id']}")
    assert status == 200 and body["status"] == "expired"
    status, late = await api.check(expired["id"], code)
    assert (status, late["status"], late["valid"]) == (200, "expired", False)
    assert "mfa.expired" in [event.type for event in api.events]


async def test_an_unknown_verification_is_not_found(api: Api) -> None:
    for method, path, body in [
        ("GET", "/verifications/no-such-id", None),
        ("POST", "/verifications/no-such-id/check", {"code": "1234"}),
        ("POST", "/verifications/no-such-id/cancel", None),
    ]:
        status, answer, _ = await api.request(method, path, json=body)
        assert status == 404 and answer["error"]["code"] == "not_found", (path, answer)


async def test_a_premium_rate_number_is_refused(api: Api) -> None:
    status, body, _ = await api.request("POST", "/verifications", json={"to": "+1 900 555 0123"})
    assert status == 422 and body["error"]["code"] == "destination_refused"
    assert "900" not in body["error"]["message"]
    assert read_outbox(api.agent.settings) == []
    assert [event.type for event in api.events] == ["mfa.send_failed"]


async def test_too_many_sends_answer_429_with_retry_after(tmp_path: Path) -> None:
    async for api in open_api(tmp_path, mfa_sends_per_number_per_hour=2):
        await api.start()
        await api.start()
        status, body, resp = await api.request("POST", "/verifications", json={"to": NUMBER})
        assert status == 429 and body["error"]["code"] == "rate_limited"
        assert 1 <= int(resp.headers["Retry-After"]) <= 3600
        assert len(read_outbox(api.agent.settings)) == 2


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/verifications", "not json"),
        ("/verifications", b'{"to": "+1202\xff"}'),  # not UTF-8
        ("/verifications", "[]"),
        ("/verifications", "{}"),
        ("/verifications", '{"to": 12025550143}'),
        ("/verifications", '{"to": "+12025550143", "channel": "fax"}'),
        ("/verifications", '{"to": "+12025550143", "extra": true}'),
        ("/verifications/some-id/check", "{}"),
        ("/verifications/some-id/check", '{"code": 1234}'),
        ("/verifications/some-id/check", json.dumps({"code": "1" * 65})),
        ("/verifications/not%20an%20id/check", '{"code": "1234"}'),
    ],
)
async def test_malformed_requests_answer_422_json(api: Api, path: str, body: str | bytes) -> None:
    headers = {"Content-Type": "application/json"}
    status, answer, resp = await api.request("POST", path, data=body, headers=headers)
    assert status == 422, answer
    assert resp.content_type == "application/json"
    assert answer["error"]["code"] == "invalid_request" and answer["error"]["message"]
    assert set(answer) == {"error"}


async def test_an_unreadable_code_is_refused_without_spending_a_try(api: Api) -> None:
    started = await api.start()
    status, answer = await api.check(started["id"], "not a code")
    assert status == 422 and answer["error"]["code"] == "invalid_request"
    status, read, _ = await api.request("GET", f"/verifications/{started['id']}")
    assert read["attempts_left"] == 3


async def test_credentials_are_required(api: Api) -> None:
    for auth in (None, aiohttp.BasicAuth("tester", "wrong")):
        async with api.http.post(
            f"{api.agent.base_url}/verifications", json={"to": NUMBER}, auth=auth
        ) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Basic")
            assert (await resp.json())["error"]["code"] == "unauthorized"
    assert read_outbox(api.agent.settings) == []


@pytest.mark.parametrize("store", ["sqlite", "redis"])
async def test_a_code_sent_before_a_restart_is_checked_after_it(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    overrides = {"mfa_store": request.getfixturevalue("app_redis_url")} if store == "redis" else {}
    settings = settings_for(tmp_path, **overrides)
    clock = FakeClock()
    async with serve_agent(settings, clock=clock) as agent, aiohttp.ClientSession() as http:
        verification_id = (await Api(agent, http, clock).start())["id"]

    code = last_code(settings)
    async with serve_agent(settings, clock=clock) as agent, aiohttp.ClientSession() as http:
        status, checked = await Api(agent, http, clock).check(verification_id, code)
    assert (status, checked["status"], checked["valid"]) == (200, "approved", True)

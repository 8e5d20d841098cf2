"""`GET /verifications` and `GET /verifications/summary` end to end: the real app under
uvicorn on SQLite and on Redis, verifications made the way users make them (a call's
send_mfa, the HTTP API, the walkthrough) with a fake clock, then listed and summed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from tests.platform import FakeClock, FakePlatform, RunningAgent, last_code, serve_agent, settings_for

US, GB, FR = "+12025550143", "+447400123456", "+33612345678"
NUMBERS = (US, GB, FR)


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


@dataclass
class History:
    agent: RunningAgent
    http: aiohttp.ClientSession
    clock: FakeClock

    async def get(self, path: str, **params: Any) -> tuple[int, Any]:
        query = "&".join(f"{name}={quote(str(value), safe='')}" for name, value in params.items())
        url = f"{self.agent.base_url}{path}" + (f"?{query}" if query else "")
        async with self.http.get(url, auth=self.agent.auth) as resp:
            text = await resp.text()
            for number in NUMBERS:
                assert number[1:] not in text, text  # never a whole number
            return resp.status, json.loads(text)

    async def start(self, to: str, channel: str = "sms", agent_id: str = "mfa") -> dict[str, Any]:
        url = f"{self.agent.base_url}/verifications?agent_id={agent_id}"
        async with self.http.post(url, json={"to": to, "channel": channel}, auth=self.agent.auth) as resp:
            assert resp.status == 201
            return dict(await resp.json())

    async def check(self, verification_id: str, code: str) -> dict[str, Any]:
        url = f"{self.agent.base_url}/verifications/{verification_id}/check"
        async with self.http.post(url, json={"code": code}, auth=self.agent.auth) as resp:
            assert resp.status == 200
            return dict(await resp.json())

    async def every_page(self, limit: int, **filters: Any) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = []
        cursor = None
        while True:
            params = {**filters, "limit": limit, **({"cursor": cursor} if cursor else {})}
            status, page = await self.get("/verifications", **params)
            assert status == 200, page
            assert len(page["verifications"]) <= limit
            listed += page["verifications"]
            cursor = page["next"]
            if cursor is None:
                return listed


@pytest.fixture
async def history(tmp_path: Path, store_url: str) -> AsyncIterator[History]:
    clock = FakeClock()
    settings = settings_for(tmp_path, mfa_store=store_url, mfa_allowed_countries=[])
    async with serve_agent(settings, clock=clock) as agent, aiohttp.ClientSession() as http:
        yield History(agent, http, clock)


async def test_every_origin_is_listed_newest_first_masked_with_its_country(history: History) -> None:
    started = history.clock.now
    by_api = await history.start(GB, agent_id="signup-web")
    history.clock.now += 10
    platform = FakePlatform(history.http, history.agent.base_url, history.agent.auth, caller_id_num=US)
    await platform.start_call()
    await platform.call("send_mfa")
    await platform.call("verify_mfa", token=last_code(history.agent.settings))
    history.clock.now += 10
    url = f"{history.agent.base_url}/orchestrators/E4_SmsPhoneVerification"
    async with history.http.post(url, json=FR, auth=history.agent.auth) as resp:
        assert resp.status == 202

    status, page = await history.get("/verifications")
    assert status == 200 and page["next"] is None
    listed = page["verifications"]
    assert [(item["origin"], item["country"], item["to"]) for item in listed] == [
        ("workflow", "FR", "***5678"),
        ("call", "US", "***0143"),
        ("api", "GB", "***3456"),
    ]
    on_call = listed[1]
    assert on_call["status"] == "approved" and on_call["call_id"] == platform.call_id
    assert on_call["attempts"] == 1 and on_call["attempts_left"] == 2
    assert on_call["created_at"] == iso(started + 10)
    assert on_call["ended_at"] is not None
    assert listed[2]["id"] == by_api["id"] and listed[2]["agent_id"] == "signup-web"
    assert listed[2]["status"] == "pending" and listed[2]["ended_at"] is None

    # /verifications/summary is the summary, not a verification called "summary".
    status, summary = await history.get("/verifications/summary")
    assert status == 200 and summary["sent"] == 3 and summary["statuses"]["approved"] == 1


async def test_filters_and_pages_through_http(history: History) -> None:
    made: list[dict[str, Any]] = []
    for index in range(14):
        history.clock.now += 7
        started = await history.start(
            NUMBERS[index % 3], "call" if index % 4 == 0 else "sms", ("a", "b")[index % 2]
        )
        made.append(started)
        if index % 3 == 0:
            await history.check(started["id"], last_code(history.agent.settings))
    newest_first = [item["id"] for item in reversed(made)]

    listed = await history.every_page(limit=3)
    assert [item["id"] for item in listed] == newest_first

    approved = await history.every_page(limit=2, status="approved")
    assert [item["id"] for item in approved] == [item["id"] for item in reversed(made[::3])]
    by_b_in_gb = await history.every_page(limit=1, agent_id="b", country="gb")
    expected = [item["id"] for n, item in enumerate(made) if n % 2 == 1 and n % 3 == 1]
    assert [item["id"] for item in by_b_in_gb] == expected[::-1]
    calls = await history.every_page(limit=50, channel="call", origin="api")
    assert len(calls) == 4 and {item["channel"] for item in calls} == {"call"}
    window = await history.every_page(
        limit=4, since=iso(history.clock.now - 7 * 10), until=iso(history.clock.now - 7 * 3)
    )
    assert [item["id"] for item in window] == newest_first[4:11]  # sent at or after since, before until
    assert await history.every_page(limit=5, origin="workflow") == []


async def test_the_summary_through_http_has_known_answers(history: History) -> None:
    history.clock.now = 1_800_000_000.0 // 3600 * 3600 + 600  # ten minutes into an hour
    delays = (3, 12, 28, 44, 70)
    for index, delay in enumerate(delays):
        started = await history.start(GB if index < 2 else US)
        code = last_code(history.agent.settings)
        history.clock.now += delay
        assert (await history.check(started["id"], code))["status"] == "approved"
    await history.start(FR, "call")  # still pending
    history.clock.now += 30

    status, summary = await history.get("/verifications/summary", since=iso(history.clock.now - 3600))
    assert status == 200, summary
    assert summary["sent"] == 6 and summary["conversion"] == pytest.approx(5 / 6)
    assert summary["statuses"] == {
        "pending": 1,
        "approved": 5,
        "expired": 0,
        "max_attempts_reached": 0,
        "canceled": 0,
    }
    assert summary["time_to_verify"] == {"approved": 5, "median_seconds": 30, "p95_seconds": 75}
    assert summary["by_country"] == [
        {"country": "US", "sent": 3, "approved": 3, "conversion": 1.0},
        {"country": "GB", "sent": 2, "approved": 2, "conversion": 1.0},
        {"country": "FR", "sent": 1, "approved": 0, "conversion": 0.0},
    ]
    assert summary["by_channel"] == [
        {"channel": "sms", "sent": 5, "approved": 5, "conversion": 1.0},
        {"channel": "call", "sent": 1, "approved": 0, "conversion": 0.0},
    ]
    assert summary["bucket_seconds"] == 60
    assert len(summary["timeline"]) == 61
    assert sum(bucket["sent"] for bucket in summary["timeline"]) == 6
    assert sum(bucket["approved"] for bucket in summary["timeline"]) == 5

    status, only_gb = await history.get("/verifications/summary", country="GB", status="approved")
    assert (only_gb["sent"], only_gb["statuses"]["approved"], only_gb["by_country"][0]["country"]) == (
        2,
        2,
        "GB",
    )


async def test_history_older_than_the_retention_is_gone(history: History) -> None:
    await history.start(US)
    history.clock.now += history.agent.settings.mfa_history_days * 86400 + 3600
    status, page = await history.get("/verifications")
    assert status == 200 and page == {"verifications": [], "next": None}
    status, summary = await history.get("/verifications/summary")
    assert status == 200 and summary["sent"] == 0 and summary["conversion"] is None
    assert summary["time_to_verify"] == {"approved": 0, "median_seconds": None, "p95_seconds": None}


@pytest.mark.parametrize(
    ("path", "params", "code"),
    [
        ("/verifications", {"limit": "0"}, "invalid_request"),
        ("/verifications", {"limit": "201"}, "invalid_request"),
        ("/verifications", {"limit": "ten"}, "invalid_request"),
        ("/verifications", {"status": "verified"}, "invalid_request"),
        ("/verifications", {"origin": "sip"}, "invalid_request"),
        ("/verifications", {"channel": "fax"}, "invalid_request"),
        ("/verifications", {"country": "ZZ"}, "invalid_request"),
        ("/verifications", {"country": "USA"}, "invalid_request"),
        ("/verifications", {"country": "U1"}, "invalid_request"),
        ("/verifications", {"agent_id": "no spaces"}, "invalid_request"),
        ("/verifications", {"agent_id": "a" * 65}, "invalid_request"),
        ("/verifications", {"since": "yesterday"}, "invalid_request"),
        ("/verifications", {"since": "2026-11-26T10:00:00"}, "invalid_request"),  # no zone
        (
            "/verifications",
            {"since": "2026-11-26T10:00:00Z", "until": "2026-11-26T09:00:00Z"},
            "invalid_request",
        ),
        ("/verifications", {"page": "2"}, "invalid_request"),
        ("/verifications", {"cursor": "x" * 201}, "invalid_request"),
        ("/verifications", {"cursor": "not-a-cursor"}, "invalid_cursor"),
        ("/verifications", {"cursor": "aDE6MS4w"}, "invalid_cursor"),
        ("/verifications", {"cursor": "aDE6OTk5OTk5OTk5OTk5OmlkJyBPUiAxPTE"}, "invalid_cursor"),
        ("/verifications/summary", {"cursor": "abc"}, "invalid_request"),
        ("/verifications/summary", {"limit": "5"}, "invalid_request"),
        ("/verifications/summary", {"until": "2026-13-01T00:00:00Z"}, "invalid_request"),
    ],
)
async def test_bad_parameters_are_refused_in_the_error_shape(
    history: History, path: str, params: dict[str, str], code: str
) -> None:
    status, answer = await history.get(path, **params)
    assert status == (400 if code == "invalid_cursor" else 422), answer
    assert set(answer) == {"error"} and answer["error"]["code"] == code and answer["error"]["message"]


async def test_the_history_needs_the_credentials(history: History) -> None:
    for path in ("/verifications", "/verifications/summary"):
        async with history.http.get(f"{history.agent.base_url}{path}") as resp:
            assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthorized"

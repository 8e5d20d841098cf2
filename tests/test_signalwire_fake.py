"""The fake SignalWire API keeps the documented contract, over real HTTP."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.fakes.signalwire_api import FakeSignalWire, make_fake_signalwire
from tests.platform import FakeClock


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


AUTH = basic("test-project", "test-token")
SMS = "/api/relay/rest/mfa/sms"
CALL = "/api/relay/rest/mfa/call"
MESSAGES = "/api/laml/2010-04-01/Accounts/test-project/Messages.json"
CALLS = "/api/laml/2010-04-01/Accounts/test-project/Calls.json"


@dataclass
class Api:
    """A client for the fake: post JSON or a form and get back (status, JSON)."""

    fake: FakeSignalWire
    clock: FakeClock
    base: str
    session: aiohttp.ClientSession

    async def post(
        self, path: str, body: Any = None, *, auth: dict[str, str] | None = AUTH, data: Any = None
    ) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {"data": data} if data is not None else {"json": body}
        async with self.session.post(self.base + path, headers=auth, **kwargs) as response:
            return response.status, await response.json(content_type=None)

    async def send(self, **overrides: Any) -> str:
        status, answer = await self.post(SMS, {"to": "+15551234567", **overrides})
        assert status == 200, answer
        return str(answer["id"])

    async def verify(self, mfa_id: str, token: str) -> tuple[int, Any]:
        return await self.post(f"/api/relay/rest/mfa/{mfa_id}/verify", {"token": token})


@pytest.fixture
async def api(aiohttp_server: Any) -> AsyncIterator[Api]:
    clock = FakeClock(1000.0)
    fake = make_fake_signalwire(clock=clock)
    server: TestServer = await aiohttp_server(fake.app, host="127.0.0.1")
    async with aiohttp.ClientSession() as session:
        yield Api(fake, clock, str(server.make_url("")).rstrip("/"), session)


# Sending.


async def test_send_answers_the_documented_shape_and_records_the_code(api: Api) -> None:
    status, answer = await api.post(SMS, {"to": "+15551234567", "message": "Code:"})

    assert status == 200
    assert answer["success"] is True
    assert answer["to"] == "+15551234567"
    assert answer["channel"] == "sms"
    sent = api.fake.sent[0]
    assert sent["id"] == answer["id"]
    assert sent["code"].isdigit() and len(sent["code"]) == 6
    assert sent["body"] == f"Code: {sent['code']}"
    assert sent["request"] == {"to": "+15551234567", "message": "Code:"}
    assert api.fake.requests == [("POST", SMS)]


async def test_call_channel_and_every_key_at_its_limits(api: Api) -> None:
    body = {
        "to": "+447700900123",
        "from": "+15550001111",
        "message": "x" * 160,
        "token_length": 20,
        "valid_for": 604_800,
        "max_attempts": 20,
        "allow_alphas": True,
    }
    status, answer = await api.post(CALL, body)

    assert status == 200, answer
    assert answer["channel"] == "call"
    code = api.fake.sent[0]["code"]
    assert len(code) == 20 and code.isalnum() and code.upper() == code
    assert api.fake.sent[0]["from"] == "+15550001111"


@pytest.mark.parametrize(
    "message",
    [
        "a" * 160,  # GSM-7
        "€" * 80,  # extension characters take two septets each
        "✓" * 70,  # UCS-2
    ],
)
async def test_a_message_of_exactly_one_segment_is_accepted(api: Api, message: str) -> None:
    status, answer = await api.post(SMS, {"to": "+15551234567", "message": message})
    assert status == 200, answer


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "to"),
        ({"to": "+15551234567", "to_number": "+1"}, "to_number"),
        ({"to": "15551234567"}, "to"),
        ({"to": "+0123456789"}, "to"),
        ({"to": 15551234567}, "to"),
        ({"to": "+15551234567", "from": "555"}, "from"),
        ({"to": "+15551234567", "from": None}, "from"),
        ({"to": "+15551234567", "message": "a" * 161}, "message"),
        ({"to": "+15551234567", "message": "€" * 81}, "message"),
        ({"to": "+15551234567", "message": "✓" * 71}, "message"),
        ({"to": "+15551234567", "message": 5}, "message"),
        ({"to": "+15551234567", "token_length": 3}, "token_length"),
        ({"to": "+15551234567", "token_length": 21}, "token_length"),
        ({"to": "+15551234567", "token_length": "6"}, "token_length"),
        ({"to": "+15551234567", "token_length": True}, "token_length"),
        ({"to": "+15551234567", "valid_for": 0}, "valid_for"),
        ({"to": "+15551234567", "valid_for": 604_801}, "valid_for"),
        ({"to": "+15551234567", "max_attempts": 0}, "max_attempts"),
        ({"to": "+15551234567", "max_attempts": 21}, "max_attempts"),
        ({"to": "+15551234567", "allow_alphas": "yes"}, "allow_alphas"),
    ],
)
async def test_each_violation_is_a_422_naming_it(api: Api, body: dict[str, Any], field: str) -> None:
    status, answer = await api.post(SMS, body)

    assert status == 422
    [error] = answer["errors"]
    assert set(error) == {"code", "title", "detail", "status"}
    assert error["status"] == "422"
    assert error["detail"].startswith(field)
    assert api.fake.sent == []


async def test_every_violation_is_listed(api: Api) -> None:
    status, answer = await api.post(SMS, {"to": "1", "token_length": 2, "colour": "red"})

    assert status == 422
    assert len(answer["errors"]) == 3


@pytest.mark.parametrize("raw", [b"to=%2B15551234567", b"[1, 2]", b""])
async def test_a_body_that_is_not_a_json_object_is_a_422(api: Api, raw: bytes) -> None:
    status, answer = await api.post(SMS, data=raw)
    assert status == 422
    assert answer["errors"][0]["code"] == "invalid_json"


@pytest.mark.parametrize(
    "auth",
    [
        None,
        basic("test-project", "wrong-token"),
        basic("other-project", "test-token"),
        {"Authorization": "Bearer test-token"},
    ],
)
async def test_wrong_or_missing_credentials_are_a_401(api: Api, auth: dict[str, str] | None) -> None:
    for path in (SMS, "/api/relay/rest/mfa/anything/verify", MESSAGES):
        status, answer = await api.post(path, {"to": "+15551234567"}, auth=auth)
        assert (status, answer) == (401, {"error": "Unauthorized"})
    assert api.fake.sent == []


# Verifying.


async def test_the_right_code_verifies_once_then_the_id_is_gone(api: Api) -> None:
    mfa_id = await api.send()
    code = api.fake.code_for(mfa_id)

    assert await api.verify(mfa_id, code) == (200, {"success": True})
    status, _ = await api.verify(mfa_id, code)
    assert status == 404


async def test_wrong_then_right(api: Api) -> None:
    mfa_id = await api.send()
    code = api.fake.code_for(mfa_id)
    wrong = "0000000" if code != "0000000" else "1111111"

    assert await api.verify(mfa_id, wrong) == (200, {"success": False})
    assert await api.verify(mfa_id, code) == (200, {"success": True})


async def test_max_attempts_counts_every_check_including_the_first(api: Api) -> None:
    mfa_id = await api.send(max_attempts=2)
    code = api.fake.code_for(mfa_id)

    assert await api.verify(mfa_id, "bad") == (200, {"success": False})
    assert await api.verify(mfa_id, "bad") == (200, {"success": False})
    status, _ = await api.verify(mfa_id, code)
    assert status == 404


async def test_the_right_code_on_the_last_attempt_still_verifies(api: Api) -> None:
    mfa_id = await api.send(max_attempts=1)
    assert await api.verify(mfa_id, api.fake.code_for(mfa_id)) == (200, {"success": True})


async def test_a_code_is_gone_once_valid_for_has_passed(api: Api) -> None:
    mfa_id = await api.send(valid_for=60)
    code = api.fake.code_for(mfa_id)

    api.clock.now += 59.9
    assert await api.verify(mfa_id, "bad") == (200, {"success": False})
    api.clock.now += 0.1
    status, _ = await api.verify(mfa_id, code)
    assert status == 404


async def test_an_unknown_id_is_a_404(api: Api) -> None:
    status, answer = await api.verify("3f0e9d3c-0000-4000-8000-000000000000", "123456")
    assert (status, answer) == (404, {"error": "Not Found"})


@pytest.mark.parametrize("body", [{}, {"token": 123456}, {"token": "1", "code": "1"}])
async def test_a_malformed_check_is_a_422_and_spends_nothing(api: Api, body: dict[str, Any]) -> None:
    mfa_id = await api.send(max_attempts=1)

    status, _ = await api.post(f"/api/relay/rest/mfa/{mfa_id}/verify", body)
    assert status == 422
    assert await api.verify(mfa_id, api.fake.code_for(mfa_id)) == (200, {"success": True})


# The compatibility API.


async def test_messages_and_calls_answer_201_with_a_sid_and_are_recorded(api: Api) -> None:
    sms = {"To": "+15551234567", "From": "+15550001111", "Body": "Your code is 123456"}
    call = {"To": "+15551234567", "From": "+15550001111", "Twiml": "<Response><Say>1 2</Say></Response>"}

    status, answer = await api.post(MESSAGES, data=sms)
    assert status == 201 and answer["sid"]
    status, answer = await api.post(CALLS, data=call)
    assert status == 201 and answer["sid"]

    assert [m["kind"] for m in api.fake.messages] == ["sms", "call"]
    assert api.fake.messages[0]["body"] == "Your code is 123456"
    assert api.fake.messages[1]["twiml"] == call["Twiml"]


@pytest.mark.parametrize(
    "form",
    [
        {"To": "5551234567", "From": "+15550001111", "Body": "hi"},
        {"To": "+15551234567", "Body": "hi"},
        {"To": "+15551234567", "From": "+15550001111", "Body": " "},
    ],
)
async def test_a_bad_message_is_a_400(api: Api, form: dict[str, str]) -> None:
    status, answer = await api.post(MESSAGES, data=form)
    assert status == 400
    assert isinstance(answer["code"], int)
    assert api.fake.messages == []


async def test_another_projects_account_path_is_a_404(api: Api) -> None:
    path = MESSAGES.replace("test-project", "other")
    status, _ = await api.post(path, data={"To": "+15551234567", "From": "+15550001111", "Body": "hi"})
    assert status == 404


# Fault injection.


async def test_faults_apply_to_the_next_requests_under_their_prefix_only(api: Api) -> None:
    api.fake.fail_next("500", count=2, path_prefix="/api/laml")
    api.fake.fail_next("429")

    status, _ = await api.post(MESSAGES, data={"To": "+15551234567", "From": "+15550001111", "Body": "a"})
    assert status == 500
    async with api.session.post(api.base + SMS, json={"to": "+15551234567"}, headers=AUTH) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "7"
    status, _ = await api.post(MESSAGES, data={"To": "+15551234567", "From": "+15550001111", "Body": "a"})
    assert status == 500
    status, _ = await api.post(MESSAGES, data={"To": "+15551234567", "From": "+15550001111", "Body": "a"})
    assert status == 201
    assert api.fake.count("/api/laml") == 3
    assert len(api.fake.requests) == 4


async def test_an_unknown_fault_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        make_fake_signalwire().fail_next("teapot")

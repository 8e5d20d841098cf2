"""The SignalWire provider and messaging client map every outcome, against the fake over real HTTP."""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from engine.codes import Message
from engine.delivery.signalwire_messaging import SignalWireMessaging, call_twiml
from engine.errors import ProviderRejected, ProviderUnavailable
from engine.http1 import HttpClient
from engine.models import Verification
from engine.providers.base import Answer, SendRequest
from engine.providers.signalwire import SignalWireMfaProvider
from engine.signalwire_rest import RequestNotSent, SignalWireRest, mask_numbers
from tests.fakes.signalwire_api import FakeSignalWire, make_fake_signalwire
from tests.platform import FakeClock

PROJECT = "test-project"
TOKEN = "test-token"
NUMBER = "+15551234567"
SENDER = "+15550001111"
MFA = "/api/relay/rest/mfa"
MESSAGES = f"/api/laml/2010-04-01/Accounts/{PROJECT}/Messages.json"
CALLS = f"/api/laml/2010-04-01/Accounts/{PROJECT}/Calls.json"


@dataclass
class Env:
    fake: FakeSignalWire
    clock: FakeClock
    base_url: str
    http: HttpClient

    def rest(
        self, *, base_url: str | None = None, token: str = TOKEN, timeout: float = 2.0
    ) -> SignalWireRest:
        return SignalWireRest(self.http, base_url or self.base_url, PROJECT, token, timeout)

    def provider(self, **kwargs: Any) -> SignalWireMfaProvider:
        return SignalWireMfaProvider(self.rest(**kwargs))

    def messaging(self, **kwargs: Any) -> SignalWireMessaging:
        return SignalWireMessaging(self.rest(**kwargs), PROJECT, SENDER)


@pytest.fixture
async def env(aiohttp_server: Any) -> AsyncIterator[Env]:
    clock = FakeClock(1000.0)
    fake = make_fake_signalwire(PROJECT, TOKEN, clock=clock)
    server: TestServer = await aiohttp_server(fake.app, host="127.0.0.1")
    http = HttpClient()
    try:
        yield Env(fake, clock, str(server.make_url("")).rstrip("/"), http)
    finally:
        await http.close()


def send_request(to: str = NUMBER, channel: str = "sms", from_number: str | None = SENDER) -> SendRequest:
    return SendRequest(
        verification_id="v-1",
        to=to,
        channel=channel,  # type: ignore[arg-type]
        token_length=6,
        valid_for=600,
        max_attempts=3,
        allow_alphas=False,
        message="Your verification code is",
        from_number=from_number,
    )


def verification(provider_ref: str | None) -> Verification:
    now = time.time()
    return Verification(
        id="v-1",
        to=NUMBER,
        channel="sms",
        max_attempts=3,
        created_at=now,
        expires_at=now + 600,
        updated_at=now,
        agent_id="mfa",
        provider="signalwire",
        provider_ref=provider_ref,
        origin="api",
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wrong_code(code: str) -> str:
    return "000000" if code != "000000" else "111111"


# Sending.


async def test_send_returns_signalwire_id_and_sends_exactly_the_documented_keys(env: Env) -> None:
    sent = await env.provider().send(send_request())

    [record] = env.fake.sent
    assert sent.provider_ref == record["id"]
    assert sent.code_digest is None
    assert record["request"] == {
        "to": NUMBER,
        "from": SENDER,
        "message": "Your verification code is",
        "token_length": 6,
        "valid_for": 600,
        "max_attempts": 3,
        "allow_alphas": False,
    }
    assert env.fake.requests == [("POST", f"{MFA}/sms")]


async def test_send_leaves_from_out_when_unset_and_uses_the_call_endpoint(env: Env) -> None:
    await env.provider().send(send_request(channel="call", from_number=None))

    [record] = env.fake.sent
    assert "from" not in record["request"]
    assert record["channel"] == "call"
    assert env.fake.requests == [("POST", f"{MFA}/call")]


async def test_a_refused_send_is_invalid_and_its_message_hides_the_number(env: Env) -> None:
    with pytest.raises(ProviderRejected) as raised:
        await env.provider().send(send_request(to="15551234567"))

    assert raised.value.kind == "invalid"
    assert "5551234567" not in str(raised.value)
    assert "***4567" in raised.value.message  # the detail is still useful


async def test_a_success_without_an_id_is_a_bad_response(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    rest = env.rest()

    async def post_json(path: str, body: Any, time_budget: float | None = None) -> tuple[int, Any]:
        return 200, {"success": False}

    monkeypatch.setattr(rest, "post_json", post_json)
    with pytest.raises(ProviderUnavailable) as raised:
        await SignalWireMfaProvider(rest).send(send_request())
    assert raised.value.kind == "bad_response"


# Checking.


async def test_correct_wrong_and_gone(env: Env) -> None:
    provider = env.provider()
    sent = await provider.send(send_request())
    code = env.fake.sent[0]["code"]

    assert await provider.verify(verification(sent.provider_ref), wrong_code(code)) is Answer.WRONG
    assert await provider.verify(verification(sent.provider_ref), code) is Answer.CORRECT
    assert await provider.verify(verification(sent.provider_ref), code) is Answer.GONE
    assert env.fake.count(f"{MFA}/{sent.provider_ref}/verify") == 3


async def test_expired_and_unknown_codes_are_gone(env: Env) -> None:
    provider = env.provider()
    sent = await provider.send(send_request())
    env.clock.now += 600

    assert await provider.verify(verification(sent.provider_ref), env.fake.sent[0]["code"]) is Answer.GONE
    assert await provider.verify(verification("no-such-id"), "123456") is Answer.GONE


async def test_a_verification_without_a_signalwire_id_is_gone_without_asking(env: Env) -> None:
    assert await env.provider().verify(verification(None), "123456") is Answer.GONE
    assert env.fake.requests == []


async def test_a_strange_reference_stays_inside_its_path_segment(env: Env) -> None:
    assert await env.provider().verify(verification("../sms"), "123456") is Answer.GONE
    assert env.fake.requests == [("POST", f"{MFA}/../sms/verify")]
    assert env.fake.sent == []


# Transport faults and statuses, for both calls.


@pytest.mark.parametrize("call", ["send", "verify"])
@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        ("500", "server_error"),
        ("429", "rate_limited"),
        ("non_json", "bad_response"),
        ("reset", "connection"),
        ("hang", "timeout"),
    ],
)
async def test_faults_are_unavailable_with_their_kind_and_not_repeated(
    env: Env, call: str, fault: str, kind: str
) -> None:
    # Short only where the fault is a hang: elsewhere a busy machine must not turn the fault into a timeout.
    provider = env.provider(timeout=0.5 if fault == "hang" else 5.0)
    ref = None
    if call == "verify":
        ref = (await provider.send(send_request())).provider_ref
        env.fake.requests.clear()
    env.fake.fail_next(fault)

    with pytest.raises(ProviderUnavailable) as raised:
        if call == "send":
            await provider.send(send_request())
        else:
            await provider.verify(verification(ref), env.fake.sent[-1]["code"])

    assert raised.value.kind == kind
    assert not isinstance(raised.value, RequestNotSent)
    assert len(env.fake.requests) == 1  # a request that may have arrived is never repeated
    if fault == "429":
        assert raised.value.retry_after == 7


async def test_a_slow_answer_is_a_timeout(env: Env) -> None:
    env.fake.delay = 1.0
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable) as raised:
        await env.provider(timeout=0.3).send(send_request())
    assert raised.value.kind == "timeout"
    assert time.monotonic() - started < 0.9


@pytest.mark.parametrize("call", ["send", "verify"])
async def test_wrong_credentials_are_rejected_as_unauthorized(env: Env, call: str) -> None:
    provider = env.provider(token="not-the-token")
    with pytest.raises(ProviderRejected) as raised:
        if call == "send":
            await provider.send(send_request())
        else:
            await provider.verify(verification("some-id"), "123456")
    assert raised.value.kind == "unauthorized"
    assert "not-the-token" not in str(raised.value)


async def test_an_injected_401_is_unauthorized(env: Env) -> None:
    env.fake.fail_next("401")
    with pytest.raises(ProviderRejected) as raised:
        await env.provider().send(send_request())
    assert raised.value.kind == "unauthorized"


# Connection refused: the one case a check is repeated.


class Resolver:
    """Answers each connection attempt's look-up from a list of ports on 127.0.0.1 (the last one
    repeats), counting the attempts, including those that never connect."""

    def __init__(self, *ports: int) -> None:
        self.ports = list(ports)
        self.attempts = 0

    async def __call__(self, host: str, port: int) -> list[tuple[str, int]]:
        self.attempts += 1
        next_port = self.ports.pop(0) if len(self.ports) > 1 else self.ports[0]
        return [("127.0.0.1", next_port)]


@contextlib.asynccontextmanager
async def resolved_by(resolver: Resolver, seconds: float = 2.0) -> AsyncIterator[SignalWireRest]:
    """A client for a space whose address the resolver gives, with ``seconds`` per request."""
    http = HttpClient(resolver=resolver)
    try:
        yield SignalWireRest(http, "http://signalwire.test", PROJECT, TOKEN, seconds)
    finally:
        await http.close()


async def test_a_refused_send_is_a_connection_fault_and_not_repeated(env: Env) -> None:
    resolver = Resolver(closed_port())
    async with resolved_by(resolver) as rest:
        with pytest.raises(ProviderUnavailable) as raised:
            await SignalWireMfaProvider(rest).send(send_request())
    assert raised.value.kind == "connection"
    assert resolver.attempts == 1


async def test_a_refused_check_is_repeated_once_then_a_connection_fault(env: Env) -> None:
    resolver = Resolver(closed_port())
    async with resolved_by(resolver) as rest:
        with pytest.raises(ProviderUnavailable) as raised:
            await SignalWireMfaProvider(rest).verify(verification("some-id"), "123456")
    assert raised.value.kind == "connection"
    assert resolver.attempts == 2


async def test_a_check_refused_once_succeeds_on_its_one_retry(env: Env) -> None:
    sent = await env.provider().send(send_request())
    fake_port = int(env.base_url.rsplit(":", 1)[1])
    async with resolved_by(Resolver(closed_port(), fake_port)) as rest:
        answer = await SignalWireMfaProvider(rest).verify(
            verification(sent.provider_ref), env.fake.sent[0]["code"]
        )
    assert answer is Answer.CORRECT
    assert env.fake.count(f"{MFA}/{sent.provider_ref}/verify") == 1


async def test_a_refused_check_is_not_repeated_when_no_time_is_left(env: Env) -> None:
    resolver = Resolver(closed_port())
    async with resolved_by(resolver, seconds=0.3) as rest:
        with pytest.raises(RequestNotSent):
            await SignalWireMfaProvider(rest).verify(verification("some-id"), "123456")
    assert resolver.attempts == 1


# Messaging (the LaML API).

MESSAGE = Message("Your verification code is", "123456")


async def test_an_sms_posts_to_from_and_body(env: Env) -> None:
    await env.messaging().deliver(NUMBER, "sms", MESSAGE)

    assert env.fake.requests == [("POST", MESSAGES)]
    [message] = env.fake.messages
    assert (message["to"], message["from"], message["body"]) == (
        NUMBER,
        SENDER,
        "Your verification code is 123456",
    )


async def test_a_call_reads_the_code_digit_by_digit_twice(env: Env) -> None:
    await env.messaging().deliver(NUMBER, "call", MESSAGE)

    assert env.fake.requests == [("POST", CALLS)]
    [message] = env.fake.messages
    said = "Your verification code is 1 2 3 4 5 6"
    assert message["twiml"] == f"<Response><Say>{said}. {said}.</Say></Response>"
    assert (message["to"], message["from"]) == (NUMBER, SENDER)


def test_the_call_text_is_xml_escaped() -> None:
    assert call_twiml(Message("Code <&> 'quoted':", "A1")) == (
        "<Response><Say>Code &lt;&amp;&gt; &apos;quoted&apos;: A 1. "
        "Code &lt;&amp;&gt; &apos;quoted&apos;: A 1.</Say></Response>"
    )


async def test_a_refused_message_is_invalid_without_the_number(env: Env) -> None:
    with pytest.raises(ProviderRejected) as raised:
        await env.messaging().deliver("15551234567", "sms", MESSAGE)
    assert raised.value.kind == "invalid"
    assert "error 21211" in raised.value.message
    assert "5551234567" not in str(raised.value)
    assert "123456" not in str(raised.value)


@pytest.mark.parametrize(
    ("fault", "kind"), [("500", "server_error"), ("429", "rate_limited"), ("reset", "connection")]
)
async def test_message_faults_are_unavailable(env: Env, fault: str, kind: str) -> None:
    env.fake.fail_next(fault)
    with pytest.raises(ProviderUnavailable) as raised:
        await env.messaging().deliver(NUMBER, "sms", MESSAGE)
    assert raised.value.kind == kind


async def test_an_unknown_channel_is_rejected(env: Env) -> None:
    with pytest.raises(ProviderRejected):
        await env.messaging().deliver(NUMBER, "fax", MESSAGE)
    assert env.fake.requests == []


# No secret in logs or messages.


async def test_no_token_number_or_code_reaches_a_log_or_an_error(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = env.provider(timeout=0.5)
    sent = await provider.send(send_request())
    code = env.fake.sent[0]["code"]
    errors: list[str] = []
    for fault in ("500", "429", "non_json", "reset", "hang", "401"):
        env.fake.fail_next(fault)
        try:
            await provider.verify(verification(sent.provider_ref), code)
        except (ProviderUnavailable, ProviderRejected) as exc:
            errors.append(str(exc))
    for bad in ("15551234567", "+1 555 123 4567"):
        try:
            await provider.send(send_request(to=bad))
        except ProviderRejected as exc:
            errors.append(str(exc))

    text = caplog.text + "\n".join(errors) + repr(provider._rest)
    assert len(errors) == 8
    for secret in (TOKEN, code, "5551234567", "555 123 4567"):
        assert secret not in text


def test_mask_numbers() -> None:
    assert mask_numbers("to '+15551234567' is bad") == "to '***4567' is bad"
    assert mask_numbers("call +1 (555) 123-4567 now") == "call ***4567 now"
    assert mask_numbers("token_length must be 4 to 20") == "token_length must be 4 to 20"

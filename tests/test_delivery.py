"""Delivery reports, the fallback call and the caller told, through the real agent app.

The local engine delivers through SignalWire messaging (the fake SignalWire API), asks
for status callbacks, and the fake posts them back to the agent signed with the
project's Signing Key: in order, out of order, repeated, unsigned and badly signed.
Times that matter (the 30 s wait for a report) run on a fake clock the test moves;
what the background follow-up does is awaited through the events it raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from api.delivery_status import MAX_REPORT_BYTES
from config import Settings
from engine.models import DeliveryState, Event, Fallback
from engine.runtime import Runtime
from tests.fakes.signalwire_api import FakeSignalWire, make_fake_signalwire
from tests.platform import (
    DELIVERED,
    Delivered,
    FakeClock,
    FakePlatform,
    RunningAgent,
    actions,
    free_port,
    serve_agent,
    settings_for,
)
from tests.test_edge import MIB, chunked, exchange, junk

CALLER = "+12025550143"
SENDER = "+12025550100"
WAIT = 5.0  # seconds an awaited event may take before the test fails


class EventLog:
    """Every event a runtime publishes from now on, and a way to await one."""

    def __init__(self, runtime: Runtime) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Condition()
        runtime.publisher.add_sink("test", self._capture)

    async def _capture(self, event: Event) -> None:
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def of(self, type_: str, **fields: Any) -> list[Event]:
        return [
            event
            for event in self.events
            if event.type == type_ and all(getattr(event, name) == value for name, value in fields.items())
        ]

    async def wait_for(self, type_: str, **fields: Any) -> Event:
        async with asyncio.timeout(WAIT), self._changed:
            await self._changed.wait_for(lambda: bool(self.of(type_, **fields)))
        return self.of(type_, **fields)[0]


@dataclass
class Setup:
    """A running agent, the fake SignalWire it delivers through, its clock and its events."""

    fake: FakeSignalWire
    agent: RunningAgent
    clock: FakeClock
    log: EventLog
    http: aiohttp.ClientSession
    exits: contextlib.AsyncExitStack
    platforms: list[FakePlatform] = field(default_factory=list)

    async def stop(self) -> None:
        """Stop the agent (again: nothing)."""
        await self.exits.aclose()

    @property
    def runtime(self) -> Runtime:
        return self.agent.runtime

    def platform(self) -> FakePlatform:
        platform = FakePlatform(
            self.http,
            self.agent.base_url,
            self.agent.auth,
            caller_id_num=CALLER,
            signing_key=self.fake.signing_key,
        )
        self.platforms.append(platform)
        return platform

    async def send(self, platform: FakePlatform | None = None) -> tuple[FakePlatform, str, str]:
        """A call whose send_mfa texted a code: the call, the verification id and the text's sid."""
        platform = platform or self.platform()
        if not platform.urls:
            await platform.start_call()
        result = await platform.call("send_mfa")
        assert "was sent by text message" in result["response"], result
        verification_id = actions(result, "set_meta_data")[0]["mfa"]["id"]
        return platform, verification_id, self.fake.texts()[-1]["sid"]

    async def verification(self, verification_id: str) -> Any:
        verification = await self.runtime.store.get_verification(verification_id)
        assert verification is not None
        return verification


def delivery_settings(tmp_path: Any, fake: FakeSignalWire, fake_port: int, **overrides: Any) -> Settings:
    """The local engine texting through the fake, with delivery reports on."""
    port = free_port()
    values: dict[str, Any] = {
        "signalwire_project_id": fake.project_id,
        "signalwire_api_token": fake.api_token,
        "signalwire_space": f"127.0.0.1:{fake_port}",
        "mfa_upstream_timeout": 1.0,
        "port": port,
        "mfa_provider": "local",
        "mfa_delivery": "signalwire",
        "mfa_from_number": SENDER,
        "mfa_line_type_check": False,
        "signalwire_signing_key": fake.signing_key,
        "swml_proxy_url_base": f"http://127.0.0.1:{port}",
        **overrides,
    }
    return settings_for(tmp_path, **values)


@pytest.fixture
async def start(aiohttp_server: Any, tmp_path: Any) -> AsyncIterator[Callable[..., Any]]:
    """Starts an agent (settings overridden as asked) delivering through a fake, fresh unless
    given; agents started in one test share its SQLite file unless told otherwise."""
    started: list[Setup] = []
    servers: dict[int, Any] = {}

    async def starting(
        fake: FakeSignalWire | None = None, clock: FakeClock | None = None, **overrides: Any
    ) -> Setup:
        fake = fake or make_fake_signalwire()
        if id(fake) not in servers:
            servers[id(fake)] = await aiohttp_server(fake.app)
        clock = clock or FakeClock()
        settings = delivery_settings(tmp_path, fake, servers[id(fake)].port, **overrides)
        runtime = Runtime(settings, clock=clock)
        log = EventLog(runtime)  # before it starts: its follow-up may act at once
        exits = contextlib.AsyncExitStack()
        agent = await exits.enter_async_context(serve_agent(settings, runtime=runtime))
        http = await exits.enter_async_context(aiohttp.ClientSession())
        setup = Setup(fake, agent, clock, log, http, exits)
        started.append(setup)
        return setup

    yield starting
    for setup in reversed(started):
        await setup.stop()


@pytest.fixture
async def setup(start: Callable[..., Any], store_url: str) -> Setup:
    """The agent on SQLite and on Redis, with the fallback call on (the default)."""
    started: Setup = await start(mfa_store=store_url)
    return started


# == reports: signed, repeated, out of order ==


async def test_a_text_asks_for_reports_at_the_public_url(setup: Setup) -> None:
    _, verification_id, _ = await setup.send()
    text = setup.fake.texts()[-1]
    assert text["status_callback"] == (
        f"{setup.agent.settings.swml_proxy_url_base}/delivery/status?verification={verification_id}"
    )
    assert (await setup.verification(verification_id)).delivery is DeliveryState.QUEUED


async def test_delivered_is_raised_once_however_often_it_is_reported(setup: Setup) -> None:
    _, verification_id, sid = await setup.send()
    for status in ("sent", "delivered", "delivered", "sent", "delivered"):
        assert await setup.fake.report(sid, status) == 204
    delivered = setup.log.of("mfa.delivered")
    assert len(delivered) == 1
    assert delivered[0].verification_id == verification_id and delivered[0].origin == "call"
    assert delivered[0].to == "***0143" and delivered[0].error_code is None
    assert (await setup.verification(verification_id)).delivery is DeliveryState.DELIVERED


async def test_the_first_final_report_wins_whatever_comes_after(setup: Setup) -> None:
    _, verification_id, sid = await setup.send()
    assert await setup.fake.report(sid, "undelivered", error_code="30003") == 204
    for status in ("delivered", "sent", "queued", "undelivered"):
        assert await setup.fake.report(sid, status) == 204
    undelivered = setup.log.of("mfa.undelivered")
    assert len(undelivered) == 1 and not setup.log.of("mfa.delivered")
    assert undelivered[0].error_code == "30003" and undelivered[0].reason == "undelivered"
    verification = await setup.verification(verification_id)
    assert verification.delivery is DeliveryState.UNDELIVERED and verification.delivery_error == "30003"


async def test_a_report_that_is_not_signed_with_the_key_is_refused_and_changes_nothing(setup: Setup) -> None:
    _, verification_id, sid = await setup.send()
    for signature in ("none", "wrong_key", "tampered"):
        assert await setup.fake.report(sid, "undelivered", error_code="30003", signature=signature) == 403
    assert not setup.log.of("mfa.undelivered") and not setup.log.of("mfa.delivered")
    assert (await setup.verification(verification_id)).delivery is DeliveryState.QUEUED
    assert not setup.fake.calls()


async def test_signatures_in_the_twilio_header_or_over_the_default_port_are_taken(setup: Setup) -> None:
    _, verification_id, sid = await setup.send()
    assert await setup.fake.report(sid, "sent", header="X-Twilio-Signature") == 204
    assert await setup.fake.report(sid, "delivered", default_port=True) == 204
    assert (await setup.verification(verification_id)).delivery is DeliveryState.DELIVERED


async def test_a_report_for_another_text_or_verification_changes_nothing(setup: Setup) -> None:
    _, first, first_sid = await setup.send()
    _, second, _ = await setup.send()
    # SignalWire signs what it is given: a report naming the first verification in the URL
    # but carrying another text's sid is matched against the sid the first send got.
    text = next(message for message in setup.fake.messages if message["sid"] == first_sid)
    text["status_callback"] = text["status_callback"].replace(first, second)
    assert await setup.fake.report(first_sid, "undelivered", error_code="30003") == 204
    assert (await setup.verification(second)).delivery is DeliveryState.QUEUED
    text["status_callback"] = text["status_callback"].replace(second, "no-such-verification")
    assert await setup.fake.report(first_sid, "undelivered") == 204
    assert not setup.log.of("mfa.undelivered")


async def test_reports_are_answered_fast_without_basic_credentials(setup: Setup) -> None:
    _, _, sid = await setup.send()
    started = asyncio.get_running_loop().time()
    assert await setup.fake.report(sid, "sent") == 204  # the fake sends no Authorization header
    # The answer waits for no call to SignalWire: one store step and the events.
    assert asyncio.get_running_loop().time() - started < WAIT


async def test_nothing_of_the_text_reaches_a_log_or_an_event(
    setup: Setup, caplog: pytest.LogCaptureFixture, delivered: list[Delivered]
) -> None:
    caplog.set_level(logging.DEBUG)
    _, _, sid = await setup.send()
    code = delivered[-1].message.code
    await setup.fake.report(sid, "undelivered", error_code="30003")
    await setup.log.wait_for("mfa.sent", reason="fallback")
    await setup.fake.report(sid, "delivered", signature="wrong_key")
    said = caplog.text + "".join(event.model_dump_json() for event in setup.log.events)
    for secret in (code, CALLER, CALLER[1:], delivered[-1].message.code):
        assert secret not in said


# == the fallback call ==


async def test_an_undelivered_text_is_followed_at_once_by_one_call_with_a_new_code(
    setup: Setup, delivered: list[Delivered]
) -> None:
    platform, verification_id, sid = await setup.send()
    text_code = delivered[-1].message.code
    await setup.fake.report(sid, "undelivered", error_code="30003")
    await setup.fake.report(sid, "undelivered", error_code="30003")
    fallback = await setup.log.wait_for("mfa.sent", reason="fallback")
    assert fallback.channel == "call" and fallback.verification_id == verification_id
    [call] = setup.fake.calls()
    call_code = delivered[-1].message.code
    assert delivered[-1].channel == "call" and call_code != text_code
    assert call["to"] == CALLER and " ".join(call_code) in call["twiml"]
    assert "may not have arrived" in call["twiml"]
    assert (await setup.verification(verification_id)).fallback is Fallback.PLACED
    # The timer's look at the text, 30 s on, finds it followed up already.
    setup.clock.now += 31
    await setup.runtime.follow_up.follow_up_due()  # type: ignore[union-attr]
    assert len(setup.fake.calls()) == 1 and len(setup.log.of("mfa.sent", reason="fallback")) == 1
    verified = await platform.call("verify_mfa", token=call_code)
    assert actions(verified, "set_meta_data") == [{"verified": True}]


async def test_a_text_that_arrives_late_still_verifies(setup: Setup, delivered: list[Delivered]) -> None:
    platform, _, sid = await setup.send()
    text_code = delivered[-1].message.code
    await setup.fake.report(sid, "failed", error_code="30006")
    await setup.log.wait_for("mfa.sent", reason="fallback")
    verified = await platform.call("verify_mfa", token=text_code)
    assert actions(verified, "set_meta_data") == [{"verified": True}]


async def test_a_text_not_reported_delivered_in_30_seconds_is_followed_by_one_call(setup: Setup) -> None:
    _, verification_id, sid = await setup.send()
    await setup.fake.report(sid, "sent")
    follow_up = setup.runtime.follow_up
    assert follow_up is not None
    setup.clock.now += 29
    await follow_up.follow_up_due()
    assert not setup.fake.calls()
    setup.clock.now += 2
    # However many passes race for it (this instance's loop among them), one call.
    await asyncio.gather(*(follow_up.follow_up_due() for _ in range(5)), follow_up.fall_back(verification_id))
    await setup.log.wait_for("mfa.sent", reason="fallback")
    assert len(setup.fake.calls()) == 1
    assert not setup.log.of("mfa.undelivered")  # not reported: only not confirmed


async def test_no_call_follows_a_text_delivered_in_time_or_a_verified_call(setup: Setup) -> None:
    _, _, delivered_sid = await setup.send()
    await setup.fake.report(delivered_sid, "delivered")
    platform, _, _ = await setup.send()
    await platform.call("verify_mfa", token=_code_of(setup, -1))
    setup.clock.now += 31
    await setup.runtime.follow_up.follow_up_due()  # type: ignore[union-attr]
    assert not setup.fake.calls() and not setup.log.of("mfa.sent", reason="fallback")


async def test_a_newer_code_on_the_call_stands_instead_of_a_call(setup: Setup) -> None:
    platform, first, _ = await setup.send()
    setup.clock.now += 10
    await setup.send(platform)  # the caller asked again before any report came
    setup.clock.now += 25  # the first text's wait is over, not the second's
    assert await setup.runtime.follow_up.fall_back(first) is None  # type: ignore[union-attr]
    assert not setup.fake.calls()


async def test_a_limit_that_refuses_the_call_leaves_the_text_alone(start: Callable[..., Any]) -> None:
    setup: Setup = await start(mfa_sends_per_number_per_hour=1)
    platform, verification_id, sid = await setup.send()
    await setup.fake.report(sid, "undelivered", error_code="30003")
    refused = await setup.log.wait_for("mfa.send_failed", verification_id=verification_id)
    assert refused.reason == "sends_per_number_per_hour" and refused.channel == "call"
    assert not setup.fake.calls()
    assert (await setup.verification(verification_id)).fallback is Fallback.REFUSED
    again = await platform.call("send_mfa")
    assert "could not be delivered" in again["response"] and "channel 'call'" in again["response"]
    assert len(setup.fake.texts()) == 1


async def test_no_call_follows_a_text_to_a_range_the_pumping_guard_holds(start: Callable[..., Any]) -> None:
    # The guard as deployed but judging from the first send: the call would be the second code.
    setup: Setup = await start(mfa_fraud_min_sends=1)
    platform, verification_id, sid = await setup.send()
    await setup.fake.report(sid, "undelivered", error_code="30003")
    refused = await setup.log.wait_for("mfa.send_failed", verification_id=verification_id)
    assert refused.reason == "fraud_suspected" and refused.channel == "call"
    [held] = setup.log.of("mfa.fraud_suspected")
    assert (held.prefix, held.channel, held.call_id) == ("+12025", "call", platform.call_id)
    assert not setup.fake.calls()
    assert (await setup.verification(verification_id)).fallback is Fallback.REFUSED


async def test_a_failed_call_gives_its_place_in_the_limits_back(start: Callable[..., Any]) -> None:
    setup: Setup = await start(mfa_sends_per_number_per_hour=2)
    _, verification_id, sid = await setup.send()
    setup.fake.fail_next("500", path_prefix="/api/laml/2010-04-01/Accounts/test-project/Calls.json")
    await setup.fake.report(sid, "undelivered", error_code="30003")
    failed = await setup.log.wait_for("mfa.send_failed", verification_id=verification_id)
    assert failed.reason == "server_error" and failed.channel == "call"
    assert (await setup.verification(verification_id)).fallback is Fallback.FAILED
    await setup.send()  # the second send of the hour: the failed call took no place


async def test_with_the_fallback_off_no_call_is_made_and_a_call_is_offered(start: Callable[..., Any]) -> None:
    setup: Setup = await start(mfa_fallback_to_call=False)
    platform, _, sid = await setup.send()
    await setup.fake.report(sid, "undelivered", error_code="30003")
    setup.clock.now += 31
    await setup.runtime.follow_up.follow_up_due()  # type: ignore[union-attr]
    assert not setup.fake.calls() and not setup.log.of("mfa.sent", reason="fallback")
    offered = await platform.call("send_mfa")
    assert offered["response"].startswith("Nothing new was sent: the last text message with a code could not")
    assert "call send_mfa with channel 'call'" in offered["response"]
    assert len(setup.fake.texts()) == 1
    by_call = await platform.call("send_mfa", channel="call")
    assert "by a phone call" in by_call["response"] and len(setup.fake.calls()) == 1


async def test_the_wait_for_a_report_outlives_a_restart(start: Callable[..., Any]) -> None:
    first: Setup = await start()
    _, verification_id, _ = await first.send()
    await first.stop()  # no instance runs while the 30 s pass
    first.clock.now += 31
    second: Setup = await start(fake=first.fake, clock=first.clock)
    fallback = await second.log.wait_for("mfa.sent", reason="fallback")  # the loop, after its start
    assert fallback.verification_id == verification_id and len(second.fake.calls()) == 1


# == the caller told ==


async def test_the_next_send_mfa_says_a_call_is_coming_and_sends_nothing(setup: Setup) -> None:
    platform, _, sid = await setup.send()
    await setup.fake.report(sid, "undelivered", error_code="30003")
    await setup.log.wait_for("mfa.sent", reason="fallback")
    told = await platform.call("send_mfa")
    assert told["response"].startswith(
        "Nothing new was sent: the text message with the code could not be delivered to the number "
        "ending in 0143, so a phone call that reads out a new code is on its way to that number."
    )
    assert "answer that call" in told["response"]
    assert len(setup.fake.texts()) == 1 and len(setup.fake.calls()) == 1
    # Told once: asked again, a new code goes out.
    await setup.send(platform)
    assert len(setup.fake.texts()) == 2


async def test_a_wrong_code_from_a_caller_whose_text_failed_hears_why(setup: Setup) -> None:
    platform, _, sid = await setup.send()
    await setup.fake.report(sid, "undelivered", error_code="30003")
    await setup.log.wait_for("mfa.sent", reason="fallback")
    wrong = await platform.call("verify_mfa", token="000000" if _code_of(setup, -1) != "000000" else "111111")
    assert wrong["response"].startswith(
        "That code is not correct. 2 tries left for this code. The text message"
    )
    assert (
        "a phone call that reads out a new code is on its way to the number ending in 0143"
        in wrong["response"]
    )
    again = await platform.call("verify_mfa", token="999999" if _code_of(setup, -1) != "999999" else "888888")
    assert "The text message" not in again["response"]  # told once


async def test_the_timeout_call_is_told_as_not_confirmed(setup: Setup) -> None:
    platform, _, _ = await setup.send()
    setup.clock.now += 31
    await setup.runtime.follow_up.follow_up_due()  # type: ignore[union-attr]
    await setup.log.wait_for("mfa.sent", reason="fallback")
    told = await platform.call("send_mfa")
    assert "was not confirmed delivered within 30 seconds" in told["response"]


async def test_a_delivered_text_tells_the_caller_nothing(setup: Setup) -> None:
    platform, _, sid = await setup.send()
    await setup.fake.report(sid, "delivered")
    again = await platform.call("send_mfa")
    assert "was sent by text message" in again["response"]
    assert len(setup.fake.texts()) == 2


# == the call's words, in the agent's language ==


@pytest.mark.parametrize(
    ("language", "words"),
    [
        ("es-US", "Le llamamos porque es posible que su mensaje de texto no haya llegado. Su código"),
        ("fr-FR", "Nous vous appelons car votre SMS n&apos;est peut-être pas arrivé. Votre code"),
    ],
)
async def test_the_call_speaks_the_agents_language(
    start: Callable[..., Any], language: str, words: str
) -> None:
    setup: Setup = await start(mfa_language=language)
    _, _, sid = await setup.send()  # what the model reads stays English; the call is the caller's
    await setup.fake.report(sid, "undelivered")
    await setup.log.wait_for("mfa.sent", reason="fallback")
    [call] = setup.fake.calls()
    assert call["twiml"].startswith(f'<Response><Say language="{language}">{words}')


# == two instances on one Redis ==


async def test_two_instances_raise_each_report_once_and_call_once(
    start: Callable[..., Any], app_redis_url: str
) -> None:
    one: Setup = await start(mfa_store=app_redis_url)
    other: Setup = await start(fake=one.fake, clock=one.clock, mfa_store=app_redis_url)
    _, verification_id, sid = await one.send()
    text = one.fake.texts()[-1]
    answers = []
    for n, status in enumerate(["sent", "undelivered", "delivered", "undelivered", "sent", "failed"]):
        # Each report comes to either instance (behind one public address, the proxy picks).
        target = (other if n % 2 else one).agent.settings.swml_proxy_url_base
        text["status_callback"] = f"{target}/delivery/status?verification={verification_id}"
        answers.append(await one.fake.report(sid, status, error_code="30003"))
    assert answers == [204] * 6
    undelivered = one.log.of("mfa.undelivered") + other.log.of("mfa.undelivered")
    assert len(undelivered) == 1 and undelivered[0].verification_id == verification_id
    assert not one.log.of("mfa.delivered") and not other.log.of("mfa.delivered")
    # The call: woken on whichever instance took the report, and raced by both timers.
    one.clock.now += 31
    await asyncio.gather(
        one.runtime.follow_up.follow_up_due(),  # type: ignore[union-attr]
        other.runtime.follow_up.follow_up_due(),  # type: ignore[union-attr]
    )
    waits = [
        asyncio.ensure_future(log.wait_for("mfa.sent", reason="fallback")) for log in (one.log, other.log)
    ]
    done, pending = await asyncio.wait(waits, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
    for waiting in pending:
        waiting.cancel()
    assert done, "no call followed the undelivered text"
    assert len(one.fake.calls()) == 1
    assert len(one.log.of("mfa.sent", reason="fallback") + other.log.of("mfa.sent", reason="fallback")) == 1


# == without the Signing Key or the public URL ==


@pytest.mark.parametrize("missing", ["signalwire_signing_key", "swml_proxy_url_base"])
async def test_without_the_key_or_the_public_url_no_report_is_asked_for_and_none_awaited(
    start: Callable[..., Any], caplog: pytest.LogCaptureFixture, missing: str
) -> None:
    caplog.set_level(logging.INFO)
    setup: Setup = await start(**{missing: None})
    assert f"delivery reports are off: {missing.upper()} is not set" in caplog.text
    if missing == "signalwire_signing_key":
        setup.fake.signing_key = "unused"  # the platform's requests are not checked either
    _, verification_id, _ = await setup.send()
    assert setup.fake.texts()[-1]["status_callback"] is None
    assert (await setup.verification(verification_id)).delivery is None
    assert setup.runtime.follow_up is None
    setup.clock.now += 31
    await asyncio.sleep(0)  # nothing is waiting for a report that will not come
    assert not setup.fake.calls()
    async with setup.http.post(f"{setup.agent.base_url}/delivery/status", data={"MessageSid": "x"}) as answer:
        assert answer.status == 401  # no such route: like every other path, credentials first


# == the SDK's own signature check, on the routes the platform calls ==


async def test_with_the_key_the_platform_must_sign_swml_and_function_requests(setup: Setup) -> None:
    unsigned = FakePlatform(setup.http, setup.agent.base_url, setup.agent.auth, caller_id_num=CALLER)
    body = b'{"call": {"call_id": "c-1"}}'
    async with setup.http.post(
        f"{setup.agent.base_url}/", data=body, auth=setup.agent.auth, headers=unsigned.signed("", body)
    ) as answer:
        assert answer.status == 403
    signed = setup.platform()
    await signed.start_call()
    unsigned.urls, unsigned.tokens = signed.urls, signed.tokens
    payload = json.dumps(unsigned.payload("send_mfa", {})).encode()
    async with setup.http.post(
        signed.urls["send_mfa"], data=payload, headers={"Content-Type": "application/json"}
    ) as answer:
        assert answer.status == 403
    forged = {"Content-Type": "application/json", "X-SignalWire-Signature": "0" * 40}
    async with setup.http.post(signed.urls["send_mfa"], data=payload, headers=forged) as answer:
        assert answer.status == 403
    assert not setup.fake.texts()
    served = await signed.call("send_mfa")
    assert "was sent by text message" in served["response"]


# == the edge: the signature header before the body, and a small body ==


async def test_a_report_without_a_signature_is_refused_before_its_body_is_read(setup: Setup) -> None:
    port = setup.agent.settings.port
    path = "/delivery/status?verification=x"
    # The head announces a body that never comes: only an edge that refuses first can answer.
    unsigned = await exchange(port, "POST", path, length=5000, authorization=None)
    assert unsigned.status == 403 and unsigned.json()["error"]["code"] == "forbidden"
    assert unsigned.closed  # the body is not read: the connection cannot be used again
    signature = {"X-SignalWire-Signature": "bm90IGEgc2lnbmF0dXJl"}
    large = await exchange(port, "POST", path, length=MIB, authorization=None, headers=signature)
    assert large.status == 413 and large.closed
    streamed = await exchange(
        port, "POST", path, chunked(junk(64 * 1024, 4096)), authorization=None, headers=signature
    )
    assert streamed.status == 413
    assert f"larger than {MAX_REPORT_BYTES} bytes" in streamed.json()["error"]["message"]
    small = await exchange(
        port, "POST", path, [b"MessageSid=x"], length=12, authorization=None, headers=signature
    )
    assert small.status == 403  # read, and the signature does not hold


def _code_of(setup: Setup, index: int) -> str:
    return DELIVERED[index].message.code


def _not_a_code(setup: Setup, guess: str, otherwise: str) -> str:
    """A wrong code: ``guess``, unless that is a code the caller was sent."""
    sent = {delivered.message.code for delivered in DELIVERED}
    return guess if guess not in sent else otherwise


# == metrics ==


async def test_metrics_count_deliveries_by_state_and_fallback_calls(start: Callable[..., Any]) -> None:
    setup: Setup = await start(mfa_sends_per_number_per_hour=4)
    _, _, delivered = await setup.send()
    await setup.fake.report(delivered, "delivered")
    _, _, undelivered = await setup.send()
    await setup.fake.report(undelivered, "undelivered", error_code="30003")
    await setup.log.wait_for("mfa.sent", reason="fallback")
    _, refused_id, failed = await setup.send()  # the hour's fourth send: no room left for its call
    await setup.fake.report(failed, "failed", error_code="30006")
    await setup.log.wait_for("mfa.send_failed", verification_id=refused_id)
    async with setup.http.get(f"{setup.agent.base_url}/metrics", auth=setup.agent.auth) as answer:
        lines = (await answer.text()).splitlines()
    assert 'mfa_deliveries_total{state="delivered"} 1.0' in lines
    assert 'mfa_deliveries_total{state="undelivered"} 1.0' in lines
    assert 'mfa_deliveries_total{state="failed"} 1.0' in lines
    assert 'mfa_fallback_calls_total{outcome="placed"} 1.0' in lines
    assert 'mfa_fallback_calls_total{outcome="not_placed"} 1.0' in lines
    assert 'mfa_sends_total{channel="call",outcome="sent"} 1.0' in lines

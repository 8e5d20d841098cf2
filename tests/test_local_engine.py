"""The local engine: SignalWire's semantics without SignalWire, on SQLite and on Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from config import Settings
from engine.codes import ALPHAS, code_digest, normalise_spoken
from engine.models import CheckOutcome, Event, Status
from engine.runtime import Runtime
from languages import LANGUAGES
from tests.fakes.signalwire_api import make_fake_signalwire
from tests.platform import (
    Delivered,
    FakeClock,
    FakePlatform,
    actions,
    code_in_outbox_body,
    last_code,
    read_outbox,
    record_events,
    serve_agent,
    settings_for,
    signalwire_settings,
)

CALLER = "+12025550143"


async def started_runtime(settings: Settings, clock: FakeClock) -> Runtime:
    runtime = Runtime(settings, clock=clock)
    await runtime.start()
    return runtime


@pytest.fixture
async def runtime(tmp_path: Any, store_url: str) -> AsyncIterator[Runtime]:
    clock = FakeClock()
    settings = settings_for(tmp_path, mfa_store=store_url, mfa_max_attempts=3)
    runtime = await started_runtime(settings, clock)
    yield runtime
    await runtime.close()


async def test_the_local_engine_serves_a_call_like_signalwire_does(tmp_path: Any) -> None:
    settings = settings_for(tmp_path)
    assert settings.mfa_provider == "local"
    async with serve_agent(settings) as agent, aiohttp.ClientSession() as http:
        platform = FakePlatform(http, agent.base_url, agent.auth, caller_id_num=CALLER)
        await platform.start_call()
        sent = await platform.call("send_mfa")
        assert "ending in 0143" in sent["response"]
        message = read_outbox(settings)[-1]
        assert message["to"] == CALLER and message["channel"] == "sms"
        code = last_code(settings)
        assert len(code) == 6 and code.isdigit()
        assert code_in_outbox_body(message["body"]) == code  # the outbox's documented format
        wrong = await platform.call("verify_mfa", token="000000" if code != "000000" else "111111")
        assert "2 tries left" in wrong["response"]
        verified = await platform.call("verify_mfa", token=" ".join(code))
        assert actions(verified, "set_meta_data") == [{"verified": True}]
        used = await platform.call("verify_mfa", token=code + " ")
        assert "verified" in used["response"]  # one success only; a repeat stays verified


async def test_only_an_hmac_of_the_code_is_kept(runtime: Runtime) -> None:
    started = await runtime.engine.start(CALLER, "sms", agent_id="mfa", origin="call", call_id="call-1")
    code = last_code(runtime.settings)
    record = await runtime.store.get_verification(started.verification.id)
    assert record is not None and record.code_digest is not None
    assert record.code_digest == code_digest(runtime.keys.code_key, record.id, code)
    assert code not in {str(value) for value in record.model_dump().values()}


async def test_alphanumeric_codes_are_read_back_from_speech(tmp_path: Any) -> None:
    settings = settings_for(tmp_path, mfa_allow_alphas=True, mfa_token_length=5)
    runtime = await started_runtime(settings, FakeClock())
    try:
        started = await runtime.engine.start(CALLER, "sms", agent_id="mfa", origin="api")
        code = last_code(settings)
        assert len(code) == 5 and set(code) <= set(ALPHAS)
        heard = normalise_spoken(" ".join(code.lower()), allow_alphas=True)
        result = await runtime.engine.check(started.verification.id, heard, origin="api")
        assert result.outcome is CheckOutcome.APPROVED
    finally:
        await runtime.close()


async def test_a_new_code_does_not_reset_the_calls_failures(tmp_path: Any) -> None:
    settings = settings_for(tmp_path, mfa_max_failures_per_call=4, mfa_max_attempts=3)
    runtime = await started_runtime(settings, FakeClock())
    engine = runtime.engine
    try:
        first = await engine.start(CALLER, "sms", agent_id="mfa", origin="call", call_id="call-9")
        for guess in ("000001", "000002", "000003"):
            await engine.check(first.verification.id, guess, origin="call")
        second = await engine.start(CALLER, "sms", agent_id="mfa", origin="call", call_id="call-9")
        result = await engine.check(second.verification.id, "000004", origin="call")
        assert result.outcome is CheckOutcome.LOCKED
        right = await engine.check(second.verification.id, last_code(settings), origin="call")
        assert right.outcome is CheckOutcome.LOCKED
    finally:
        await runtime.close()


async def test_fifty_parallel_checks_count_at_most_max_attempts(runtime: Runtime) -> None:
    engine = runtime.engine
    seen = record_events(runtime)
    started = await engine.start(CALLER, "sms", agent_id="mfa", origin="api")
    code = last_code(runtime.settings)
    guesses = [*[f"{n:06d}" for n in range(50) if f"{n:06d}" != code][:49], code]
    results = await asyncio.gather(*(engine.check(started.verification.id, g, origin="api") for g in guesses))
    final = await engine.get(started.verification.id, origin="api")
    assert final.attempts == 3
    judged = [e for e in seen if e.type in ("mfa.rejected", "mfa.verified")]
    assert len(judged) == 3  # exactly the counted attempts were checked
    approvals = [r for r in results if r.outcome is CheckOutcome.APPROVED]
    assert len(approvals) <= 1
    assert final.status is (Status.APPROVED if approvals else Status.MAX_ATTEMPTS_REACHED)
    assert [e.type for e in seen].count("mfa.locked") == (0 if approvals else 1)


async def test_fifty_parallel_right_codes_verify_exactly_once(runtime: Runtime) -> None:
    engine = runtime.engine
    seen = record_events(runtime)
    started = await engine.start(CALLER, "sms", agent_id="mfa", origin="api")
    code = last_code(runtime.settings)
    results = await asyncio.gather(
        *(engine.check(started.verification.id, code, origin="api") for _ in range(50))
    )
    assert sum(r.outcome is CheckOutcome.APPROVED for r in results) == 1
    # The rest found the tries taken (while the winners were in flight) or the code used.
    later = {CheckOutcome.APPROVED, CheckOutcome.ALREADY_APPROVED, CheckOutcome.MAX_ATTEMPTS_REACHED}
    assert {r.outcome for r in results} <= later
    assert [e.type for e in seen].count("mfa.verified") == 1


async def test_expiry_is_raised_by_the_timer_even_across_a_restart(tmp_path: Any, store_url: str) -> None:
    clock = FakeClock()
    settings = settings_for(tmp_path, mfa_store=store_url, mfa_valid_for=60)
    first = await started_runtime(settings, clock)
    started = await first.engine.start(CALLER, "sms", agent_id="mfa", origin="call", call_id="call-e")
    await first.close()  # no instance runs while the code runs out

    clock.now += 61
    expired = asyncio.Event()
    seen: list[Event] = []
    second = Runtime(settings, clock=clock)

    async def capture(event: Event) -> None:
        seen.append(event)
        if event.type == "mfa.expired":
            expired.set()

    second.publisher.add_sink("test", capture)
    await second.start()
    try:
        async with asyncio.timeout(5):
            await expired.wait()
        assert [e.verification_id for e in seen if e.type == "mfa.expired"] == [started.verification.id]
        assert (await second.engine.get(started.verification.id, origin="call")).status is Status.EXPIRED
        assert await second.engine.expire_due() == 0  # raised once, not again
    finally:
        await second.close()


async def test_local_codes_can_go_out_through_signalwire_messaging(
    aiohttp_server: Any, tmp_path: Any, delivered: list[Delivered]
) -> None:
    fake = make_fake_signalwire()
    server = await aiohttp_server(fake.app)
    settings = signalwire_settings(
        tmp_path, server.port, mfa_provider="local", mfa_delivery="signalwire", mfa_from_number="+12025550100"
    )
    runtime = await started_runtime(settings, FakeClock())
    try:
        started = await runtime.engine.start(CALLER, "sms", agent_id="mfa", origin="api")
        message = fake.messages[-1]
        assert message["to"] == CALLER and message["from"] == "+12025550100"
        code = delivered[-1].message.code
        template = settings.mfa_message or LANGUAGES[settings.mfa_language].sms_message
        assert message["body"] == f"{template} {code}"  # the SMS text, as it always was
        assert fake.sent == []  # the MFA API was not used
        result = await runtime.engine.check(started.verification.id, code, origin="api")
        assert result.outcome is CheckOutcome.APPROVED
    finally:
        await runtime.close()

"""The store's contract (engine/stores/base.py), run against SQLite and Redis alike.

One section per job (one Protocol each); every test names the job it exercises, and
the `store` fixture opens each backend fresh for it.

Times are a fixed fake clock; only the TTL tests wait, briefly, on the real one.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any
from uuid import uuid4

import pytest

from engine.errors import StoreUnavailable
from engine.models import Status, Verification
from engine.stores import (
    AttemptGate,
    BroadcastStore,
    ClaimState,
    ClaimStore,
    OutboxStore,
    Record,
    RecordStore,
    RedisStore,
    SqliteStore,
    Store,
    VerificationStore,
    WindowStore,
    open_store,
)
from engine.stores import sqlite as sqlite_module
from engine.stores.sqlite import CHECKPOINT_EVERY_WRITES, WRITES_BESIDE_THE_COPY
from engine.stores.windows import Refused, Window

NOW = 1_700_000_000.0
SHORT_TTL = 0.2  # seconds: long enough to observe, short enough to wait out


def make_verification(**changes: Any) -> Verification:
    fields: dict[str, Any] = {
        "id": str(uuid4()),
        "to": "+15551234567",
        "channel": "sms",
        "max_attempts": 3,
        "created_at": NOW,
        "expires_at": NOW + 600,
        "updated_at": NOW,
        "agent_id": "mfa",
        "provider": "local",
        "origin": "api",
    }
    return Verification(**(fields | changes))


async def created(store: VerificationStore, **changes: Any) -> Verification:
    verification = make_verification(**changes)
    await store.create_verification(verification)
    return verification


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``check`` until it holds; for what only the real clock (a TTL) can bring about."""
    for _ in range(150):  # 3 s at most
        if await check():
            return
        await asyncio.sleep(0.02)
    pytest.fail("the condition did not hold within 3 s")


# -- verifications (VerificationStore) --------------------------------------


async def test_create_then_get_returns_the_same_verification(store: VerificationStore) -> None:
    full = await created(store, call_id="call-1", provider_ref="ref-1", code_digest="d" * 64, channel="call")
    bare = await created(store)

    assert await store.get_verification(full.id) == full
    assert await store.get_verification(bare.id) == bare


async def test_creating_an_existing_id_is_refused(store: VerificationStore) -> None:
    verification = await created(store)

    with pytest.raises(ValueError, match="already exists"):
        await store.create_verification(verification)


async def test_unknown_ids_are_none(store: VerificationStore) -> None:
    assert await store.get_verification("nope") is None
    assert await store.begin_attempt("nope", NOW) is None
    assert await store.transition("nope", Status.APPROVED, NOW) is None


async def test_attempts_are_counted_up_to_max_then_refused(store: VerificationStore) -> None:
    verification = await created(store, max_attempts=3)

    for expected in (1, 2, 3):
        attempt = await store.begin_attempt(verification.id, NOW + expected)
        assert attempt is not None
        assert (attempt.gate, attempt.changed) == (AttemptGate.COUNTED, False)
        assert attempt.verification.attempts == expected

    refused = await store.begin_attempt(verification.id, NOW + 10)
    assert refused is not None
    assert (refused.gate, refused.changed) == (AttemptGate.NO_ATTEMPTS_LEFT, False)
    # The last counted attempt decides how it ends, so it is still pending.
    assert refused.verification.status is Status.PENDING
    stored = await store.get_verification(verification.id)
    assert stored is not None
    assert (stored.status, stored.attempts) == (Status.PENDING, 3)


async def test_an_attempt_after_expiry_expires_it_once(store: VerificationStore) -> None:
    verification = await created(store, expires_at=NOW + 600)

    expired = await store.begin_attempt(verification.id, NOW + 600)
    assert expired is not None
    assert (expired.gate, expired.changed) == (AttemptGate.EXPIRED, True)
    assert expired.verification.status is Status.EXPIRED
    assert expired.verification.attempts == 0

    later = await store.begin_attempt(verification.id, NOW + 601)
    assert later is not None
    assert (later.gate, later.changed) == (AttemptGate.NOT_PENDING, False)
    assert await store.due_for_expiry(NOW + 1000) == []


async def test_an_attempt_from_another_call_finds_nothing_and_counts_nothing(
    store: VerificationStore,
) -> None:
    verification = await created(store, call_id="call-1")

    assert await store.begin_attempt(verification.id, NOW, call_id="call-2") is None
    assert (await store.get_verification(verification.id)).attempts == 0  # type: ignore[union-attr]
    attempt = await store.begin_attempt(verification.id, NOW, call_id="call-1")
    assert attempt is not None and attempt.gate is AttemptGate.COUNTED


def budgets_of(limit: int) -> Callable[[str, str | None], tuple[Window, ...]]:
    """Failure budgets as the engine's limits give them: the call's (if any), then the number's."""

    def budgets(to: str, call_id: str | None) -> tuple[Window, ...]:
        number = Window(f"failures:number:{to}", limit, 3600)
        return (Window(f"failures:call:{call_id}", limit, 3600), number) if call_id else (number,)

    return budgets


async def test_an_attempt_from_another_interface_finds_nothing_and_counts_nothing(
    store: VerificationStore,
) -> None:
    verification = await created(store, call_id="call-1", origin="call")

    assert await store.begin_attempt(verification.id, NOW, origin="api") is None
    assert await store.begin_attempt(verification.id, NOW, origin="workflow") is None
    assert (await store.get_verification(verification.id)).attempts == 0  # type: ignore[union-attr]
    attempt = await store.begin_attempt(verification.id, NOW, origin="call")
    assert attempt is not None and attempt.gate is AttemptGate.COUNTED


async def test_an_attempt_counts_a_failure_in_every_budget_before_the_code_is_judged(
    store: VerificationStore,
) -> None:
    budgets = budgets_of(2)
    verification = await created(store, call_id="call-1", max_attempts=5)

    first = await store.begin_attempt(verification.id, NOW, budgets=budgets)
    assert first is not None and first.gate is AttemptGate.COUNTED
    assert first.budgets == budgets(verification.to, "call-1") and first.room == (1, 1)
    second = await store.begin_attempt(verification.id, NOW + 1, call_id="call-1", budgets=budgets)
    assert second is not None and second.room == (0, 0)
    for call_id in ("call-1", None):  # the SWAIG path names the call; the HTTP API does not
        refused = await store.begin_attempt(verification.id, NOW + 2, call_id=call_id, budgets=budgets)
        assert refused is not None and refused.gate is AttemptGate.OVER_BUDGET
        # The call's budget is the first full one; it frees when the oldest failure leaves it.
        assert refused.refused == Refused(index=0, retry_after=pytest.approx(3598))
        assert refused.verification.attempts == 2  # nothing counted
    # Another call's code to the same number meets the number's budget.
    other = await created(store, call_id="call-2")
    elsewhere = await store.begin_attempt(other.id, NOW + 3, budgets=budgets)
    assert elsewhere is not None and elsewhere.refused == Refused(index=1, retry_after=pytest.approx(3597))
    # A code to another number, on no call, is not touched by either.
    free = await created(store, to="+15557654321")
    assert (await store.begin_attempt(free.id, NOW, budgets=budgets)).gate is AttemptGate.COUNTED  # type: ignore[union-attr]


async def test_a_send_meets_the_failures_that_attempts_counted(store: Store) -> None:
    budgets = budgets_of(1)
    verification = await created(store, call_id="call-1")
    await store.begin_attempt(verification.id, NOW, budgets=budgets)
    call_budget = budgets(verification.to, "call-1")[0]
    tested = Window(call_budget.key, call_budget.limit, call_budget.seconds, counted=False)
    sends = window("sends", 5)

    assert await store.hit([sends, tested], NOW + 10) == Refused(index=1, retry_after=pytest.approx(3590))
    # Tested, never counted: the refused hit left nothing, and giving back frees it.
    await store.unhit(budgets(verification.to, "call-1"), NOW)
    assert await store.hit([tested, sends], NOW + 11) is None
    assert await store.hit([tested, sends], NOW + 12) is None


async def test_parallel_attempts_never_pass_a_budget(store: VerificationStore) -> None:
    budgets = budgets_of(5)
    codes = [await created(store, call_id="call-1", max_attempts=3) for _ in range(4)]

    attempts = await asyncio.gather(
        *(store.begin_attempt(code.id, NOW, budgets=budgets) for code in codes for _ in range(10))
    )

    gates = [attempt.gate for attempt in attempts if attempt is not None]
    assert gates.count(AttemptGate.COUNTED) == 5
    assert sum(code.attempts for code in [await store.get_verification(c.id) for c in codes] if code) == 5


async def test_an_attempt_on_a_verified_call_is_not_counted(store: Store) -> None:
    verification = await created(store, call_id="call-1")
    assert (await store.begin_attempt(verification.id, NOW, verified_kind="call")).gate is AttemptGate.COUNTED  # type: ignore[union-attr]
    await store.put_record("call", "call-1", {"verified": True}, 3600)

    attempt = await store.begin_attempt(verification.id, NOW, verified_kind="call", budgets=budgets_of(5))

    assert attempt is not None and attempt.gate is AttemptGate.CALL_VERIFIED
    assert attempt.verification.attempts == 1


async def test_a_calls_live_codes_are_listed_newest_first(store: VerificationStore) -> None:
    first = await created(store, call_id="call-1", created_at=NOW, expires_at=NOW + 600)
    second = await created(store, call_id="call-1", created_at=NOW + 10, expires_at=NOW + 610)
    short = await created(store, call_id="call-1", created_at=NOW + 20, expires_at=NOW + 30)
    ended = await created(store, call_id="call-1", created_at=NOW + 30, expires_at=NOW + 630)
    await store.transition(ended.id, Status.CANCELED, NOW + 31)
    await created(store, call_id="call-2")
    await created(store)

    live = await store.pending_for_call("call-1", NOW + 40)

    assert [v.id for v in live] == [second.id, first.id]  # not the expired one, nor the ended one
    assert [v.id for v in await store.pending_for_call("call-1", NOW + 25)] == [short.id, second.id, first.id]
    assert await store.pending_for_call("no-such-call", NOW) == []


async def test_only_one_of_many_concurrent_transitions_wins(store: VerificationStore) -> None:
    verification = await created(store)

    results = await asyncio.gather(
        *(store.transition(verification.id, Status.APPROVED, NOW + 1) for _ in range(50))
    )

    winners = [result for result in results if result is not None]
    assert len(winners) == 1
    assert winners[0].status is Status.APPROVED
    assert winners[0].updated_at == NOW + 1
    assert await store.get_verification(verification.id) == winners[0]


async def test_a_record_given_to_a_transition_is_kept_only_by_the_one_that_happens(store: Store) -> None:
    verification = await created(store, call_id="call-1")
    first = Record("call", "call-1", {"verified": True, "by": "first"}, ttl=3600)
    late = Record("call", "call-1", {"verified": True, "by": "late"}, ttl=3600)

    assert await store.transition(verification.id, Status.APPROVED, NOW + 1, record=first) is not None
    assert await store.transition(verification.id, Status.EXPIRED, NOW + 2, record=late) is None
    assert await store.get_record("call", "call-1") == {"verified": True, "by": "first"}
    assert await store.transition("nope", Status.APPROVED, NOW, record=late) is None
    assert await store.get_record("call", "call-1") == {"verified": True, "by": "first"}


async def test_an_approval_gives_back_its_failure_whether_or_not_it_wins(store: VerificationStore) -> None:
    budgets = budgets_of(1)
    verification = await created(store, call_id="call-1", max_attempts=5)
    counted = await store.begin_attempt(verification.id, NOW, budgets=budgets)
    assert counted is not None and counted.room == (0, 0)  # the one failure either budget has room for

    approved = await store.transition(verification.id, Status.APPROVED, NOW + 1, give_back=counted.budgets)

    assert approved is not None and approved.status is Status.APPROVED
    # The call's and the number's failure are back: another code on the call may be tried.
    again = await created(store, call_id="call-1", max_attempts=5)
    late = await store.begin_attempt(again.id, NOW + 2, budgets=budgets)
    assert late is not None and late.gate is AttemptGate.COUNTED
    # A right code that loses the race gives its failure back all the same.
    lost = await store.transition(verification.id, Status.APPROVED, NOW + 3, give_back=late.budgets)
    assert lost is None
    third = await created(store, call_id="call-1", max_attempts=5)
    assert (await store.begin_attempt(third.id, NOW + 4, budgets=budgets)).gate is AttemptGate.COUNTED  # type: ignore[union-attr]


async def test_another_instance_finds_a_verification_this_one_never_saw(
    make_store: Callable[[], Store],
) -> None:
    here, there = make_store(), make_store()
    await here.open()
    await there.open()
    try:
        verification = make_verification(call_id="call-1")
        await here.create_verification(verification)

        assert await there.begin_attempt(verification.id, NOW, call_id="call-2") is None
        attempt = await there.begin_attempt(verification.id, NOW, call_id="call-1", budgets=budgets_of(3))
        assert attempt is not None and attempt.gate is AttemptGate.COUNTED and attempt.room == (2, 2)
        again = await here.begin_attempt(verification.id, NOW, call_id="call-1", budgets=budgets_of(3))
        assert again is not None and again.verification.attempts == 2 and again.room == (1, 1)
    finally:
        await here.close()
        await there.close()


async def test_a_transition_keeps_the_provider_ref(store: VerificationStore) -> None:
    kept = await created(store, provider_ref="original")

    ended = await store.transition(kept.id, Status.CANCELED, NOW)
    assert ended is not None
    assert ended.provider_ref == "original"


async def test_concurrent_attempts_count_exactly_max_attempts(store: VerificationStore) -> None:
    verification = await created(store, max_attempts=3)

    attempts = await asyncio.gather(*(store.begin_attempt(verification.id, NOW) for _ in range(50)))

    gates = [attempt.gate for attempt in attempts if attempt is not None]
    assert len(gates) == 50
    assert gates.count(AttemptGate.COUNTED) == 3
    assert gates.count(AttemptGate.NO_ATTEMPTS_LEFT) == 47
    stored = await store.get_verification(verification.id)
    assert stored is not None
    assert stored.attempts == 3


async def test_a_refunded_attempt_can_be_made_again(store: VerificationStore) -> None:
    verification = await created(store, max_attempts=1)
    budgets = budgets_of(1)
    await store.begin_attempt(verification.id, NOW, budgets=budgets)

    await store.refund_attempt(verification.id, budgets(verification.to, None), NOW)
    await store.refund_attempt(verification.id, (), NOW)  # never below zero

    stored = await store.get_verification(verification.id)
    assert stored is not None
    assert stored.attempts == 0
    attempt = await store.begin_attempt(verification.id, NOW, budgets=budgets)  # the failure is back too
    assert attempt is not None
    assert attempt.gate is AttemptGate.COUNTED


async def test_a_refund_does_not_touch_an_ended_verification(store: VerificationStore) -> None:
    verification = await created(store)
    await store.begin_attempt(verification.id, NOW)
    await store.transition(verification.id, Status.APPROVED, NOW)

    await store.refund_attempt(verification.id, (), NOW)

    stored = await store.get_verification(verification.id)
    assert stored is not None
    assert stored.attempts == 1


async def test_expiry_schedule_lists_pending_verifications_by_expiry(store: VerificationStore) -> None:
    assert await store.next_expiry() is None
    third = await created(store, expires_at=NOW + 30)
    first = await created(store, expires_at=NOW + 10)
    second = await created(store, expires_at=NOW + 20)

    assert await store.next_expiry() == NOW + 10
    assert await store.due_for_expiry(NOW + 9) == []
    assert await store.due_for_expiry(NOW + 10) == [first.id]
    assert await store.due_for_expiry(NOW + 100) == [first.id, second.id, third.id]
    assert await store.due_for_expiry(NOW + 100, limit=2) == [first.id, second.id]


async def test_ending_a_verification_takes_it_off_the_schedule(store: VerificationStore) -> None:
    first = await created(store, expires_at=NOW + 10)
    second = await created(store, expires_at=NOW + 20)

    await store.transition(first.id, Status.APPROVED, NOW + 5)

    assert await store.next_expiry() == NOW + 20
    assert await store.due_for_expiry(NOW + 100) == [second.id]
    await store.transition(second.id, Status.EXPIRED, NOW + 20)
    assert await store.next_expiry() is None
    assert await store.due_for_expiry(NOW + 100) == []


# -- counting windows (WindowStore) ---------------------------------------


def window(key: str, limit: int, seconds: float = 60, *, exact: bool = True) -> Window:
    return Window(key, limit, seconds, exact=exact)


async def retry_after(store: WindowStore, windows: list[Window], now: float) -> float:
    """0 if the hit was counted, else the seconds it says to wait."""
    refused = await store.hit(windows, now)
    return 0.0 if refused is None else refused.retry_after


async def test_an_exact_window_slides(store: WindowStore) -> None:
    number = [window("number", 3)]
    for offset in (0, 10, 20):
        assert await retry_after(store, number, NOW + offset) == 0

    # Full: the oldest event (at NOW) leaves the window at NOW + 60.
    assert await retry_after(store, number, NOW + 30) == pytest.approx(30)
    assert await retry_after(store, number, NOW + 59.5) == pytest.approx(0.5)
    # The refused tries were not recorded; at NOW + 60 the first event is out.
    assert await retry_after(store, number, NOW + 60) == 0
    assert await retry_after(store, number, NOW + 61) == pytest.approx(9)
    assert await retry_after(store, [window("other", 3)], NOW + 61) == 0


async def test_hits_at_the_same_instant_all_count(store: WindowStore) -> None:
    agent = [window("agent", 2)]
    assert await retry_after(store, agent, NOW) == 0
    assert await retry_after(store, agent, NOW) == 0
    assert await retry_after(store, agent, NOW) == pytest.approx(60)


async def test_a_hit_counts_in_every_window_or_in_none(store: WindowStore) -> None:
    call, number = window("call", 5), window("number", 1)
    assert await store.hit([call, number], NOW) is None

    refused = await store.hit([call, number], NOW + 1)

    assert refused == Refused(index=1, retry_after=pytest.approx(59))
    # The refused send left nothing in the call's window: four more fit, not three.
    for offset in range(2, 6):
        assert await store.hit([call], NOW + offset) is None
    assert await store.hit([call], NOW + 6) == Refused(index=0, retry_after=pytest.approx(54))


async def test_unhit_takes_back_the_newest_event(store: WindowStore) -> None:
    call, agent = window("call", 1), window("agent", 1, exact=False)
    assert await store.hit([call, agent], NOW) is None
    assert await store.hit([call, agent], NOW + 1) is not None

    await store.unhit([call, agent], NOW)

    assert await store.hit([call, agent], NOW + 2) is None


# A bucketed window of 60 s starts here (NOW itself is not on a bucket boundary).
BUCKET = (NOW // 60 + 1) * 60


async def test_a_bucketed_window_weighs_the_previous_bucket(store: WindowStore) -> None:
    agent = [window("agent", 10, exact=False)]
    for _ in range(10):
        assert await retry_after(store, agent, BUCKET) == 0
    # Full in its own bucket: it waits for the next bucket, and then until the ten
    # events, now in the previous bucket, weigh at most 9 (a tenth of 60 s).
    assert await retry_after(store, agent, BUCKET + 10) == pytest.approx(56)
    assert await retry_after(store, agent, BUCKET + 65) > 0  # weighs 10 x 55/60: 9.2
    assert await retry_after(store, agent, BUCKET + 66) == 0  # weighs exactly 9

    # Halfway through the bucket after that: the previous bucket holds 1 and weighs 0.5.
    assert await retry_after(store, agent, BUCKET + 150) == 0
    for _ in range(8):
        assert await retry_after(store, agent, BUCKET + 150) == 0
    # 0.5 + 9 + 1 > 10: the next fits when the previous bucket's weight reaches 0.
    assert await retry_after(store, agent, BUCKET + 150) == pytest.approx(30)


async def test_a_bucketed_window_counts_every_event_of_its_bucket(store: WindowStore) -> None:
    agent = [window("agent", 100_000, exact=False)]
    for offset in range(300):
        assert await retry_after(store, agent, BUCKET + offset * 0.1) == 0
    # The same key with a limit of 300: full, and free again once the 300 weigh 299.
    assert await store.hit([window("agent", 300, exact=False)], BUCKET + 30) == Refused(
        index=0, retry_after=pytest.approx(60 + 60 * (1 - 299 / 300) - 30)
    )


# -- repeated requests (ClaimStore) ---------------------------------------


async def test_claim_runs_then_completes(store: ClaimStore) -> None:
    assert (await store.claim("request", ttl=30)).state is ClaimState.NEW
    assert (await store.claim("request", ttl=30)).state is ClaimState.RUNNING

    await store.complete("request", {"response": "sent", "n": 1}, ttl=30)

    done = await store.claim("request", ttl=30)
    assert done.state is ClaimState.DONE
    assert done.result == {"response": "sent", "n": 1}


async def test_a_released_claim_is_new_again(store: ClaimStore) -> None:
    await store.claim("request", ttl=30)

    await store.release("request")

    assert (await store.claim("request", ttl=30)).state is ClaimState.NEW


async def test_an_abandoned_claim_is_free_after_its_ttl(store: ClaimStore) -> None:
    assert (await store.claim("request", ttl=SHORT_TTL)).state is ClaimState.NEW
    assert (await store.claim("request", ttl=SHORT_TTL)).state is ClaimState.RUNNING

    async def free() -> bool:
        return (await store.claim("request", ttl=30)).state is ClaimState.NEW

    await eventually(free)


async def test_a_completed_claim_is_forgotten_after_its_ttl(store: ClaimStore) -> None:
    await store.claim("request", ttl=30)
    await store.complete("request", {"response": "sent"}, ttl=SHORT_TTL)
    assert (await store.claim("request", ttl=30)).state is ClaimState.DONE

    async def free() -> bool:
        return (await store.claim("request", ttl=30)).state is ClaimState.NEW

    await eventually(free)
    assert (await store.claim("request", ttl=30)).state is ClaimState.RUNNING


# -- records (RecordStore) ------------------------------------------------


async def test_records_round_trip_until_their_ttl_passes(store: RecordStore) -> None:
    assert await store.get_record("call", "c1") is None

    await store.put_record("call", "c1", {"verified": True, "tries": [1, 2]}, ttl=60)
    await store.put_record("orchestration", "c1", {"state": "waiting"}, ttl=SHORT_TTL)

    assert await store.get_record("call", "c1") == {"verified": True, "tries": [1, 2]}
    await store.put_record("call", "c1", {"verified": False}, ttl=60)
    assert await store.get_record("call", "c1") == {"verified": False}

    async def forgotten() -> bool:
        return await store.get_record("orchestration", "c1") is None

    await eventually(forgotten)


async def test_a_deleted_record_is_gone_and_only_it(store: RecordStore) -> None:
    await store.put_record("orchestration", "i1", {"verification_id": "v1"}, ttl=60)
    await store.put_record("orchestration", "i2", {"verification_id": "v2"}, ttl=60)
    await store.put_record("call", "i1", {"verified": True}, ttl=60)

    await store.delete_record("orchestration", "i1")
    await store.delete_record("orchestration", "never-kept")  # nothing there: nothing happens

    assert await store.get_record("orchestration", "i1") is None
    assert await store.get_record("orchestration", "i2") == {"verification_id": "v2"}
    assert await store.get_record("call", "i1") == {"verified": True}
    await store.put_record("orchestration", "i1", {"verification_id": "v3"}, ttl=60)
    assert await store.get_record("orchestration", "i1") == {"verification_id": "v3"}


# -- outbox (OutboxStore) -------------------------------------------------


async def test_outbox_hands_out_due_items_under_a_lease(store: OutboxStore) -> None:
    await store.enqueue("webhooks", "a", "payload-a", due_at=NOW)
    await store.enqueue("webhooks", "b", "payload-b", due_at=NOW + 10)
    await store.enqueue("webhooks", "a", "duplicate", due_at=NOW - 100)  # ignored: already queued
    assert await store.backlog("webhooks") == 2
    assert await store.backlog("other") == 0

    claimed = await store.claim_due("webhooks", now=NOW, lease=30, limit=10)
    assert [(item.id, item.payload, item.attempts) for item in claimed] == [("a", "payload-a", 0)]

    # a is leased until NOW + 30, b is not due until NOW + 10.
    assert await store.claim_due("webhooks", now=NOW + 5, lease=30, limit=10) == []
    assert [item.id for item in await store.claim_due("webhooks", now=NOW + 10, lease=30, limit=10)] == ["b"]
    # Neither was acknowledged: a comes back when its lease ends.
    assert [item.id for item in await store.claim_due("webhooks", now=NOW + 30, lease=30, limit=10)] == ["a"]
    assert await store.backlog("webhooks") == 2


async def test_outbox_respects_the_limit(store: OutboxStore) -> None:
    for index in range(5):
        await store.enqueue("webhooks", f"item-{index}", "{}", due_at=NOW + index)

    first = await store.claim_due("webhooks", now=NOW + 10, lease=30, limit=2)
    second = await store.claim_due("webhooks", now=NOW + 10, lease=30, limit=10)

    assert [item.id for item in first] == ["item-0", "item-1"]
    assert [item.id for item in second] == ["item-2", "item-3", "item-4"]


async def test_outbox_retry_counts_attempts_and_ack_removes(store: OutboxStore) -> None:
    await store.enqueue("webhooks", "a", "payload-a", due_at=NOW)
    await store.claim_due("webhooks", now=NOW, lease=30, limit=10)

    await store.retry_later("webhooks", "a", due_at=NOW + 100)

    assert await store.claim_due("webhooks", now=NOW + 99, lease=30, limit=10) == []
    [item] = await store.claim_due("webhooks", now=NOW + 100, lease=30, limit=10)
    assert (item.id, item.payload, item.attempts) == ("a", "payload-a", 1)

    await store.ack("webhooks", "a")

    assert await store.backlog("webhooks") == 0
    assert await store.claim_due("webhooks", now=NOW + 1000, lease=30, limit=10) == []
    await store.retry_later("webhooks", "a", due_at=NOW)  # an acknowledged item stays gone
    assert await store.backlog("webhooks") == 0


# -- server keys (KeyStore) -----------------------------------------------


async def test_server_keys_keep_the_first_proposal(store: Store, make_store: Callable[[], Store]) -> None:
    first = {"swaig": secrets.token_bytes(32), "webhook": secrets.token_bytes(32)}
    assert await store.server_keys(first) == first
    later = {"swaig": secrets.token_bytes(32), "webhook": secrets.token_bytes(32)}
    assert await store.server_keys(later) == first
    await store.close()

    reopened = make_store()
    await reopened.open()
    try:
        assert await reopened.server_keys(later) == first
        fresh = {"swaig": later["swaig"], "other": later["webhook"]}
        assert await reopened.server_keys(fresh) == {"swaig": first["swaig"], "other": later["webhook"]}
    finally:
        await reopened.close()


async def test_instances_racing_to_keep_a_server_key_agree(make_store: Callable[[], Store]) -> None:
    first, second = make_store(), make_store()
    await first.open()
    await second.open()
    try:
        answers = await asyncio.gather(
            *(instance.server_keys({"race": secrets.token_bytes(32)}) for instance in (first, second) * 5)
        )
    finally:
        await first.close()
        await second.close()

    assert len({answer["race"] for answer in answers}) == 1


# -- event fan-out (BroadcastStore) ---------------------------------------


async def test_broadcast_reaches_every_listener(store: BroadcastStore) -> None:
    async with aclosing(store.listen()) as first, aclosing(store.listen()) as second:
        # Right after listen(), without waiting: nothing broadcast from now on is lost.
        await store.broadcast("hello")
        await store.broadcast("again")

        received = await asyncio.wait_for(
            asyncio.gather(*(anext(listener) for listener in (first, second, first, second))), timeout=5
        )

    assert received == ["hello", "hello", "again", "again"]


async def test_a_listener_ends_when_the_store_closes(store: Store) -> None:
    listener = store.listen()
    await store.broadcast("hello")
    assert await asyncio.wait_for(anext(listener), timeout=5) == "hello"

    await store.close()

    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(listener), timeout=5)


async def test_redis_broadcast_reaches_other_instances(make_store: Callable[[], Store]) -> None:
    listening, sending = make_store(), make_store()
    if isinstance(listening, SqliteStore):
        pytest.skip("SQLite has one instance: its fan-out is in-process")
    await listening.open()
    await sending.open()
    try:
        async with aclosing(listening.listen()) as listener:
            await listening.broadcast("subscribed")  # our own broadcast proves the subscription
            assert await asyncio.wait_for(anext(listener), timeout=5) == "subscribed"

            await sending.broadcast("from another instance")

            assert await asyncio.wait_for(anext(listener), timeout=5) == "from another instance"
    finally:
        await listening.close()
        await sending.close()


# -- failures and construction ----------------------------------------------


async def test_sqlite_gives_a_file_from_before_origins_its_origins(tmp_path: Any) -> None:
    path = tmp_path / "mfa.sqlite3"
    store = SqliteStore(str(path))
    await store.open()
    on_call, by_api = make_verification(call_id="call-1", origin="call"), make_verification()
    for verification in (on_call, by_api):
        await store.create_verification(verification)
    await store.close()
    old = sqlite3.connect(path)
    old.execute('ALTER TABLE verification DROP COLUMN "origin"')  # as the file was before
    old.commit()
    old.close()

    reopened = SqliteStore(str(path))
    await reopened.open()
    try:
        assert (await reopened.get_verification(on_call.id)).origin == "call"  # type: ignore[union-attr]
        assert (await reopened.get_verification(by_api.id)).origin == "api"  # type: ignore[union-attr]
        assert await reopened.begin_attempt(on_call.id, NOW, origin="api") is None
    finally:
        await reopened.close()


async def test_sqlite_creates_missing_folders(tmp_path: Any) -> None:
    store = SqliteStore(str(tmp_path / "a" / "b" / "mfa.sqlite3"))
    await store.open()
    try:
        await store.ping()
    finally:
        await store.close()
    assert (tmp_path / "a" / "b" / "mfa.sqlite3").exists()


async def test_sqlite_on_an_unusable_path_is_unavailable(tmp_path: Any) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    store = SqliteStore(str(tmp_path / "a-file" / "mfa.sqlite3"))

    with pytest.raises(StoreUnavailable):
        await store.open()
    await store.close()


async def test_sqlite_on_a_file_that_is_not_a_database_is_unavailable(tmp_path: Any) -> None:
    (tmp_path / "mfa.sqlite3").write_bytes(b"definitely not SQLite " * 100)
    store = SqliteStore(str(tmp_path / "mfa.sqlite3"))

    with pytest.raises(StoreUnavailable):
        await store.open()
    await store.close()


@pytest.fixture
async def sqlite_store(tmp_path: Any) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(str(tmp_path / "mfa.sqlite3"))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def test_sqlite_waits_for_another_process_s_lock_without_holding_up_the_event_loop(
    sqlite_store: SqliteStore, tmp_path: Any
) -> None:
    other = sqlite3.connect(tmp_path / "mfa.sqlite3", isolation_level=None)  # as another process would
    other.execute("BEGIN IMMEDIATE")
    try:
        claiming = asyncio.ensure_future(sqlite_store.claim("key", ttl=30))
        # The event loop goes on: timers fire and reads are answered while the claim waits.
        await asyncio.sleep(0.05)
        assert await sqlite_store.get_record("call", "anything") is None
        assert not claiming.done()
    finally:
        other.execute("COMMIT")
        other.close()
    assert (await asyncio.wait_for(claiming, timeout=5)).state is ClaimState.NEW
    assert (await sqlite_store.claim("key", ttl=30)).state is ClaimState.RUNNING


async def settled(store: SqliteStore) -> None:
    """The store's first write starts a purge; once it is over, writes run on the event loop."""
    await store.put_record("call", "first", {}, ttl=30)
    if store._maintenance is not None:
        await store._maintenance


async def test_sqlite_answers_each_write_of_a_turn_once_their_one_commit_is_made(
    sqlite_store: SqliteStore, tmp_path: Any
) -> None:
    await settled(sqlite_store)
    other = sqlite3.connect(tmp_path / "mfa.sqlite3", isolation_level=None)  # as another process would
    other.execute("PRAGMA wal_checkpoint(RESTART)")  # the next write starts the log from its beginning
    seen: list[bool] = []

    async def write_then_look(number: int) -> None:
        await sqlite_store.complete(f"key-{number}", {"n": number}, ttl=30)
        row = other.execute("SELECT result FROM claim WHERE key = ?", (f"key-{number}",)).fetchone()
        seen.append(row == (json.dumps({"n": number}, separators=(",", ":")),))

    try:
        await asyncio.gather(*(write_then_look(number) for number in range(20)))
        # Every caller heard back only once its write was committed: another process saw it.
        assert seen == [True] * 20
        # One commit for the turn: the claim table's pages went to the log once, not 20 times.
        frames = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    finally:
        other.close()
    assert 0 < frames < 10


class _FailingCommit:
    """The store's connection, but a COMMIT fails as on a full or failing disk."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    @property
    def in_transaction(self) -> bool:
        return self.db.in_transaction

    def execute(self, sql: str, *parameters: Any) -> sqlite3.Cursor:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("disk I/O error")
        return self.db.execute(sql, *parameters)


async def test_sqlite_a_failed_commit_fails_every_write_of_its_turn_and_no_read_saw_them(
    sqlite_store: SqliteStore,
) -> None:
    await settled(sqlite_store)
    connection = sqlite_store._db
    assert connection is not None
    sqlite_store._db = _FailingCommit(connection)  # type: ignore[assignment]
    try:
        answers = await asyncio.gather(
            sqlite_store.claim("repeat", ttl=30),
            sqlite_store.put_record("call", "lost", {"verified": True}, ttl=30),
            sqlite_store.get_record("call", "lost"),  # reads only what is committed
            return_exceptions=True,
        )
    finally:
        sqlite_store._db = connection
    assert [type(answer) for answer in answers] == [StoreUnavailable, StoreUnavailable, type(None)]
    assert await sqlite_store.get_record("call", "lost") is None
    assert (await sqlite_store.claim("repeat", ttl=30)).state is ClaimState.NEW


async def test_sqlite_a_write_that_fails_halfway_undoes_itself_and_no_other(
    sqlite_store: SqliteStore,
) -> None:
    await settled(sqlite_store)

    def half_then_fail(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO record VALUES ('call', 'half', '{}', 9e99)")
        raise RuntimeError("a bug halfway through a write")

    answers = await asyncio.gather(
        sqlite_store.put_record("call", "before", {}, ttl=30),
        sqlite_store._write(half_then_fail),
        sqlite_store.put_record("call", "after", {}, ttl=30),
        return_exceptions=True,
    )
    assert [type(answer) for answer in answers] == [type(None), RuntimeError, type(None)]
    assert await sqlite_store.get_record("call", "before") == {}
    assert await sqlite_store.get_record("call", "after") == {}
    assert await sqlite_store.get_record("call", "half") is None


async def test_sqlite_a_turn_that_sqlite_rolled_back_keeps_none_of_its_writes(
    sqlite_store: SqliteStore,
) -> None:
    await settled(sqlite_store)

    def on_a_full_disk(db: sqlite3.Connection) -> None:
        db.execute("ROLLBACK")  # what SQLite does by itself when the disk is full

    answers = await asyncio.gather(
        sqlite_store.put_record("call", "before", {}, ttl=30),
        sqlite_store._write(on_a_full_disk),
        sqlite_store.put_record("call", "after", {}, ttl=30),  # must not go in on its own
        return_exceptions=True,
    )
    assert [type(answer) for answer in answers] == [StoreUnavailable] * 3
    assert await sqlite_store.get_record("call", "before") is None
    assert await sqlite_store.get_record("call", "after") is None
    await sqlite_store.put_record("call", "next turn", {}, ttl=30)
    assert await sqlite_store.get_record("call", "next turn") == {}


async def test_sqlite_a_turn_s_writes_wait_together_for_another_process_s_lock(
    sqlite_store: SqliteStore, tmp_path: Any
) -> None:
    await settled(sqlite_store)

    def half_then_fail(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO record VALUES ('call', 'half', '{}', 9e99)")
        raise RuntimeError("a bug halfway through a write")

    other = sqlite3.connect(tmp_path / "mfa.sqlite3", isolation_level=None)  # as another process would
    other.execute("BEGIN IMMEDIATE")
    try:
        writing = asyncio.gather(
            sqlite_store.put_record("call", "before", {}, ttl=30),
            sqlite_store._write(half_then_fail),
            sqlite_store.put_record("call", "after", {}, ttl=30),
            return_exceptions=True,
        )
        for _ in range(3):  # the writes are queued, their turn ends, they go to the thread
            await asyncio.sleep(0)
        assert await sqlite_store.get_record("call", "before") is None  # reads go on meanwhile
        assert not writing.done()
    finally:
        other.execute("COMMIT")
        other.close()
    answers = await asyncio.wait_for(writing, timeout=10)
    assert [type(answer) for answer in answers] == [type(None), RuntimeError, type(None)]
    assert await sqlite_store.get_record("call", "before") == {}
    assert await sqlite_store.get_record("call", "after") == {}
    assert await sqlite_store.get_record("call", "half") is None


async def test_sqlite_close_commits_the_writes_under_way(tmp_path: Any) -> None:
    store = SqliteStore(str(tmp_path / "mfa.sqlite3"))
    await store.open()
    await settled(store)
    writing = asyncio.ensure_future(store.put_record("call", "late", {"verified": True}, ttl=30))
    await asyncio.sleep(0)  # the write has run; its commit comes after this turn
    await store.close()
    await writing  # committed, not failed
    reopened = SqliteStore(str(tmp_path / "mfa.sqlite3"))
    await reopened.open()
    try:
        assert await reopened.get_record("call", "late") == {"verified": True}
    finally:
        await reopened.close()


async def test_sqlite_keeps_its_write_ahead_log_short(sqlite_store: SqliteStore, tmp_path: Any) -> None:
    wal = tmp_path / "mfa.sqlite3-wal"
    for number in range(5 * CHECKPOINT_EVERY_WRITES):
        await sqlite_store.complete(f"key-{number}", {"response": "x" * 200}, ttl=30)
        if number % 50 == 0:
            await asyncio.sleep(0)  # a server between requests
    # Each write adds a few pages (4 KiB each); unchecked, the log holds every one of them.
    assert wal.stat().st_size < 3 * CHECKPOINT_EVERY_WRITES * 4096


async def test_sqlite_writes_go_on_beside_the_checkpoints_copy(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The copy syncs the log and the file, tens of milliseconds in which the requests'
    # writes would otherwise wait. Here it is held until released.
    copying, release = threading.Event(), threading.Event()
    copy = sqlite_module._copy

    def held_copy(db: sqlite3.Connection) -> None:
        copying.set()
        release.wait(10)
        copy(db)

    monkeypatch.setattr(sqlite_module, "_copy", held_copy)
    store = SqliteStore(str(tmp_path / "mfa.sqlite3"))
    await store.open()
    try:
        await store.complete("first", {"n": 0}, ttl=30)  # the first write starts a purge and a checkpoint
        assert await asyncio.to_thread(copying.wait, 10)
        for number in range(WRITES_BESIDE_THE_COPY):
            await asyncio.wait_for(store.complete(f"beside-{number}", {"n": number}, ttl=30), 10)
        # Beyond those the log would outgrow its bound: the next write waits for the checkpoint.
        late = asyncio.ensure_future(store.complete("late", {"n": -1}, ttl=30))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not late.done()
        release.set()
        await asyncio.wait_for(late, 10)
        assert store._maintenance is not None
        await store._maintenance
        assert (await store.claim("beside-7", ttl=30)).result == {"n": 7}
        await store.complete("after", {"n": 1}, ttl=30)
        # The checkpoint restarted the log: it holds only the write made since.
        with sqlite3.connect(tmp_path / "mfa.sqlite3") as raw:
            _, frames, _ = raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert 0 < frames < 10
    finally:
        release.set()
        await store.close()


async def test_sqlite_forgets_a_backlog_in_short_passes(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A purge holds every write while it runs, so a day's worth of call records coming due
    # at once must go in passes of a bounded size, not in one long DELETE.
    monkeypatch.setattr(sqlite_module, "PURGE_BATCH", 100)
    monkeypatch.setattr(sqlite_module, "PURGE_INTERVAL_SECONDS", 0.0)
    passes: list[int] = []
    purge_batch = sqlite_module._purge_batch

    def counted(db: sqlite3.Connection, table: str, wall: float) -> bool:
        before = db.total_changes
        more = purge_batch(db, table, wall)
        passes.append(db.total_changes - before)
        return more

    monkeypatch.setattr(sqlite_module, "_purge_batch", counted)
    path = tmp_path / "mfa.sqlite3"
    other = sqlite3.connect(path, isolation_level=None)
    store = SqliteStore(str(path))
    await store.open()
    try:
        # The oldest claims are live for an hour, more of them than a pass deletes (as the
        # discovery bindings of many calls are): the forgotten ones behind them go all the same.
        for number in range(150):
            await store.claim(f"bound-{number}", ttl=3600)
        other.executemany("INSERT INTO record VALUES ('call', ?, '{}', 1.0)", [(str(n),) for n in range(350)])
        claims = [(f"c{n}",) for n in range(250)]
        other.executemany("INSERT INTO claim (key, result, forget_at) VALUES (?, NULL, 1.0)", claims)
        await store.put_record("call", "live", {"verified": True}, ttl=3600)

        async def forgotten() -> bool:
            await store.put_record("call", "writes", {}, ttl=60)  # purges start after writes
            left = other.execute(
                "SELECT (SELECT count(*) FROM record WHERE forget_at < 2)"
                " + (SELECT count(*) FROM claim WHERE forget_at < 2)"
            ).fetchone()[0]
            return bool(left == 0)

        await eventually(forgotten)
        assert max(passes) == 100
        assert sum(passes) == 600
        assert await store.get_record("call", "live") == {"verified": True}
        states = [(await store.claim(f"bound-{number}", ttl=30)).state for number in range(150)]
        assert set(states) == {ClaimState.RUNNING}
    finally:
        other.close()
        await store.close()


async def test_sqlite_goes_on_forgetting_claims_without_waiting_for_the_next_interval(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pass that finds more forgotten claims than it deletes says so, and the next pass
    # follows the next write: a backlog is not left to grow until the interval comes round.
    monkeypatch.setattr(sqlite_module, "PURGE_BATCH", 100)
    monkeypatch.setattr(sqlite_module, "PURGE_INTERVAL_SECONDS", 3600.0)
    path = tmp_path / "mfa.sqlite3"
    other = sqlite3.connect(path, isolation_level=None)
    store = SqliteStore(str(path))
    await store.open()
    try:
        claims = [(f"c{n}",) for n in range(250)]
        other.executemany("INSERT INTO claim (key, result, forget_at) VALUES (?, '{}', 1.0)", claims)

        async def forgotten() -> bool:
            await store.claim(f"request-{time.monotonic()}", ttl=30)  # purges start after writes
            return bool(other.execute("SELECT count(*) FROM claim WHERE forget_at < 2").fetchone()[0] == 0)

        await eventually(forgotten)
        assert (await store.claim("c0", ttl=30)).state is ClaimState.NEW
    finally:
        other.close()
        await store.close()


async def test_sqlite_carries_the_live_claims_of_an_older_file_over(tmp_path: Any) -> None:
    path = tmp_path / "mfa.sqlite3"
    store = SqliteStore(str(path))
    await store.open()
    await store.close()
    old = sqlite3.connect(path)
    old.execute("DROP TABLE claim")  # as the file was before: claims by key
    old.execute(
        "CREATE TABLE claim (key TEXT PRIMARY KEY, result TEXT, forget_at REAL NOT NULL) WITHOUT ROWID"
    )
    old.executemany(
        "INSERT INTO claim VALUES (?, ?, ?)",
        [
            ("running", None, time.time() + 3600),
            ("done", '{"response":"sent"}', time.time() + 3600),
            ("forgotten", '{"response":"old"}', 1.0),
        ],
    )
    old.commit()
    old.close()

    reopened = SqliteStore(str(path))
    await reopened.open()
    try:
        assert (await reopened.claim("running", ttl=30)).state is ClaimState.RUNNING
        done = await reopened.claim("done", ttl=30)
        assert (done.state, done.result) == (ClaimState.DONE, {"response": "sent"})
        assert (await reopened.claim("forgotten", ttl=30)).state is ClaimState.NEW
        assert (await reopened.claim("new", ttl=30)).state is ClaimState.NEW
        await reopened.complete("new", {"response": "sent"}, ttl=30)
        assert (await reopened.claim("new", ttl=30)).result == {"response": "sent"}
    finally:
        await reopened.close()


async def test_redis_on_a_closed_port_is_unavailable_at_once(unused_tcp_port: int) -> None:
    store = RedisStore(f"redis://127.0.0.1:{unused_tcp_port}/0")
    await store.open()
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.get_verification("any")
        assert time.monotonic() - started < 3
    finally:
        await store.close()


async def test_a_store_that_is_not_open_is_unavailable(tmp_path: Any) -> None:
    for store in (SqliteStore(str(tmp_path / "mfa.sqlite3")), RedisStore("redis://127.0.0.1:1/0")):
        with pytest.raises(StoreUnavailable):
            await store.ping()
        await store.close()  # closing a store never opened, or twice, is fine
        await store.close()


def test_open_store_chooses_by_url() -> None:
    assert isinstance(open_store("sqlite:///./data/mfa.sqlite3"), SqliteStore)
    assert isinstance(open_store("sqlite:////var/lib/mfa.sqlite3"), SqliteStore)
    assert isinstance(open_store("redis://localhost:6379/0"), RedisStore)
    assert isinstance(open_store("rediss://cache.example.com:6380/1", prefix="x:"), RedisStore)
    for wrong in ("sqlite:///", "sqlite://relative.db", "postgres://db", "mfa.sqlite3"):
        with pytest.raises(ValueError, match="store URL"):
            open_store(wrong)

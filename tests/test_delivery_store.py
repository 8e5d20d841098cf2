"""The store's delivery job (`DeliveryStore`, engine/stores/base.py), on SQLite and Redis alike.

Carrier reports come repeated, out of order and to any instance: the state only moves
forward, the first final state stays, and exactly one report is told it made the text
final. The one voice call that may follow a text is taken once, and the caller is told
once, however many requests race for it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any

from engine.models import DeliveryState, Fallback, Status
from engine.stores import SqliteStore, Store
from tests.test_stores import NOW, created, make_verification

SID = "6a1f4a3e-0e0b-4d7e-9a55-1f0c8b3e2d11"


async def tracked(store: Store, **changes: Any) -> str:
    """A verification whose text SignalWire reports on, as the engine records one."""
    verification = await created(store, provider_ref=SID, delivery=DeliveryState.QUEUED, **changes)
    return verification.id


async def test_a_verification_keeps_its_delivery_fields(store: Store) -> None:
    verification = make_verification(
        provider_ref=SID,
        delivery=DeliveryState.UNDELIVERED,
        delivery_error="30003",
        fallback=Fallback.PLACED,
        fallback_digest="ab" * 32,
        delivery_told=True,
    )
    await store.create_verification(verification)
    assert await store.get_verification(verification.id) == verification
    untracked = await created(store)
    read = await store.get_verification(untracked.id)
    assert read is not None and read.delivery is None and read.delivery_told is False


async def test_a_report_names_a_tracked_text_by_its_message_id(store: Store) -> None:
    verification_id = await tracked(store)
    untracked = await created(store, provider_ref=SID)
    assert await store.record_delivery("no-such-verification", SID, DeliveryState.SENT, None) is None
    assert await store.record_delivery(untracked.id, SID, DeliveryState.DELIVERED, None) is None
    assert (
        await store.record_delivery(verification_id, "another-message", DeliveryState.DELIVERED, None) is None
    )
    assert (await store.get_verification(verification_id)).delivery is DeliveryState.QUEUED  # type: ignore[union-attr]


async def test_the_state_only_moves_forward(store: Store) -> None:
    verification_id = await tracked(store)
    sent = await store.record_delivery(verification_id, SID, DeliveryState.SENT, None)
    assert sent is not None and sent.verification.delivery is DeliveryState.SENT and not sent.became_final
    late = await store.record_delivery(verification_id, SID, DeliveryState.SENDING, None)
    assert late is not None and late.verification.delivery is DeliveryState.SENT and not late.became_final
    again = await store.record_delivery(verification_id, SID, DeliveryState.SENT, None)
    assert again is not None and not again.became_final
    assert (await store.get_verification(verification_id)).delivery is DeliveryState.SENT  # type: ignore[union-attr]


async def test_the_first_final_state_stays_and_is_made_final_once(store: Store) -> None:
    verification_id = await tracked(store)
    first = await store.record_delivery(verification_id, SID, DeliveryState.UNDELIVERED, "30003")
    assert first is not None and first.became_final
    assert (
        first.verification.delivery is DeliveryState.UNDELIVERED
        and first.verification.delivery_error == "30003"
    )
    for state, error in (
        (DeliveryState.UNDELIVERED, "30003"),
        (DeliveryState.DELIVERED, None),
        (DeliveryState.SENT, None),
    ):
        later = await store.record_delivery(verification_id, SID, state, error)
        assert later is not None and not later.became_final
    final = await store.get_verification(verification_id)
    assert (
        final is not None and final.delivery is DeliveryState.UNDELIVERED and final.delivery_error == "30003"
    )


async def test_an_error_code_is_kept_with_a_final_state_only(store: Store) -> None:
    verification_id = await tracked(store)
    await store.record_delivery(verification_id, SID, DeliveryState.SENT, "30001")
    assert (await store.get_verification(verification_id)).delivery_error is None  # type: ignore[union-attr]
    delivered = await store.record_delivery(verification_id, SID, DeliveryState.DELIVERED, None)
    assert delivered is not None and delivered.became_final and delivered.verification.delivery_error is None


async def test_reports_are_recorded_whatever_the_verification_became(store: Store) -> None:
    verification_id = await tracked(store)
    await store.transition(verification_id, Status.APPROVED, NOW + 5)
    change = await store.record_delivery(verification_id, SID, DeliveryState.DELIVERED, None)
    assert change is not None and change.became_final and change.verification.status is Status.APPROVED


async def test_parallel_final_reports_on_two_instances_make_it_final_once(
    store: Store, make_store: Callable[[], Store]
) -> None:
    other = make_store()
    await other.open()
    try:
        verification_id = await tracked(store)
        reports = [
            (store if n % 2 else other).record_delivery(
                verification_id,
                SID,
                DeliveryState.DELIVERED if n % 3 else DeliveryState.UNDELIVERED,
                None if n % 3 else "30008",
            )
            for n in range(30)
        ]
        changes = await asyncio.gather(*reports)
        finals = [change for change in changes if change is not None and change.became_final]
        assert len(finals) == 1
        recorded = await store.get_verification(verification_id)
        assert recorded is not None and recorded.delivery is finals[0].verification.delivery
    finally:
        await other.close()


async def test_the_fallback_is_taken_once_while_pending_and_not_delivered(
    store: Store, make_store: Callable[[], Store]
) -> None:
    other = make_store()
    await other.open()
    try:
        verification_id = await tracked(store)
        claims = await asyncio.gather(
            *(
                (store if n % 2 else other).claim_fallback(verification_id, NOW, f"{n:064x}")
                for n in range(20)
            )
        )
        taken = [claim for claim in claims if claim is not None]
        assert len(taken) == 1 and taken[0].fallback is Fallback.CALLING
        stored = await store.get_verification(verification_id)
        assert stored is not None and stored.fallback_digest == taken[0].fallback_digest
        assert await store.claim_fallback(verification_id, NOW, "ff" * 32) is None
    finally:
        await other.close()


async def test_no_fallback_for_a_text_delivered_ended_expired_or_untracked(store: Store) -> None:
    delivered = await tracked(store)
    await store.record_delivery(delivered, SID, DeliveryState.DELIVERED, None)
    approved = await tracked(store)
    await store.transition(approved, Status.APPROVED, NOW)
    expiring = await tracked(store)
    untracked = (await created(store)).id
    assert await store.claim_fallback(delivered, NOW, "aa" * 32) is None
    assert await store.claim_fallback(approved, NOW, "aa" * 32) is None
    assert await store.claim_fallback(expiring, NOW + 600, "aa" * 32) is None  # at expires_at
    assert await store.claim_fallback(untracked, NOW, "aa" * 32) is None
    assert await store.claim_fallback("no-such-verification", NOW, "aa" * 32) is None
    undelivered = await tracked(store)
    await store.record_delivery(undelivered, SID, DeliveryState.FAILED, "30006")
    assert await store.claim_fallback(undelivered, NOW, "aa" * 32) is not None


async def test_a_fallback_is_settled_once_and_only_after_it_was_taken(store: Store) -> None:
    verification_id = await tracked(store)
    assert await store.settle_fallback(verification_id, Fallback.PLACED) is None  # nothing taken yet
    await store.claim_fallback(verification_id, NOW, "aa" * 32)
    settled = await store.settle_fallback(verification_id, Fallback.REFUSED)
    assert settled is not None and settled.fallback is Fallback.REFUSED
    assert await store.settle_fallback(verification_id, Fallback.PLACED) is None
    assert await store.settle_fallback("no-such-verification", Fallback.PLACED) is None


async def test_the_caller_is_told_once(store: Store, make_store: Callable[[], Store]) -> None:
    other = make_store()
    await other.open()
    try:
        verification_id = await tracked(store)
        marks = await asyncio.gather(
            *((store if n % 2 else other).mark_delivery_told(verification_id) for n in range(20))
        )
        assert marks.count(True) == 1
        assert (await store.get_verification(verification_id)).delivery_told is True  # type: ignore[union-attr]
        assert await store.mark_delivery_told("no-such-verification") is False
        assert await store.get_verification("no-such-verification") is None  # nothing made up
    finally:
        await other.close()


async def test_sqlite_gives_a_file_from_before_delivery_reports_its_columns(tmp_path: Any) -> None:
    path = tmp_path / "mfa.sqlite3"
    store = SqliteStore(str(path))
    await store.open()
    before = make_verification()
    await store.create_verification(before)
    await store.close()
    old = sqlite3.connect(path)
    for column in ("delivery", "delivery_error", "fallback", "fallback_digest", "delivery_told"):
        old.execute(f'ALTER TABLE verification DROP COLUMN "{column}"')  # as the file was before
    old.commit()
    old.close()

    reopened = SqliteStore(str(path))
    await reopened.open()
    try:
        read = await reopened.get_verification(before.id)
        assert read is not None and read.delivery is None and read.delivery_told is False
        assert await reopened.record_delivery(before.id, SID, DeliveryState.SENT, None) is None
    finally:
        await reopened.close()

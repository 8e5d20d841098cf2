"""After a text goes out: the carrier's reports on it, the voice call that follows one that
did not arrive, and what the caller is told.

With the local engine delivering through SignalWire messaging and status callbacks
on, each text's verification records its delivery (``Verification.delivery``):

- **Reports.** SignalWire reports each change of the text's state; `record` keeps
  it in one store step, where the state only moves forward and the first final
  state stays (reports come repeated and out of order, from any instance), and
  raises `mfa.delivered` or `mfa.undelivered` (with the carrier's error code) for
  the one report that made it final.
- **The fallback call** (``MFA_FALLBACK_TO_CALL``). A text reported undelivered
  (or failed), or not reported delivered within ``fallback_after`` seconds, is
  followed once by a voice call that reads a new code. The send queues a look at
  the text for then, in the store's outbox (``FALLBACK_QUEUE``), and a report that
  it did not arrive queues one for now; a loop in every instance claims what is
  due (with a lease, so a crash loses nothing). The call is taken in one store
  step before anything is sent, so two instances, or a report and the timer,
  never both call. It happens only while the verification is pending and its
  call (if any) has no newer code; it counts against the sending limits as any
  send does, and a limit that refuses it leaves the caller with the text alone.
  The verification then takes either code: the call's, or the text's, should it
  arrive late. Its `mfa.sent` has channel ``call`` and reason ``fallback``.
- **The caller told.** `tell` hands the SWAIG functions, once per verification,
  what a caller whose text did not arrive should hear: a call with a new code is
  on its way, or (no call) that a call can be asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from engine.delivery import Receipt
from engine.errors import (
    CallLocked,
    DestinationRefused,
    FraudRefused,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
    StoreUnavailable,
)
from engine.models import DeliveryState, Event, EventType, Fallback, Origin, Status, Verification
from engine.outbox_worker import drain_until_stopped
from engine.phone import same_number
from engine.providers.base import SendRequest
from engine.stores.base import DeliveryStore, OutboxItem, OutboxStore, RecordStore, VerificationStore
from engine.verifications import CALL_RECORD, FALLBACK_QUEUE, CodeShape, VerificationEngine

log = logging.getLogger(__name__)

# How long a text has to be reported delivered before a call follows it.
FALLBACK_AFTER_SECONDS = 30.0
BATCH = 16  # items claimed, and followed up concurrently, per pass
LEASE_SECONDS = 60.0  # a claimed item not settled by then (a crash) is due again
POLL_SECONDS = 1.0  # to find items another instance or an earlier run left due
FALLBACK_REASON = "fallback"  # the reason on the fallback call's mfa.sent


class FollowUpStore(VerificationStore, DeliveryStore, OutboxStore, RecordStore, Protocol):
    """What the follow-up keeps: verifications and their delivery, the queue of texts to
    look at again, and the calls' verified records."""


@dataclass(frozen=True)
class DeliveryNews:
    """What a caller whose text did not arrive should hear.

    ``calling``: a call that reads a new code is on its way (or about to be);
    ``reported``: the carrier reported the text undelivered (else it was only not
    confirmed within the wait).
    """

    verification: Verification
    calling: bool
    reported: bool


class DeliveryFollowUp:
    """Delivery reports, the fallback call, and the caller's news, for one running engine.

    ``shapes`` is the code shape of each origin (the walkthrough's codes are shorter),
    so the call's code has the length the caller was asked for; ``call_intro`` is
    said before the code in the call (`languages.Texts.fallback_call`).
    """

    def __init__(
        self,
        engine: VerificationEngine,
        store: FollowUpStore,
        *,
        shapes: Mapping[Origin, CodeShape],
        call_intro: str,
        lease: float = LEASE_SECONDS,
        poll_interval: float = POLL_SECONDS,
    ) -> None:
        self.engine = engine
        self.store = store
        self.shapes = shapes
        self.call_intro = call_intro
        self.lease = lease
        self.poll_interval = poll_interval
        self._wake = asyncio.Event()

    @property
    def falls_back(self) -> bool:
        """Whether texts that do not arrive are followed by a call (MFA_FALLBACK_TO_CALL)."""
        return self.engine.fallback_after is not None

    @property
    def clock(self) -> Callable[[], float]:
        return self.engine.clock

    # -- reports -------------------------------------------------------------
    async def record(
        self, verification_id: str, carrier_ref: str, state: DeliveryState, error_code: str | None
    ) -> Verification | None:
        """One carrier report on a verification's text; the verification, or None when the
        report names no text of ours (an unknown id, or a message id its send did not get).

        Safe to repeat: only the report that makes the text's state final raises an event.
        """
        change = await self.store.record_delivery(verification_id, carrier_ref, state, error_code)
        if change is None:
            return None
        verification = change.verification
        if not change.became_final:
            return verification
        delivery = verification.delivery
        assert delivery is not None  # it was tracked, and it is final now
        if delivery is DeliveryState.DELIVERED:
            await self._publish("mfa.delivered", verification)
            return verification
        await self._publish("mfa.undelivered", verification, delivery.value)
        if self.falls_back and verification.status is Status.PENDING:
            # At once, not when the wait ends: an item of its own, so the wait's item
            # (leased elsewhere, perhaps) is not disturbed; the claim keeps it to one call.
            await self.store.enqueue(
                FALLBACK_QUEUE, f"{verification.id}:reported", verification.id, self.clock()
            )
            self._wake.set()
        return verification

    async def _publish(self, type_: EventType, verification: Verification, reason: str | None = None) -> None:
        event = Event.about(type_, verification, reason)
        if verification.delivery_error is not None:
            event = event.model_copy(update={"error_code": verification.delivery_error})
        await self.engine.publisher.publish(event)

    # -- the fallback call ------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Follow up due texts until ``stop``: at once when a report wakes it, else every poll."""
        await drain_until_stopped(
            stop,
            self._wake,
            self.follow_up_due,
            batch=BATCH,
            poll_interval=self.poll_interval,
            idle_wait=lambda: self.poll_interval,
            name="delivery follow-up",
        )

    async def follow_up_due(self) -> int:
        """One pass: claim what is due and follow each up once; how many items were claimed."""
        items = await self.store.claim_due(FALLBACK_QUEUE, self.clock(), self.lease, BATCH)
        outcomes = await asyncio.gather(*(self._follow_up(item) for item in items), return_exceptions=True)
        for outcome in outcomes:
            # The item stays leased and is tried again when its lease runs out.
            if isinstance(outcome, StoreUnavailable):
                raise outcome
            if isinstance(outcome, BaseException):
                log.error("delivery follow-up failed for one text", exc_info=outcome)
        return len(items)

    async def _follow_up(self, item: OutboxItem) -> None:
        await self.fall_back(item.payload)
        await self.store.ack(FALLBACK_QUEUE, item.id)

    async def fall_back(self, verification_id: str) -> Fallback | None:
        """Call the verification's number with a new code, if its text still needs it.

        None when nothing was due (delivered, ended, followed up already, superseded by a
        newer code on its call); else how the call went.
        """
        engine, now = self.engine, self.clock()
        verification = await self.store.get_verification(verification_id)
        if verification is None or not await self._needs_call(verification, now):
            return None
        shape = self.shapes.get(verification.origin, engine.shape)
        request = SendRequest(
            verification_id=verification.id,
            to=verification.to,
            channel="call",
            token_length=shape.token_length,
            valid_for=max(1, int(verification.expires_at - now)),
            max_attempts=verification.max_attempts,
            allow_alphas=shape.allow_alphas,
            message=f"{self.call_intro} {shape.message}",
            from_number=engine.from_number,
        )
        prepared = engine.provider.prepare(request)
        if prepared is None:
            return None  # a provider whose codes are made elsewhere: nothing to call with
        claimed = await self.store.claim_fallback(verification.id, now, prepared.code_digest)
        if claimed is None:
            return None  # another instance, or the other item of this text, took it
        try:
            return await self._call(claimed, prepared.deliver, now)
        except Exception:
            # Taken, and never to be tried again: not left "calling" for the caller to wait on.
            with contextlib.suppress(Exception):
                await self.store.settle_fallback(claimed.id, Fallback.FAILED)
            raise

    async def _call(
        self, claimed: Verification, deliver: Callable[[], Awaitable[Receipt]], now: float
    ) -> Fallback:
        engine = self.engine
        try:
            # A call costs a held range, or a new country, as much as a text: the pumping guard decides too.
            guard = engine.fraud.check_number(claimed.to) if engine.fraud else None
            admission = await engine.limits.admit_send(
                claimed.to, claimed.agent_id, claimed.call_id, now, guard=guard
            )
        except FraudRefused as refusal:
            if refusal.raised and refusal.hold is not None:
                await engine.publish_hold(
                    refusal.hold,
                    origin=claimed.origin,
                    agent_id=claimed.agent_id,
                    call_id=claimed.call_id,
                    channel="call",
                )
            return await self._not_called(claimed, Fallback.REFUSED, refusal.reason)
        except RateLimited as refusal:
            return await self._not_called(claimed, Fallback.REFUSED, refusal.limit)
        except DestinationRefused as refusal:  # MFA_FRAUD_BLOCK names it now
            return await self._not_called(claimed, Fallback.REFUSED, refusal.reason)
        except CallLocked:
            return await self._not_called(claimed, Fallback.REFUSED, "call_locked")
        try:
            await engine.breaker.call(deliver)
        except (ProviderUnavailable, ProviderRejected) as failure:
            await engine.limits.take_back(admission)
            return await self._not_called(claimed, Fallback.FAILED, failure.kind)
        placed = await self.store.settle_fallback(claimed.id, Fallback.PLACED) or claimed
        log.info("verification %s: its text did not arrive in time; a call reads a new code", claimed.id)
        await engine.publisher.publish(_by_call(Event.about("mfa.sent", placed, FALLBACK_REASON)))
        return Fallback.PLACED

    async def _needs_call(self, verification: Verification, now: float) -> bool:
        delivery = verification.delivery
        if (
            delivery is None
            or delivery is DeliveryState.DELIVERED
            or verification.fallback is not None
            or verification.status is not Status.PENDING
            or verification.is_expired(now)
        ):
            return False
        call_id = verification.call_id
        if call_id is None:
            return True
        if await self.store.get_record(CALL_RECORD, call_id):
            return False  # the call is verified already, by another code
        # A newer code on the same call (the caller asked again) is the one that counts now.
        newer = [
            v
            for v in await self.store.pending_for_call(call_id, now)
            if v.created_at > verification.created_at
        ]
        return not newer

    async def _not_called(self, claimed: Verification, outcome: Fallback, reason: str) -> Fallback:
        settled = await self.store.settle_fallback(claimed.id, outcome) or claimed
        log.warning("verification %s: no call followed its text (%s)", claimed.id, reason)
        await self.engine.publisher.publish(_by_call(Event.about("mfa.send_failed", settled, reason)))
        return outcome

    # -- the caller told ------------------------------------------------------------
    def news_of(self, verification: Verification) -> DeliveryNews | None:
        """What the caller should hear about the verification's text, if anything (read only)."""
        delivery = verification.delivery
        if verification.delivery_told or verification.status is not Status.PENDING or delivery is None:
            return None
        reported = delivery.not_delivered
        fallback = verification.fallback
        # Reported and not yet taken: the call is on its way within moments.
        calling = fallback in (Fallback.CALLING, Fallback.PLACED) or (
            fallback is None and reported and self.falls_back
        )
        if not (calling or reported):
            return None
        return DeliveryNews(verification, calling=calling, reported=reported)

    async def tell(self, verification: Verification) -> DeliveryNews | None:
        """The news for the caller, once: None when there is none, or it was told already."""
        news = self.news_of(verification)
        if news is None or not await self.store.mark_delivery_told(verification.id):
            return None
        return news

    async def tell_about(
        self, verification_id: str, *, call_id: str, destination: str | None = None
    ) -> DeliveryNews | None:
        """`tell`, for the verification a call's meta_data names: only if it is that call's
        and (with ``destination``, a number a new code is asked for) went to that number."""
        verification = await self.store.get_verification(verification_id)
        if verification is None or verification.origin != "call" or verification.call_id != call_id:
            return None
        if destination is not None and not same_number(destination, verification.to):
            return None
        return await self.tell(verification)


def _by_call(event: Event) -> Event:
    """The fallback's event: the verification's, with the channel the new code went by."""
    return event.model_copy(update={"channel": "call"})

"""The verification engine: every decision about a code is made here.

Handlers (SWAIG functions, the HTTP API, the walkthrough's workflow) parse
and validate, then call `start`, `check`, `get` or `cancel`. The engine
applies the destination policy and the limits, asks the provider to deliver
or check, records the outcome in the store atomically, and publishes one
event per step. Nothing the caller or the model says can skip a step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from engine.breaker import CircuitBreaker
from engine.errors import (
    CallLocked,
    DestinationRefused,
    FraudRefused,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
    StoreUnavailable,
    VerificationNotFound,
)
from engine.events.publisher import EventPublisher
from engine.fraud import FraudGuard
from engine.limits import Limits
from engine.lookup import LineTypes
from engine.models import (
    Channel,
    CheckOutcome,
    CheckResult,
    DeliveryState,
    Event,
    EventType,
    Origin,
    Started,
    Status,
    Verification,
    mask_number,
    new_verification_id,
)
from engine.phone import Destination, checked_destination
from engine.providers.base import Answer, Provider, SendRequest
from engine.stores.base import (
    Attempt,
    AttemptGate,
    OutboxStore,
    Record,
    VerificationStore,
    WindowStore,
)
from engine.stores.guard import Hold
from engine.stores.windows import Window

log = logging.getLogger(__name__)

CALL_RECORD = "call"
CALL_RECORD_TTL = 24 * 3600.0
# The outbox queue of texts to follow with a voice call when due (engine/follow_up.py):
# each item's payload is the verification id.
FALLBACK_QUEUE = "fallback"


class EngineStore(VerificationStore, WindowStore, OutboxStore, Protocol):
    """What the engine keeps: its verifications, the windows it gives an event back to
    (a failure budget refunded for a right code, a send that failed), and the queue of
    texts to follow up."""


@dataclass
class _Reading:
    """What one reading met, code by code: the attempt its one failure was counted with,
    the codes it was wrong for, and the codes the provider no longer knew."""

    failure: Attempt | None
    wrong: list[Attempt] = field(default_factory=list)
    gone: list[CheckResult] = field(default_factory=list)


@dataclass(frozen=True)
class _Failure:
    """Who asked for a send that was refused or failed, for its event."""

    origin: Origin
    agent_id: str
    call_id: str | None
    channel: Channel


@dataclass(frozen=True)
class CodeShape:
    """How a code looks and lives: length, alphabet, lifetime and tries."""

    token_length: int
    valid_for: int
    max_attempts: int
    allow_alphas: bool
    message: str


_FINAL_OUTCOME = {
    Status.APPROVED: CheckOutcome.ALREADY_APPROVED,
    Status.EXPIRED: CheckOutcome.EXPIRED,
    Status.MAX_ATTEMPTS_REACHED: CheckOutcome.MAX_ATTEMPTS_REACHED,
    Status.CANCELED: CheckOutcome.CANCELED,
}


class VerificationEngine:
    """Starts, checks, reads and cancels verifications for every interface."""

    def __init__(
        self,
        *,
        store: EngineStore,
        provider: Provider,
        publisher: EventPublisher,
        limits: Limits,
        shape: CodeShape,
        allowed_regions: Collection[str] = (),
        from_number: str | None = None,
        breaker: CircuitBreaker | None = None,
        line_types: LineTypes | None = None,
        fraud: FraudGuard | None = None,
        fallback_after: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.provider = provider
        self.publisher = publisher
        self.limits = limits
        self.shape = shape
        self.allowed_regions = frozenset(allowed_regions)
        self.from_number = from_number
        self.breaker = breaker or CircuitBreaker()
        self.line_types = line_types
        self.fraud = fraud
        # Seconds after which a text not reported delivered is followed by a voice call;
        # None: never (MFA_FALLBACK_TO_CALL=off, or no delivery reports to wait for).
        self.fallback_after = fallback_after
        self.clock = clock

    # -- start ---------------------------------------------------------------
    async def start(
        self,
        to: str,
        channel: Channel,
        *,
        agent_id: str,
        origin: Origin,
        call_id: str | None = None,
        shape: CodeShape | None = None,
    ) -> Started:
        """Send a new code to ``to``; the pending verification, or a VerificationError.

        A code asked for by text to a landline goes by a voice call (`Started.by_call_instead`).
        """
        shape = shape or self.shape
        failed = _Failure(origin, agent_id, call_id, channel)
        try:
            destination = checked_destination(to, self.allowed_regions)
            number = destination.e164
            guard = self.fraud.check(destination) if self.fraud else None
        except DestinationRefused as refusal:
            await self._publish_failure(failed, None, refusal.reason)
            raise
        now = self.clock()
        try:
            admission = await self.limits.admit_send(number, agent_id, call_id, now, guard=guard)
        except CallLocked:
            await self._publish_failure(failed, number, "call_locked", "mfa.locked")
            raise
        except RateLimited as refusal:
            await self._publish_failure(failed, number, refusal.limit)
            raise
        except FraudRefused as refusal:
            if refusal.raised and refusal.hold is not None:
                await self.publish_hold(
                    refusal.hold, origin=origin, agent_id=agent_id, call_id=call_id, channel=channel
                )
            await self._publish_failure(failed, number, refusal.reason)
            raise
        asked = channel
        if channel == "sms" and await self._is_landline(destination):
            channel = "call"
        verification_id = new_verification_id()
        request = SendRequest(
            verification_id=verification_id,
            to=number,
            channel=channel,
            token_length=shape.token_length,
            valid_for=shape.valid_for,
            max_attempts=shape.max_attempts,
            allow_alphas=shape.allow_alphas,
            message=shape.message,
            from_number=self.from_number,
        )
        try:
            sent = await self.breaker.call(lambda: self.provider.send(request))
        except (ProviderUnavailable, ProviderRejected) as failure:
            await self.limits.take_back(admission)
            await self._publish_failure(failed, number, failure.kind)
            raise
        verification = Verification(
            id=verification_id,
            to=number,
            channel=channel,
            max_attempts=shape.max_attempts,
            created_at=now,
            expires_at=now + shape.valid_for,
            updated_at=now,
            agent_id=agent_id,
            call_id=call_id,
            country=destination.region,
            provider=self.provider.name,
            provider_ref=sent.provider_ref,
            code_digest=sent.code_digest,
            origin=origin,
            delivery=DeliveryState.QUEUED if sent.delivery_reported else None,
        )
        await self.store.create_verification(verification)
        if verification.delivery is not None and self.fallback_after is not None:
            await self._follow_up_later(verification, now + self.fallback_after)
        event = Event.about("mfa.sent", verification)
        await self.publisher.publish(event)
        return Started(verification=verification, event=event, by_call_instead=channel != asked)

    async def _follow_up_later(self, verification: Verification, due_at: float) -> None:
        """Look at the text again at ``due_at``: unless delivered by then, a call follows it."""
        try:
            await self.store.enqueue(FALLBACK_QUEUE, verification.id, verification.id, due_at)
        except StoreUnavailable:
            # The code went out and is recorded; only the follow-up on silence is lost
            # (a report that it was not delivered still brings the call).
            log.warning(
                "verification %s: its text will not be followed up if no report comes", verification.id
            )

    async def _is_landline(self, destination: Destination) -> bool:
        if destination.landline:
            return True  # the numbering plan says so: no need to ask
        if self.line_types is None or self.breaker.state != "closed":
            # SignalWire is failing: the send will be refused at once, so a lookup is wasted.
            return False
        return bool(await self.line_types.is_landline(destination.e164))

    async def _publish_failure(
        self, failed: _Failure, number: str | None, reason: str, type_: EventType = "mfa.send_failed"
    ) -> None:
        await self.publisher.publish(
            Event(
                type=type_,
                origin=failed.origin,
                agent_id=failed.agent_id,
                call_id=failed.call_id,
                channel=failed.channel,
                to=mask_number(number) if number else None,
                reason=reason,
            )
        )

    async def publish_hold(
        self, hold: Hold, *, origin: Origin, agent_id: str, call_id: str | None, channel: Channel
    ) -> None:
        """`mfa.fraud_suspected` for the hold a send raised (that send's origin, agent, call, channel)."""
        log.warning(
            "SMS pumping guard: prefix %s (%s) held until %s: %d codes in the last hour, %d approved",
            hold.prefix,
            hold.country,
            datetime.fromtimestamp(hold.until, UTC).isoformat(timespec="seconds"),
            hold.sends,
            hold.approved,
        )
        # The prefix, never the number: beside a number's last four digits a prefix must not complete it.
        await self.publisher.publish(
            Event(
                type="mfa.fraud_suspected",
                origin=origin,
                agent_id=agent_id,
                call_id=call_id,
                channel=channel,
                prefix=hold.prefix,
                reason=hold.reason,
            )
        )

    # -- check ---------------------------------------------------------------
    async def check(
        self, verification_id: str, code: str, *, origin: Origin, call_id: str | None = None
    ) -> CheckResult:
        """Check one code. Wrong codes, spent attempts and expiry are outcomes, not errors.

        Only a verification of ``origin`` (and, with ``call_id``, of that call) is found.
        On a call, any live code sent on it verifies: a caller who asked for a new code
        may read the first one, whose text arrived late. A wrong reading is one failure
        for the call and the number, however many live codes it was checked against.
        """
        now = self.clock()
        # One step in the store: the verification is ours, its call is not verified already,
        # no failure budget is used up, and an attempt and a failure are counted.
        primary = await self._begin(verification_id, now, call_id=call_id, origin=origin, budgets=True)
        if primary is None:
            raise VerificationNotFound("No such verification.")
        if primary.gate is AttemptGate.CALL_VERIFIED:
            return CheckResult(outcome=CheckOutcome.CALL_VERIFIED, verification=primary.verification)
        if primary.gate is AttemptGate.OVER_BUDGET:
            return self._over_budget(primary)
        reading = _Reading(failure=primary if primary.gate is AttemptGate.COUNTED else None)
        if reading.failure is not None and await self._judge(primary, code, now, reading):
            return await self._approve_reading(primary, reading)
        if call_id is not None:
            for earlier in await self.store.pending_for_call(call_id, now):
                if earlier.id == verification_id:
                    continue
                attempt = await self._begin(
                    earlier.id, now, call_id=call_id, origin=origin, budgets=reading.failure is None
                )
                if attempt is not None and attempt.gate is AttemptGate.OVER_BUDGET:
                    return self._over_budget(attempt)
                if attempt is None or attempt.gate is not AttemptGate.COUNTED:
                    continue
                if reading.failure is None:
                    reading.failure = attempt
                if await self._judge(attempt, code, now, reading):
                    return await self._approve_reading(attempt, reading)
        return await self._not_right(primary, reading, now)

    async def _begin(
        self, verification_id: str, now: float, *, call_id: str | None, origin: Origin, budgets: bool
    ) -> Attempt | None:
        return await self.store.begin_attempt(
            verification_id,
            now,
            call_id=call_id,
            origin=origin,
            budgets=self.limits.failure_budgets if budgets else None,
            verified_kind=CALL_RECORD,
        )

    async def _judge(self, attempt: Attempt, code: str, now: float, reading: _Reading) -> bool:
        """Whether ``code`` is this counted attempt's code; notes a wrong or dead one in ``reading``."""
        counted = attempt.verification
        try:
            answer = await self.breaker.call(lambda: self.provider.verify(counted, code))
        except ProviderUnavailable:
            # Not judged, so the try (and the failure, when it carries it) is not the caller's to lose.
            budgets = attempt.budgets if attempt is reading.failure else ()
            await self.store.refund_attempt(counted.id, budgets, now)
            raise
        if answer is Answer.WRONG:
            reading.wrong.append(attempt)
        elif answer is Answer.GONE:
            reading.gone.append(await self._gone(counted))
        return answer is Answer.CORRECT

    async def _approve_reading(self, attempt: Attempt, reading: _Reading) -> CheckResult:
        # Not a wrong reading: the failure counted before judging it is given back, in the
        # approving step (whether or not it wins the approval).
        give_back = reading.failure.budgets if reading.failure is not None else ()
        return await self._approve(attempt.verification, give_back)

    async def _not_right(self, primary: Attempt, reading: _Reading, now: float) -> CheckResult:
        """No live code was this one: a wrong reading, or none could be judged."""
        if reading.wrong:
            for earlier in reading.wrong[1:]:
                await self._end_if_spent(earlier.verification)
            assert reading.failure is not None
            return await self._wrong(reading.wrong[0], reading.failure)
        if reading.failure is not None:
            # Counted, but every code it met was dead: nothing was judged wrong.
            await self.store.unhit(reading.failure.budgets, now)
        if reading.gone and reading.gone[0].verification.id == primary.verification.id:
            return reading.gone[0]
        return await self._not_checked(primary.verification, primary.gate, primary.changed)

    def _over_budget(self, attempt: Attempt) -> CheckResult:
        refused = attempt.refused
        assert refused is not None
        window = self.limits.failure_budgets(attempt.verification.to, attempt.verification.call_id)[
            refused.index
        ]
        if self.limits.is_call_budget(window):
            return CheckResult(outcome=CheckOutcome.LOCKED, verification=attempt.verification)
        return CheckResult(
            outcome=CheckOutcome.NUMBER_LOCKED,
            verification=attempt.verification,
            retry_after=max(1, math.ceil(refused.retry_after)),
        )

    async def _not_checked(self, verification: Verification, gate: AttemptGate, changed: bool) -> CheckResult:
        if gate is AttemptGate.EXPIRED:
            event = Event.about("mfa.expired", verification) if changed else None
            if event:
                await self.publisher.publish(event)
            return CheckResult(outcome=CheckOutcome.EXPIRED, verification=verification, event=event)
        if gate is AttemptGate.NO_ATTEMPTS_LEFT:
            # The last counted attempts are still being checked; none of them is ours.
            return CheckResult(outcome=CheckOutcome.MAX_ATTEMPTS_REACHED, verification=verification)
        return CheckResult(outcome=_FINAL_OUTCOME[verification.status], verification=verification)

    async def _approve(self, counted: Verification, give_back: Sequence[Window] = ()) -> CheckResult:
        # The call's record of it goes in the same step: a verified call is never left unrecorded.
        call_record = None
        if counted.call_id is not None:
            data = {"verified": True, "verification_id": counted.id}
            call_record = Record(CALL_RECORD, counted.call_id, data, CALL_RECORD_TTL)
        # The pumping guard counts the approval in the same step: once, whoever wins a race of right codes.
        conversions = self.fraud.approvals(counted.to, counted.country) if self.fraud else ()
        approved = await self.store.transition(
            counted.id,
            Status.APPROVED,
            self.clock(),
            record=call_record,
            count=conversions,
            give_back=give_back,
        )
        if approved is None:
            # Another request ended it first (a parallel right code, or expiry).
            current = await self.store.get_verification(counted.id) or counted
            return CheckResult(outcome=_FINAL_OUTCOME[current.status], verification=current)
        event = Event.about("mfa.verified", approved)
        await self.publisher.publish(event)
        return CheckResult(outcome=CheckOutcome.APPROVED, verification=approved, event=event)

    async def _wrong(self, attempt: Attempt, failure: Attempt) -> CheckResult:
        """A wrong reading of ``attempt``'s code; ``failure`` is the attempt its failure was counted with."""
        counted = attempt.verification
        spent = [window for window, room in zip(failure.budgets, failure.room, strict=True) if room <= 0]
        locked_call = any(self.limits.is_call_budget(window) for window in spent)
        event = Event.about("mfa.rejected", counted)
        await self.publisher.publish(event)
        if counted.attempts_left > 0 and not spent:
            return CheckResult(outcome=CheckOutcome.WRONG_CODE, verification=counted, event=event)
        if locked_call:
            outcome, reason = CheckOutcome.LOCKED, "call_failures"
        elif spent:
            outcome, reason = CheckOutcome.NUMBER_LOCKED, "number_failures"
        else:
            outcome, reason = CheckOutcome.MAX_ATTEMPTS_REACHED, "max_attempts"
        ended = await self.store.transition(counted.id, Status.MAX_ATTEMPTS_REACHED, self.clock())
        if ended is None:
            # Ended meanwhile (a parallel right code, expiry): that one told everyone.
            current = await self.store.get_verification(counted.id) or counted
            if current.status is Status.APPROVED:
                return CheckResult(outcome=CheckOutcome.WRONG_CODE, verification=current, event=event)
            return CheckResult(outcome=outcome, verification=current, event=event)
        locked = Event.about("mfa.locked", ended, reason)
        await self.publisher.publish(locked)
        return CheckResult(outcome=outcome, verification=ended, event=locked)

    async def _end_if_spent(self, verification: Verification) -> None:
        """An earlier code of the call that a wrong reading used the last try of is ended."""
        if verification.attempts_left > 0:
            return
        ended = await self.store.transition(verification.id, Status.MAX_ATTEMPTS_REACHED, self.clock())
        if ended is not None:
            await self.publisher.publish(Event.about("mfa.locked", ended, "max_attempts"))

    async def _gone(self, counted: Verification) -> CheckResult:
        # The provider forgot the code while our record still says pending: its
        # clock ran out first, or it counted attempts we never saw. Either way
        # the code is dead; record it as expired so both sides agree.
        expired = await self.store.transition(counted.id, Status.EXPIRED, self.clock())
        if expired is None:
            current = await self.store.get_verification(counted.id) or counted
            return CheckResult(outcome=_FINAL_OUTCOME[current.status], verification=current)
        event = Event.about("mfa.expired", expired, "provider")
        await self.publisher.publish(event)
        return CheckResult(outcome=CheckOutcome.EXPIRED, verification=expired, event=event)

    # -- read, cancel, expire -----------------------------------------------
    async def get(self, verification_id: str, *, origin: Origin) -> Verification:
        """The verification, only if it came from ``origin`` (an interface sees only its own)."""
        verification = await self.store.get_verification(verification_id)
        if verification is None or verification.origin != origin:
            raise VerificationNotFound("No such verification.")
        if verification.status is Status.PENDING and verification.is_expired(self.clock()):
            # Report what is true now, even if the timer has not run yet.
            expired = await self._expire(verification.id)
            return expired or verification
        return verification

    async def cancel(self, verification_id: str, *, origin: Origin) -> Verification:
        verification = await self.get(verification_id, origin=origin)
        canceled = await self.store.transition(verification_id, Status.CANCELED, self.clock())
        if canceled is None:
            return await self.store.get_verification(verification_id) or verification
        try:
            await self.provider.cancel(canceled)
        except (ProviderUnavailable, ProviderRejected):
            log.warning("provider could not cancel verification %s; it is canceled here", canceled.id)
        await self.publisher.publish(Event.about("mfa.canceled", canceled))
        return canceled

    async def record_transfer(self, *, agent_id: str, call_id: str) -> Event:
        """A call is being connected to a person: `mfa.transferred` for everyone watching."""
        event = Event(type="mfa.transferred", origin="call", agent_id=agent_id, call_id=call_id)
        await self.publisher.publish(event)
        return event

    async def _expire(self, verification_id: str) -> Verification | None:
        expired = await self.store.transition(verification_id, Status.EXPIRED, self.clock())
        if expired is not None:
            await self.publisher.publish(Event.about("mfa.expired", expired))
        return expired

    async def expire_due(self) -> int:
        """Expire every pending verification past its lifetime; how many this call ended."""
        ended = 0
        while True:
            due = await self.store.due_for_expiry(self.clock())
            if not due:
                return ended
            for verification_id in due:
                if await self._expire(verification_id) is not None:
                    ended += 1

    async def run_expiry_timer(self, stop: asyncio.Event, interval: float = 1.0) -> None:
        """The durable timer: raises `mfa.expired` for codes that ran out unverified.

        It reads the schedule from the store, so codes that ran out while no
        instance was running are expired on the next start.
        """
        while not stop.is_set():
            try:
                await self.expire_due()
            except Exception:
                log.exception("expiry timer pass failed; retrying")
            next_due = None
            try:
                next_due = await self.store.next_expiry()
            except Exception:
                log.debug("could not read the next expiry", exc_info=True)
            delay = interval if next_due is None else min(interval, max(0.05, next_due - self.clock()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

"""The store's interfaces: every piece of state the engine keeps, one job per interface.

Each consumer names the job it uses: the limiter `WindowStore`, repeated
requests `ClaimStore`, webhooks `OutboxStore`, the live page `BroadcastStore`,
the key ring `KeyStore`, the verification engine `VerificationStore` and
`WindowStore`, the delivery follow-up `DeliveryStore`, the workflow and the
line-type lookup `RecordStore`, the pumping guard's holds `HoldStore`, the
history's list and summary `HistoryStore`. `Store` is all of them, with
`Lifecycle`: what a backend implements and what the runtime opens. Two backends
implement it: SQLite (one instance, the default) and Redis (several instances).
Every method that decides something does so atomically in the store (a
transaction in SQLite, a Lua script in Redis), so two requests or two instances
can never both win the same race.

Times are UNIX seconds as floats, passed in by the caller (so tests can use a
fake clock); the store never reads the clock itself, except where Redis uses
key expiry to forget data (a TTL is always given explicitly).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from engine.models import DeliveryState, Fallback, Status, Verification
from engine.stores.guard import GuardCheck, GuardRefused, Hold
from engine.stores.history import HistoryFilter, HistoryPage, Position, Span, Tallies
from engine.stores.windows import Refused, Window

# How long a finished verification stays readable after it ended (or expired),
# so a late check or a status query still gets its final status, not a 404.
RETAIN_FINISHED_SECONDS = 24 * 3600


class AttemptGate(StrEnum):
    """Why an attempt was or was not counted."""

    COUNTED = "counted"  # attempts was incremented; go ahead and check the code
    NOT_PENDING = "not_pending"  # already approved / canceled / max_attempts_reached / expired
    EXPIRED = "expired"  # past expires_at: the store moved it to `expired` just now
    NO_ATTEMPTS_LEFT = "no_attempts_left"  # every attempt is counted; the last ones decide
    OVER_BUDGET = "over_budget"  # a failure budget (the call's, the number's) is used up
    CALL_VERIFIED = "call_verified"  # the call it was sent on is verified already


@dataclass(frozen=True)
class Record:
    """A small JSON document kept ``ttl`` seconds under ``kind`` and ``id`` (see `put_record`)."""

    kind: str
    id: str
    data: dict[str, Any]
    ttl: float


# The failure budgets an attempt at a verification is counted in, from its number and its call.
Budgets = Callable[[str, str | None], Sequence[Window]]


@dataclass(frozen=True)
class Attempt:
    """The answer of `begin_attempt`: the gate, and the verification as it now stands.

    ``changed`` is True when this very call moved the verification out of
    `pending` (to `expired`), so the caller knows it must publish that event.
    ``budgets`` are the windows a COUNTED attempt was counted in, and ``room``
    how many more events each of them has room for after it (0: this attempt
    used up the budget). ``refused`` is the first full budget of OVER_BUDGET.
    """

    gate: AttemptGate
    verification: Verification
    changed: bool = False
    budgets: tuple[Window, ...] = ()
    room: tuple[int, ...] = ()
    refused: Refused | None = None


class ClaimState(StrEnum):
    """Who holds a claimed key (see `ClaimStore.claim`)."""

    NEW = "new"  # the caller owns the key now and must `complete` or `release` it
    RUNNING = "running"  # someone else owns it and has not finished
    DONE = "done"  # finished; `result` holds the stored answer


@dataclass(frozen=True)
class Claim:
    """The answer of `ClaimStore.claim`: the state, and the stored result once DONE."""

    state: ClaimState
    result: dict[str, Any] | None = None


@dataclass(frozen=True)
class OutboxItem:
    """A message waiting in a durable outbox (webhook deliveries)."""

    id: str
    payload: str
    attempts: int
    due_at: float


class Lifecycle(Protocol):
    """Opening, closing and asking a store whether it answers."""

    async def open(self) -> None:
        """Connect, create tables/scripts. Called once at start-up."""

    async def close(self) -> None:
        """Release connections. Safe to call twice."""

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers now (readiness)."""


class KeyStore(Protocol):
    """The server keys every instance shares (engine/keys.py)."""

    async def server_keys(self, proposed: Mapping[str, bytes]) -> dict[str, bytes]:
        """Keep each proposed key whose name the store holds none for, and return
        what the store holds for every name: one atomic step, one round trip.

        The first writer wins: instances proposing different values at the same
        time all get the same answer. Nothing is cached, so after the store lost
        its data the next call puts the caller's keys back (engine/keys.py).
        """


class VerificationStore(Protocol):
    """Verifications: created, counted, ended and expired, each decision atomic."""

    async def create_verification(self, verification: Verification) -> None:
        """Record a new verification (status `pending`). Ids are unique.

        In the same step its history entry is written and its send counted in the
        history's rollups (`HistoryStore`); every step below that changes its status
        or attempts changes the entry with it.
        """

    async def get_verification(self, verification_id: str) -> Verification | None:
        """The verification, or None if unknown or forgotten."""

    async def begin_attempt(
        self,
        verification_id: str,
        now: float,
        *,
        call_id: str | None = None,
        origin: str | None = None,
        budgets: Budgets | None = None,
        verified_kind: str | None = None,
    ) -> Attempt | None:
        """Atomically count one attempt at checking a code, if one may be made.

        None when the id is unknown, when ``call_id`` is given and the
        verification was sent on another call, or when ``origin`` is given and
        the verification came from another interface. Then, in this order:
        - ``verified_kind`` given and the verification's call has a record of
          that kind (it is verified already): gate CALL_VERIFIED, nothing changes;
        - one of ``budgets(to, call_id)`` (the verification's number and call)
          is full: gate OVER_BUDGET with ``refused``, nothing changes;
        - not `pending`: gate NOT_PENDING, nothing changes;
        - `pending` but ``now >= expires_at``: status becomes `expired`, gate EXPIRED,
          ``changed`` True;
        - `pending` with ``attempts >= max_attempts``: gate NO_ATTEMPTS_LEFT and
          nothing changes: the counted attempts may still be in flight, and the
          last of them (perhaps the right code) decides how it ends;
        - otherwise ``attempts += 1`` and one event in every budget (a failure
          counted before the code is judged, so parallel wrong codes can never
          pass a budget), gate COUNTED.
        """

    async def pending_for_call(self, call_id: str, now: float) -> list[Verification]:
        """The call's `pending` verifications not expired at ``now``, newest first."""

    async def refund_attempt(self, verification_id: str, budgets: Sequence[Window], now: float) -> None:
        """Undo one counted attempt whose code could not be checked (provider down),
        and take back its event in ``budgets``, in one step."""

    async def transition(
        self,
        verification_id: str,
        to: Status,
        now: float,
        *,
        record: Record | None = None,
        count: Sequence[Window] = (),
        give_back: Sequence[Window] = (),
    ) -> Verification | None:
        """Move a `pending` verification to ``to``; None if it was not `pending`.

        With ``record``, the move also keeps that record, and with ``count``
        (bucketed windows) it counts one event in each, in the same atomic
        step: all happen, or (when it was not `pending`) none. So an approval
        is counted once, however many right codes race for it.

        With ``give_back``, first and whether or not the move happens, one event
        is taken back from each counted window as ``unhit(give_back, now)`` would:
        an approval gives back the failure its attempt was counted with.

        Exactly one of several concurrent callers succeeds. Ending a
        verification removes it from the expiry schedule and keeps it
        readable for RETAIN_FINISHED_SECONDS.
        """

    async def due_for_expiry(self, now: float, limit: int = 100) -> list[str]:
        """Ids of `pending` verifications whose ``expires_at`` has passed."""

    async def next_expiry(self) -> float | None:
        """The earliest ``expires_at`` among `pending` verifications, or None."""


@dataclass(frozen=True)
class DeliveryChange:
    """The answer of `DeliveryStore.record_delivery`: the verification as it now stands, and
    whether this very report moved its text to a final state (so its event is raised once)."""

    verification: Verification
    became_final: bool = False


class DeliveryStore(Protocol):
    """A text's delivery as the carrier reports it, and the one voice call that may follow it."""

    async def record_delivery(
        self, verification_id: str, carrier_ref: str, state: DeliveryState, error_code: str | None
    ) -> DeliveryChange | None:
        """Record a carrier's report on a verification's text, atomically.

        None when the id is unknown, its text's delivery is not tracked (``delivery`` is
        None), or ``carrier_ref`` is not the id its send got (``provider_ref``). Else the
        state only moves forward: a report of a state no later than the recorded one
        (repeated, or out of order) changes nothing, and once a final state is recorded
        nothing changes again. ``error_code`` is kept with a final state only.
        ``became_final`` is True for the one report that made it final. Reports are
        recorded whatever the verification's status.
        """

    async def claim_fallback(self, verification_id: str, now: float, code_digest: str) -> Verification | None:
        """Take the verification's one voice call, atomically: only while it is `pending` and
        not expired at ``now``, its delivery tracked and not `delivered`, and no call taken yet.
        Then ``fallback`` becomes `calling` with ``code_digest`` (the call's code), and the
        verification is returned; else None and nothing changes."""

    async def settle_fallback(self, verification_id: str, outcome: Fallback) -> Verification | None:
        """Record how the call taken with `claim_fallback` went (``fallback`` was `calling`);
        the verification, or None if there was no call being placed."""

    async def mark_delivery_told(self, verification_id: str) -> bool:
        """Note that the caller was told about the text's delivery; True only for the one
        caller that noted it (so two answers never both tell it)."""


class HistoryStore(Protocol):
    """Verifications as the history keeps them, for the retention the store was opened
    with (engine/stores/history.py): listed newest first, and counted in rollups.

    `VerificationStore`'s steps write both; these only read.
    """

    async def list_history(
        self, query: HistoryFilter, now: float, *, after: Position | None = None, limit: int = 50
    ) -> HistoryPage:
        """Entries that ``query`` matches, sent within the retention at ``now``, newest
        first ((created_at, id) descending), strictly after ``after`` in that order: at most
        ``limit``, and where the next page starts when there are more.

        The cost follows the page, not the history (engine/stores/history.py). A filter
        that matches many combinations of dimensions may give a page of fewer than
        ``limit`` entries (even none) with a next page: the walk stopped at its budget.
        """

    async def history_tallies(self, query: HistoryFilter, span: Span) -> Tallies:
        """The rollups of the buckets in ``span`` that ``query``'s agent id, origin, channel
        and country leave, summed by bucket, by country and by channel. ``query``'s status
        and times are the caller's to apply.
        """


class WindowStore(Protocol):
    """Counting windows: rate limits and failure budgets (engine/stores/windows.py)."""

    async def hit(
        self, windows: Sequence[Window], now: float, *, guard: GuardCheck | None = None
    ) -> Refused | GuardRefused | None:
        """Record one event in every counted window if each window has room, and
        return None; else record nothing and return the first window without
        room, with the seconds until it would have room. One atomic step: two
        concurrent hits can never both take the last place of a window.

        With ``guard``, once every window has room, the pumping guard decides in
        the same step (engine/stores/guard.py): a GuardRefused records nothing
        but the hold it may raise; an admitted send is also counted in
        ``guard.counted``.

        An exact window's events are shared with `begin_attempt`'s budgets: a
        window of the same key counts the same events."""

    async def unhit(self, windows: Sequence[Window], now: float) -> None:
        """Take back the event that ``hit(windows, now)`` recorded in each counted window
        (a send that then failed, a failure budget given back for a right code)."""


class HoldStore(Protocol):
    """The pumping guard's holds (raised inside `WindowStore.hit`): listed, and ended early."""

    async def holds(self, now: float) -> list[Hold]:
        """Every hold still in force at ``now``, the newest first."""

    async def release_hold(self, prefix: str, forget: Sequence[Window], now: float) -> Hold | None:
        """End ``prefix``'s hold now, and forget the events of the bucketed windows in
        ``forget`` (its counts, so it is judged afresh), in one step.

        The hold as it was, or None when the prefix was not held at ``now``."""


class ClaimStore(Protocol):
    """Keys a request claims so a repeat of it is answered, not run again."""

    async def claim(self, key: str, ttl: float) -> Claim:
        """Take ``key`` for a request, or report who has it.

        NEW: the caller owns it for ``ttl`` seconds (after that, if never
        completed, it is free again: a crashed owner does not block forever).
        RUNNING: another owner is still working. DONE: the stored result.
        """

    async def complete(self, key: str, result: dict[str, Any], ttl: float) -> None:
        """Store the owner's result under ``key`` for ``ttl`` seconds."""

    async def release(self, key: str) -> None:
        """Forget ``key`` (the request failed in a way a new try may repeat)."""


class RecordStore(Protocol):
    """Small JSON documents kept for a while under a kind and an id."""

    async def put_record(self, kind: str, record_id: str, data: dict[str, Any], ttl: float) -> None:
        """Keep a small JSON document (e.g. a call's verified flag, a workflow instance)."""

    async def get_record(self, kind: str, record_id: str) -> dict[str, Any] | None:
        """The document, or None if absent or expired."""

    async def delete_record(self, kind: str, record_id: str) -> None:
        """Forget the document at once (nothing happens if there is none)."""


class OutboxStore(Protocol):
    """Durable queues of messages to deliver (webhook deliveries)."""

    async def enqueue(self, queue: str, item_id: str, payload: str, due_at: float) -> None:
        """Add an item; an id already queued is ignored (de-duplication)."""

    async def claim_due(self, queue: str, now: float, lease: float, limit: int) -> list[OutboxItem]:
        """Items due by ``now``, each hidden from other claimers for ``lease`` seconds."""

    async def ack(self, queue: str, item_id: str) -> None:
        """The item was delivered: remove it."""

    async def retry_later(self, queue: str, item_id: str, due_at: float) -> None:
        """Delivery failed: count the attempt and make it due again at ``due_at``."""

    async def backlog(self, queue: str) -> int:
        """How many items wait in the queue."""


class BroadcastStore(Protocol):
    """Fan-out of messages to every instance sharing the store (the live page's events)."""

    async def broadcast(self, message: str) -> None:
        """Send a message to every instance's `listen` (itself included)."""

    def listen(self) -> AsyncIterator[str]:
        """Every message broadcast from now on, by any instance sharing the store."""


class Store(
    Lifecycle,
    KeyStore,
    VerificationStore,
    DeliveryStore,
    WindowStore,
    HoldStore,
    ClaimStore,
    RecordStore,
    OutboxStore,
    BroadcastStore,
    HistoryStore,
    Protocol,
):
    """Every job at once: what a backend implements (SQLite, Redis) and the runtime opens.

    Implementations raise StoreUnavailable when the store cannot be reached.
    """

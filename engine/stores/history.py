"""History: what `HistoryStore` lists and counts, and the arithmetic both stores share.

A verification's record (with its full number) is forgotten a day after it
ends. Its **history entry** outlives it for the retention (``MFA_HISTORY_DAYS``)
and holds only what the list shows: the number masked to its last four digits,
its country, agent id, origin, channel, call id, status, attempts and times.
Entries are written in the same atomic step as the verification itself
(created, counted, ended, expired), so history never disagrees with the engine.

**Rollups** count, per bucket of send time and per (agent id, origin, channel,
country): codes sent, how many of them ended approved, expired,
max_attempts_reached or canceled, and the time from send to approval in fixed
bins (`APPROVE_BIN_EDGES`). An outcome is counted in the bucket of the send, so
a window's conversion is that of the codes sent in it. Each event is counted at
three sizes: minutes (kept `MINUTES_KEPT`, for the last hours and the live
chart), hours and UTC days (kept for the retention), so a summary of any window
reads a bounded number of buckets: whole days, whole hours at its edges,
minutes at the edges of those (`spans`).

Times are the caller's clock, as everywhere in the stores.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from engine.models import Channel, Origin, Status

MINUTE, HOUR, DAY = 60, 3600, 86400
LEVELS = (MINUTE, HOUR, DAY)
# Minute buckets are kept this long: the summary counts by the minute within
# MINUTE_PRECISION_WITHIN of now, and its edges reach an hour further back.
MINUTES_KEPT = 28 * HOUR
MINUTE_PRECISION_WITHIN = 26 * HOUR
DEFAULT_RETENTION = 30 * DAY

# The upper edges (seconds) of the time-to-approve bins: bin 0 holds [0, 5], bin i
# (EDGES[i-1], EDGES[i]]. 5 s wide up to 30 s, then wider; a code lives 7 days at most.
APPROVE_BIN_EDGES = (
    5, 10, 15, 20, 25, 30, 40, 50, 60, 75, 90, 120, 150, 180, 240, 300, 450, 600,
    900, 1800, 3600, 7200, 86400, 604800,
)  # fmt: skip
FINAL_STATUSES = (Status.APPROVED, Status.EXPIRED, Status.MAX_ATTEMPTS_REACHED, Status.CANCELED)

# (created_at, id): where an entry stands in the list's order (newest first: both descending).
Position = tuple[float, str]


def approve_bin(seconds: float) -> int:
    """The bin a time from send to approval falls in."""
    return min(bisect_left(APPROVE_BIN_EDGES, max(0.0, seconds)), len(APPROVE_BIN_EDGES) - 1)


def bucket_start(at: float, level: int) -> int:
    """The start of the bucket of ``level`` seconds that ``at`` falls in (the same sum in Lua)."""
    return math.floor(at / level) * level


def kept_for(level: int, retention: float) -> float:
    """Seconds a bucket of ``level`` is kept after its first event."""
    if level == MINUTE:
        return min(float(MINUTES_KEPT), retention + MINUTE)
    return retention + level


@dataclass(frozen=True)
class HistoryFilter:
    """Which entries a list or a summary is about. Each field left None matches all.

    ``since`` is inclusive and ``until`` exclusive, both on the send time.
    """

    agent_id: str | None = None
    status: Status | None = None
    origin: Origin | None = None
    channel: Channel | None = None
    country: str | None = None
    since: float | None = None
    until: float | None = None

    @property
    def narrows(self) -> bool:
        """Whether it names any dimension (not only a time range)."""
        return any(
            value is not None
            for value in (self.agent_id, self.status, self.origin, self.channel, self.country)
        )

    def matches(
        self, agent_id: str, origin: str, channel: str, country: str, status: str | None = None
    ) -> bool:
        """Whether a combination of dimensions (status left out when None) is one it asks for."""
        return (
            (self.agent_id is None or agent_id == self.agent_id)
            and (self.origin is None or origin == self.origin)
            and (self.channel is None or channel == self.channel)
            and (self.country is None or country == self.country)
            and (self.status is None or status is None or status == self.status)
        )


@dataclass(frozen=True)
class HistoryEntry:
    """A verification as the history keeps it: never the full number, never a code."""

    id: str
    to: str  # masked to its last four digits
    country: str | None
    agent_id: str
    origin: Origin
    channel: Channel
    call_id: str | None
    status: Status
    attempts: int
    max_attempts: int
    created_at: float
    ended_at: float | None = None  # when it left `pending`

    @property
    def position(self) -> Position:
        return (self.created_at, self.id)

    @property
    def attempts_left(self) -> int:
        return max(0, self.max_attempts - self.attempts)


@dataclass(frozen=True)
class HistoryPage:
    """One page of a list: its entries, and where the next page starts (None: this was the last)."""

    entries: list[HistoryEntry]
    next: Position | None = None


def _no_bins() -> tuple[int, ...]:
    return (0,) * len(APPROVE_BIN_EDGES)


@dataclass(frozen=True)
class Tally:
    """Codes sent, how they ended, and the approvals' times in bins."""

    sent: int = 0
    approved: int = 0
    expired: int = 0
    max_attempts_reached: int = 0
    canceled: int = 0
    approve_bins: tuple[int, ...] = field(default_factory=_no_bins)

    @classmethod
    def of(cls, counts: Sequence[int]) -> Tally:
        """From the five outcome counts (sent, approved, expired, max_attempts_reached,
        canceled) followed by the bins."""
        sent, approved, expired, max_attempts_reached, canceled = (int(count) for count in counts[:5])
        bins = tuple(int(count) for count in counts[5:])
        return cls(sent, approved, expired, max_attempts_reached, canceled, bins)

    def __add__(self, other: Tally) -> Tally:
        return Tally(
            self.sent + other.sent,
            self.approved + other.approved,
            self.expired + other.expired,
            self.max_attempts_reached + other.max_attempts_reached,
            self.canceled + other.canceled,
            tuple(mine + theirs for mine, theirs in zip(self.approve_bins, other.approve_bins, strict=True)),
        )

    @property
    def pending(self) -> int:
        """Sent and not ended yet."""
        return max(0, self.sent - self.approved - self.expired - self.max_attempts_reached - self.canceled)

    def count(self, status: Status) -> int:
        return self.pending if status is Status.PENDING else int(getattr(self, status.value))

    def only(self, status: Status) -> Tally:
        """What is left when only verifications now in ``status`` are counted."""
        kept = {final.value: self.count(final) if final is status else 0 for final in FINAL_STATUSES}
        bins = self.approve_bins if status is Status.APPROVED else _no_bins()
        return Tally(sent=self.count(status), approve_bins=bins, **kept)

    @property
    def conversion(self) -> float | None:
        """Approved / sent; None when nothing was sent."""
        return self.approved / self.sent if self.sent else None

    def approve_quantile(self, fraction: float) -> int | None:
        """The upper edge of the bin holding that quantile of the times to approve (nearest rank)."""
        total = sum(self.approve_bins)
        if not total:
            return None
        rank = max(1, math.ceil(fraction * total))
        seen = 0
        for index, count in enumerate(self.approve_bins):
            seen += count
            if seen >= rank:
                return APPROVE_BIN_EDGES[index]
        return APPROVE_BIN_EDGES[-1]  # unreachable: the bins add up to total


@dataclass(frozen=True)
class Span:
    """The buckets of ``level`` seconds that start in [start, end)."""

    level: int
    start: int
    end: int

    def starts(self) -> range:
        return range(self.start, self.end, self.level)

    def holds(self, level: int, start: int) -> bool:
        return level == self.level and self.start <= start < self.end


@dataclass(frozen=True)
class BucketTally:
    """One bucket's counts for one (channel, country), summed over the filter's other dimensions."""

    level: int
    start: int
    channel: str
    country: str
    tally: Tally


def spans(start: int, end: int) -> list[Span]:
    """[start, end) cut into as few whole buckets as possible: minutes up to the first
    whole hour, hours up to the first whole day, days, then hours and minutes again up to
    ``end``. Both ends are whole minutes (whole hours where minutes are no longer kept)."""
    cut: list[Span] = []
    position = start

    def take(level: int, upto: int) -> None:
        nonlocal position
        if upto > position:
            cut.append(Span(level, position, upto))
            position = upto

    take(MINUTE, min(_ceil(position, HOUR), end))
    take(HOUR, min(_ceil(position, DAY), end // HOUR * HOUR))
    take(DAY, end // DAY * DAY)
    take(HOUR, end // HOUR * HOUR)
    take(MINUTE, end)
    return cut


def _ceil(at: int, level: int) -> int:
    return -(-at // level) * level


# -- merging sources that each list newest first ------------------------------------

T = TypeVar("T")
S = TypeVar("S", bound=Hashable)


@dataclass
class _Read(Generic[T]):
    items: list[T] = field(default_factory=list)
    done: bool = False


async def newest_first(
    sources: Sequence[S],
    fetch: Callable[[list[tuple[S, T | None, int]]], Awaitable[list[list[T]]]],
    limit: int,
    key: Callable[[T], Any],
) -> list[T]:
    """The ``limit`` newest items across ``sources`` (greatest ``key`` first), each source
    listing its own newest first and read in chunks.

    ``fetch`` answers ``(source, after, count)`` requests, all of one round at once: up to
    ``count`` items of that source older than the item ``after`` (from its newest when
    None), newest first. A source is read again only while the oldest item read from it
    is newer than the ``limit``-th best so far: everything unread in it is older than that
    item, so nothing unread can displace one kept. Each round doubles the chunk.
    """
    reads: dict[S, _Read[T]] = {source: _Read() for source in sources}
    chunk = max(4, -(-(limit + 1) // max(1, len(reads))))
    wanted = list(reads)
    best: list[T] = []
    while wanted:
        requests = [
            (source, reads[source].items[-1] if reads[source].items else None, chunk) for source in wanted
        ]
        for (source, _, _), items in zip(requests, await fetch(requests), strict=True):
            reads[source].items.extend(items)
            reads[source].done = len(items) < chunk
        best = sorted((item for read in reads.values() for item in read.items), key=key, reverse=True)[:limit]
        wanted = [
            source
            for source, read in reads.items()
            if not read.done and (len(best) < limit or key(read.items[-1]) > key(best[-1]))
        ]
        chunk *= 2
    return best

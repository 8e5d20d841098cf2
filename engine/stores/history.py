"""History: what `HistoryStore` lists and counts, and the arithmetic both stores share.

A verification's record (with its full number) is forgotten a day after it
ends. Its **history entry** outlives it for the retention (``MFA_HISTORY_DAYS``)
and holds only what the list shows: the number masked to its last four digits,
its country, agent id, origin, channel, call id, status, attempts and times.
Entries are written in the same atomic step as the verification itself
(created, counted, ended, expired), so history never disagrees with the engine.

Entries are listed through indexes by send time: one per status, and one per
combination of (agent id, origin, channel, country, status). A list filtered on
few combinations merges theirs newest first (`newest_first`); one whose filter
matches more than `MERGE_UP_TO` combinations (a broad one: most entries match it)
walks the status indexes instead, keeping what matches and reading at most
`WALK_BUDGET` entries for one page.

**Rollups** count, per bucket of send time: codes sent, how many of them ended
approved, expired, max_attempts_reached or canceled, and the times from send to
approval in fixed bins (`APPROVE_BIN_EDGES`). An outcome is counted in the bucket
of its send, so a window's conversion is that of the codes sent in it. Each
event is counted in buckets of three sizes (minutes, kept `MINUTES_KEPT`; hours,
`HOURS_KEPT`; UTC days, the retention) and at two levels of detail: per agent id
and (origin, channel, country), and for all agents per (channel, country)
(`ALL_AGENTS`), so a summary of every agent reads a few rows per bucket however
many agents and origins there are.

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
# The agent id of the rollups' all-agents rows (no agent id can be "*").
ALL_AGENTS = "*"
# A filtered list merges the indexes of at most this many combinations; past it, it walks.
MERGE_UP_TO = 128
WALK_BUDGET = 5000
LEVELS = (MINUTE, HOUR, DAY)
# Minute buckets are kept this long, hour buckets HOURS_KEPT (both counted from the bucket's
# start); a summary is counted by the minute only when its window starts within
# MINUTE_PRECISION_WITHIN of now, by the hour within HOUR_PRECISION_WITHIN (the rest is margin).
MINUTES_KEPT = 28 * HOUR
MINUTE_PRECISION_WITHIN = 26 * HOUR
HOURS_KEPT = 8 * DAY
HOUR_PRECISION_WITHIN = 7 * DAY
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


def kept_from_start(level: int, retention: float) -> float:
    """Seconds a bucket of ``level`` is kept, counted from its start."""
    return {MINUTE: min(MINUTES_KEPT, retention), HOUR: min(HOURS_KEPT, retention)}.get(
        level, retention
    ) + level


def kept_for(level: int, retention: float, start: int, now: float) -> float:
    """Seconds the bucket of ``level`` starting at ``start`` is still kept at ``now``: 0 or
    less when it is past use (an outcome counted long after its send leaves it out)."""
    return kept_from_start(level, retention) - (now - start)


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
    def names_more_than_status(self) -> bool:
        """Whether it names an agent id, origin, channel or country."""
        return any(value is not None for value in (self.agent_id, self.origin, self.channel, self.country))

    def lists(self, entry: HistoryEntry) -> bool:
        """Whether ``entry`` is one it asks for (its send time aside)."""
        return self.matches(entry.agent_id, entry.origin, entry.channel, entry.country or "", entry.status)

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


# A rollup count's place in `Tally.of`'s counts, by its short name (the bins are t0, t1...).
TALLY_PLACES = {"s": 0, "a": 1, "e": 2, "m": 3, "c": 4} | {
    f"t{index}": 5 + index for index in range(len(APPROVE_BIN_EDGES))
}
TALLY_WIDTH = len(TALLY_PLACES)


@dataclass(frozen=True)
class Tallies:
    """A span's rollups summed three ways: by bucket (its start), by country ('' when not
    known) and by channel. The times to approve are in ``by_start``; the other two may
    leave them out."""

    by_start: dict[int, Tally]
    by_country: dict[str, Tally]
    by_channel: dict[str, Tally]


class TallySums:
    """Adds rollup counts up three ways as the stores read them (a summary reads thousands
    of counts: `Tally` arithmetic on each would cost more than the reading)."""

    def __init__(self) -> None:
        self._ways: tuple[dict[Any, list[int]], ...] = ({}, {}, {})
        self._rows: tuple[dict[Any, list[Sequence[int]]], ...] = ({}, {}, {})

    def add(self, start: int, channel: str, country: str, place: int, count: int) -> None:
        """One count, at ``place`` (see TALLY_PLACES)."""
        for way, key in zip(self._ways, (start, country, channel), strict=True):
            sums = way.get(key)
            if sums is None:
                sums = way[key] = [0] * TALLY_WIDTH
            sums[place] += count

    def add_to_bucket(self, start: int, place: int, count: int) -> None:
        """A count of a whole bucket, of no one country or channel (a bucket's bins)."""
        sums = self._ways[0].get(start)
        if sums is None:
            sums = self._ways[0][start] = [0] * TALLY_WIDTH
        sums[place] += count

    def add_row(self, start: int, channel: str, country: str, counts: Sequence[int]) -> None:
        """Every count of a row, in `Tally.of`'s order (summed column by column at the end)."""
        for rows, key in zip(self._rows, (start, country, channel), strict=True):
            rows.setdefault(key, []).append(counts)

    def tallies(self) -> Tallies:
        for way, rows in zip(self._ways, self._rows, strict=True):
            for key, group in rows.items():
                columns = [sum(column) for column in zip(*group, strict=True)]
                sums = way.get(key)
                way[key] = columns if sums is None else [a + b for a, b in zip(sums, columns, strict=True)]
            rows.clear()
        by_start, by_country, by_channel = (
            {key: Tally.of(sums) for key, sums in way.items()} for way in self._ways
        )
        return Tallies(by_start, by_country, by_channel)


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


@dataclass(frozen=True)
class Walked(Generic[T]):
    """What `newest_matching` kept, the last item it read, and whether the sources ran out."""

    kept: list[T]
    last: T | None
    exhausted: bool


async def newest_matching(
    sources: Sequence[S],
    fetch: Callable[[list[tuple[S, T | None, int]]], Awaitable[list[list[T]]]],
    wanted: int,
    key: Callable[[T], Any],
    keep: Callable[[T], bool],
    budget: int | None = None,
) -> Walked[T]:
    """Items of ``sources`` merged newest first, keeping those ``keep`` accepts, until
    ``wanted`` are kept or ``budget`` (WALK_BUDGET) have been read (``fetch`` as for
    `newest_first`)."""
    budget = WALK_BUDGET if budget is None else budget
    kept: list[T] = []
    last: T | None = None
    read = 0
    chunk = min(budget, max(64, 4 * wanted))
    while len(kept) < wanted and read < budget:
        size = min(chunk, budget - read)
        batch = await newest_first(sources, _starting_after(fetch, last), size, key)
        kept += [item for item in batch if keep(item)]
        read += len(batch)
        last = batch[-1] if batch else last
        if len(batch) < size:
            return Walked(kept, last, exhausted=True)
    return Walked(kept, last, exhausted=False)


def _starting_after(
    fetch: Callable[[list[tuple[S, T | None, int]]], Awaitable[list[list[T]]]], start: T | None
) -> Callable[[list[tuple[S, T | None, int]]], Awaitable[list[list[T]]]]:
    """``fetch``, reading each source from ``start`` on where it would read from its newest."""

    async def fetch_after(requests: list[tuple[S, T | None, int]]) -> list[list[T]]:
        return await fetch(
            [(source, start if after is None else after, count) for source, after, count in requests]
        )

    return fetch_after


def next_page(
    found: list[T], limit: int, position: Callable[[T], Position], *, walked: Walked[T] | None = None
) -> Position | None:
    """Where the page after the first ``limit`` items of ``found`` starts: after its last item
    when there are more; after the last item read when a walk stopped at its budget; else None."""
    if len(found) > limit:
        return position(found[limit - 1])
    if walked is not None and not walked.exhausted and walked.last is not None:
        return position(walked.last)
    return None

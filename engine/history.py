"""The history's two answers, for the HTTP API and the dashboard: what happened (a list,
newest first, page by page) and whether it works (a summary of outcomes, conversion and
time to verify, by country, by channel and over time). Both read the store only
(`HistoryStore`; what is kept and how is in engine/stores/history.py).

A page's cursor is opaque to clients: the position of the page's last entry,
(created_at, id), base64url-encoded with a version. A cursor that does not decode
to a plausible position is refused (`InvalidCursor`); one that decodes is only ever
a place to start reading an index from, so a forged one costs what any page costs.

A summary counts the codes sent in its window, however they ended (so its
conversion is "of the codes sent then"). It reads the rollups in buckets of one
size, chosen by the window's length (`bucket_for`): minutes for up to 6 hours
within the last 26 hours, hours for up to 3 days within the last 7 days, UTC days
otherwise. ``since`` is
rounded down (but not to before the retention: then up) and ``until`` up to that
size; the answer says which window it counted, and its timeline is those buckets.
Times to approve are counted in fixed bins (`APPROVE_BIN_EDGES`): the median and
p95 are the upper edge of the bin holding them.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.errors import InvalidCursor
from engine.stores.base import HistoryStore
from engine.stores.history import (
    DAY,
    HOUR,
    HOUR_PRECISION_WITHIN,
    MINUTE,
    MINUTE_PRECISION_WITHIN,
    HistoryEntry,
    HistoryFilter,
    Position,
    Span,
    Tally,
)

MAX_LIMIT = 200
DEFAULT_LIMIT = 50
# A summary's bucket: minutes for a window up to this long, hours up to HOURS_UP_TO (each
# when recent enough to have them), days otherwise: at most 361, 73 and 401 buckets
# (MFA_HISTORY_DAYS <= 400).
MINUTES_UP_TO = 6 * HOUR
HOURS_UP_TO = 3 * DAY

_CURSOR_VERSION = "h1"
_CURSOR_MAX_LENGTH = 200
_CURSOR_TEXT = re.compile(r"^[A-Za-z0-9_-]+$")
_ENTRY_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_LATEST_TIME = 1e11  # seconds: the year 5138; any later "time" is not one we wrote


def encode_cursor(position: Position) -> str:
    created_at, entry_id = position
    text = f"{_CURSOR_VERSION}:{created_at!r}:{entry_id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    """The position a cursor names; InvalidCursor for anything this module did not write."""
    refused = InvalidCursor("The cursor is not valid: pass the `next` value of the previous page unchanged.")
    if len(cursor) > _CURSOR_MAX_LENGTH or not _CURSOR_TEXT.match(cursor):
        raise refused
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise refused from None
    version, _, rest = text.partition(":")
    created, _, entry_id = rest.partition(":")
    try:
        created_at = float(created)
    except ValueError:
        raise refused from None
    if (
        version != _CURSOR_VERSION
        or not math.isfinite(created_at)
        or not 0 <= created_at < _LATEST_TIME
        or not _ENTRY_ID.match(entry_id)
    ):
        raise refused
    return (created_at, entry_id)


@dataclass(frozen=True)
class Page:
    """One page of the list, and the cursor of the next (None: this is the last)."""

    entries: list[HistoryEntry]
    next: str | None


@dataclass(frozen=True)
class Summary:
    """What became of the codes sent in [since, until), counted in buckets of ``step`` seconds.

    ``by_country`` is keyed by ISO region ('' for a verification whose country is not known),
    ``by_channel`` by channel; ``timeline`` holds each bucket of the window, by its start.
    """

    since: int
    until: int
    step: int
    totals: Tally
    by_country: dict[str, Tally] = field(default_factory=dict)
    by_channel: dict[str, Tally] = field(default_factory=dict)
    timeline: list[tuple[int, Tally]] = field(default_factory=list)


def bucket_for(since: float, until: float, now: float) -> int:
    """The bucket a summary of [since, until) at ``now`` is counted in."""
    if until - since <= MINUTES_UP_TO and since >= now - MINUTE_PRECISION_WITHIN:
        return MINUTE
    if until - since <= HOURS_UP_TO and since >= now - HOUR_PRECISION_WITHIN:
        return HOUR
    return DAY


class History:
    """The list and the summary, over a store kept for ``retention`` seconds."""

    def __init__(
        self, store: HistoryStore, retention: float, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.retention = retention
        self.clock = clock

    async def page(
        self, query: HistoryFilter, *, cursor: str | None = None, limit: int = DEFAULT_LIMIT
    ) -> Page:
        """Entries newest first, from ``cursor`` on (the previous page's ``next``)."""
        after = decode_cursor(cursor) if cursor is not None else None
        found = await self.store.list_history(
            query, self.clock(), after=after, limit=max(1, min(limit, MAX_LIMIT))
        )
        return Page(found.entries, encode_cursor(found.next) if found.next else None)

    async def summary(self, query: HistoryFilter) -> Summary:
        now = self.clock()
        earliest = now - self.retention
        since = max(query.since if query.since is not None else earliest, earliest)
        until = min(query.until if query.until is not None else now, now)
        step = bucket_for(since, until, now)
        # Rounded down, but never to a bucket that starts before the retention.
        start = math.floor(since / step) * step
        if start < earliest:
            start += step
        end = max(start, math.ceil(until / step) * step)
        tallies = await self.store.history_tallies(query, Span(step, start, end))

        def kept(tally: Tally) -> Tally:
            return tally if query.status is None else tally.only(query.status)

        timeline = [
            (bucket, kept(tallies.by_start.get(bucket, Tally()))) for bucket in range(start, end, step)
        ]
        return Summary(
            since=start,
            until=end,
            step=step,
            totals=sum((tally for _, tally in timeline), Tally()),
            by_country={country: kept(tally) for country, tally in tallies.by_country.items()},
            by_channel={channel: kept(tally) for channel, tally in tallies.by_channel.items()},
            timeline=timeline,
        )

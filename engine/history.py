"""The history's two answers, for the HTTP API and the dashboard: what happened (a list,
newest first, page by page) and whether it works (a summary of outcomes, conversion and
time to verify, by country, by channel and over time). Both read the store only
(`HistoryStore`; what is kept and how is in engine/stores/history.py).

A page's cursor is opaque to clients: the position of the page's last entry,
(created_at, id), base64url-encoded with a version. A cursor that does not decode
to a plausible position is refused (`InvalidCursor`); one that decodes is only ever
a place to start reading an index from, so a forged one costs what any page costs.

A summary counts the codes sent in its window, however they ended (so its
conversion is "of the codes sent then"). The window is read from the rollups, whose
smallest bucket is a minute, kept for the last 28 hours: ``since`` is rounded down and
``until`` up to the minute when they lie within `MINUTE_PRECISION_WITHIN` of now,
to the hour before that; the answer says which window it counted. Times to approve
are counted in fixed bins (`APPROVE_BIN_EDGES`): the median and p95 are the upper
edge of the bin holding them.
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
    MINUTE,
    MINUTE_PRECISION_WITHIN,
    HistoryEntry,
    HistoryFilter,
    Position,
    Span,
    Tally,
    spans,
)

MAX_LIMIT = 200
DEFAULT_LIMIT = 50
# The timeline's bucket: minutes for a window up to this long (and recent enough to have
# them), hours up to TIMELINE_HOURS_UP_TO, days beyond. At most a few hundred points.
TIMELINE_MINUTES_UP_TO = 6 * HOUR
TIMELINE_HOURS_UP_TO = 14 * DAY

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
    """What became of the codes sent in [since, until).

    ``precision``: the seconds ``since`` and ``until`` were rounded to. ``by_country`` is keyed
    by ISO region ('' for a verification whose country is not known), ``by_channel`` by channel.
    ``timeline``: each bucket of ``step`` seconds from the one holding ``since``, by its start.
    """

    since: float
    until: float
    precision: int
    totals: Tally
    by_country: dict[str, Tally] = field(default_factory=dict)
    by_channel: dict[str, Tally] = field(default_factory=dict)
    step: int = MINUTE
    timeline: list[tuple[int, Tally]] = field(default_factory=list)


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
        since_precision, until_precision = self._precision(since, now), self._precision(until, now)
        start = math.floor(since / since_precision) * since_precision
        end = max(start, math.ceil(until / until_precision) * until_precision)
        counted = spans(start, end)
        step = self._step(start, end, now)
        timeline = Span(step, start // step * step, end)
        rows = await self.store.history_tallies(query, [*counted, timeline])
        totals, by_country, by_channel = Tally(), dict[str, Tally](), dict[str, Tally]()
        over_time = {bucket: Tally() for bucket in timeline.starts()}
        for row in rows:
            tally = row.tally if query.status is None else row.tally.only(query.status)
            if any(span.holds(row.level, row.start) for span in counted):
                totals += tally
                by_country[row.country] = by_country.get(row.country, Tally()) + tally
                by_channel[row.channel] = by_channel.get(row.channel, Tally()) + tally
            if timeline.holds(row.level, row.start):
                over_time[row.start] += tally
        return Summary(
            since=start,
            until=end,
            precision=max(since_precision, until_precision),
            totals=totals,
            by_country=by_country,
            by_channel=by_channel,
            step=step,
            timeline=sorted(over_time.items()),
        )

    @staticmethod
    def _precision(at: float, now: float) -> int:
        """Minutes where minute buckets are kept, hours before."""
        return MINUTE if at >= now - MINUTE_PRECISION_WITHIN else HOUR

    @staticmethod
    def _step(start: int, end: int, now: float) -> int:
        if end - start <= TIMELINE_MINUTES_UP_TO and start >= now - MINUTE_PRECISION_WITHIN:
            return MINUTE
        return HOUR if end - start <= TIMELINE_HOURS_UP_TO else DAY

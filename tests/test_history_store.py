"""The history (engine/stores/history.py, engine/history.py) on SQLite and Redis alike: a
seeded set of verifications with known answers, listed with every filter and in pages,
summed into a summary, and forgotten after the retention.

Times are a fake clock passed in; only the physical forgetting waits, briefly, on the real one.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import pytest_asyncio

from engine.errors import InvalidCursor
from engine.history import History, decode_cursor, encode_cursor
from engine.models import Status, Verification
from engine.stores import RedisStore, SqliteStore, Store
from engine.stores import history as history_module
from engine.stores import redis as redis_module
from engine.stores import sqlite as sqlite_module
from engine.stores import sqlite_history as sqlite_history_module
from engine.stores.history import (
    APPROVE_BIN_EDGES,
    DAY,
    HOUR,
    MINUTE,
    HistoryEntry,
    HistoryFilter,
    Span,
    Tally,
    approve_bin,
)
from tests.conftest import _delete_prefix

# Midnight UTC, so the seeded sends fall in known minutes, hours and days.
DAY0 = 1_700_006_400.0
NUMBERS = {"US": "+12025550143", "GB": "+447400123456", "FR": "+33612345678"}
AGENTS = ("mfa", "signup")
ORIGINS = ("call", "api", "workflow")
CHANNELS = ("sms", "call")
ENDINGS = (
    Status.APPROVED,
    Status.APPROVED,
    Status.EXPIRED,
    Status.MAX_ATTEMPTS_REACHED,
    Status.CANCELED,
    Status.PENDING,
)
APPROVE_DELAYS = (3, 12, 28, 44, 70, 200, 700)

MakeStore = Callable[..., Awaitable[Store]]


@pytest_asyncio.fixture(params=["sqlite", "sqlite-fold-3", "redis"])
async def make(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[MakeStore]:
    """Opens stores of one backend with a given retention; ids read ``[sqlite]``/``[redis]``.

    ``sqlite-fold-3`` folds SQLite's history journal three steps at a time, so that most
    verifications are sent in one batch and ended in another, and the rest within one.
    """
    if request.param == "sqlite-fold-3":
        monkeypatch.setattr(sqlite_history_module, "FOLD_BATCH", 3)
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    opened: list[Store] = []

    async def open_one(**options: Any) -> Store:
        if redis_url is None:
            store: Store = SqliteStore(str(tmp_path / f"history-{len(opened)}.sqlite3"), **options)
        else:
            prefix = f"test:{uuid4().hex}:"
            request.addfinalizer(lambda: _delete_prefix(redis_url, prefix))
            store = RedisStore(redis_url, prefix=prefix, **options)
        await store.open()
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


@pytest_asyncio.fixture
async def store(make: MakeStore) -> Store:
    return await make()


@dataclass
class Seeded:
    """One seeded verification and what the test made of it."""

    verification: Verification
    status: Status
    ended_at: float | None
    attempts: int

    @property
    def country(self) -> str:
        return self.verification.country or ""


def verification_at(created_at: float, **changes: Any) -> Verification:
    country = changes.pop("country", "US")
    fields: dict[str, Any] = {
        "id": str(uuid4()),
        "to": NUMBERS[country],
        "country": country,
        "channel": "sms",
        "max_attempts": 3,
        "created_at": created_at,
        "expires_at": created_at + 600,
        "updated_at": created_at,
        "agent_id": "mfa",
        "provider": "local",
        "origin": "api",
    }
    return Verification(**(fields | changes))


async def seed(store: Store, count: int = 60, start: float = DAY0 + 10 * HOUR) -> list[Seeded]:
    """``count`` verifications 37 s apart, over every agent, origin, channel, country and ending."""
    seeded = []
    for index in range(count):
        verification = verification_at(
            start + index * 37,
            agent_id=AGENTS[index % 2],
            origin=ORIGINS[index % 3],
            channel=CHANNELS[(index // 3) % 2],
            country=list(NUMBERS)[(index // 2) % 3],
            call_id=f"call-{index}" if index % 3 == 0 else None,
        )
        await store.create_verification(verification)
        ending, attempts, ended_at = ENDINGS[index % len(ENDINGS)], 0, None
        if ending is Status.MAX_ATTEMPTS_REACHED:
            for _ in range(3):
                await store.begin_attempt(verification.id, verification.created_at + 5)
            attempts = 3
        if ending is not Status.PENDING:
            delay = APPROVE_DELAYS[index % len(APPROVE_DELAYS)] if ending is Status.APPROVED else 600
            ended_at = verification.created_at + delay
            assert await store.transition(verification.id, ending, ended_at) is not None
        seeded.append(Seeded(verification, ending, ended_at, attempts))
    return seeded


def expected(seeded: list[Seeded], query: HistoryFilter) -> list[str]:
    """The ids ``query`` should list, newest first: the model the stores are held to."""
    kept = [
        item
        for item in seeded
        if query.matches(
            item.verification.agent_id,
            item.verification.origin,
            item.verification.channel,
            item.country,
            item.status.value,
        )
        and (query.since is None or item.verification.created_at >= query.since)
        and (query.until is None or item.verification.created_at < query.until)
    ]
    kept.sort(key=lambda item: (item.verification.created_at, item.verification.id), reverse=True)
    return [item.verification.id for item in kept]


async def every_page(store: Store, query: HistoryFilter, now: float, limit: int) -> list[list[HistoryEntry]]:
    pages, after = [], None
    while True:
        page = await store.list_history(query, now, after=after, limit=limit)
        pages.append(page.entries)
        assert len(page.entries) <= limit
        if page.next is None:
            return pages
        if len(page.entries) == limit:
            assert page.next == page.entries[-1].position
        else:  # a walk that stopped at its budget: it goes on from the last entry it read
            assert not page.entries or page.next <= page.entries[-1].position
        after = page.next


@pytest.fixture(params=["merged", "walked"])
def listing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Lists either way: merging the combinations' indexes, or walking the status indexes
    (as a filter matching many combinations does) with a budget small enough to stop often."""
    if request.param == "walked":
        for module in (sqlite_module, redis_module):
            monkeypatch.setattr(module, "MERGE_UP_TO", 0)
        monkeypatch.setattr(history_module, "WALK_BUDGET", 9)
    return str(request.param)


LATER = DAY0 + 12 * HOUR  # "now" for the seeded set: every send is at most a few hours old


# -- the list ----------------------------------------------------------------------


async def test_an_entry_holds_what_the_list_shows_and_never_the_number(store: Store) -> None:
    on_call = verification_at(DAY0, country="GB", origin="call", call_id="call-7", agent_id="desk")
    await store.create_verification(on_call)
    await store.begin_attempt(on_call.id, DAY0 + 5)

    [entry] = (await store.list_history(HistoryFilter(), LATER)).entries
    assert entry == HistoryEntry(
        id=on_call.id,
        to="***3456",
        country="GB",
        agent_id="desk",
        origin="call",
        channel="sms",
        call_id="call-7",
        status=Status.PENDING,
        attempts=1,
        max_attempts=3,
        created_at=DAY0,
        ended_at=None,
    )
    assert "447400123456" not in repr(entry)

    await store.refund_attempt(on_call.id, (), DAY0 + 6)
    await store.transition(on_call.id, Status.APPROVED, DAY0 + 20)
    [entry] = (await store.list_history(HistoryFilter(), LATER)).entries
    assert (entry.status, entry.attempts, entry.ended_at) == (Status.APPROVED, 0, DAY0 + 20)


async def test_an_expiry_found_by_an_attempt_ends_the_entry_too(store: Store) -> None:
    verification = verification_at(DAY0, expires_at=DAY0 + 60)
    await store.create_verification(verification)
    attempt = await store.begin_attempt(verification.id, DAY0 + 61)
    assert attempt is not None and attempt.changed

    [entry] = (await store.list_history(HistoryFilter(status=Status.EXPIRED), LATER)).entries
    assert (entry.id, entry.ended_at) == (verification.id, DAY0 + 61)
    assert (await store.list_history(HistoryFilter(status=Status.PENDING), LATER)).entries == []


async def test_every_filter_alone_and_combined_lists_what_it_should(store: Store, listing: str) -> None:
    seeded = await seed(store)
    start = seeded[0].verification.created_at
    values: dict[str, list[Any]] = {
        "agent_id": [None, "mfa", "signup", "nobody"],
        "status": [None, *Status],
        "origin": [None, *ORIGINS],
        "channel": [None, *CHANNELS],
        "country": [None, "US", "GB", "DE"],
    }
    times = [
        (None, None),
        (start + 37 * 10, None),
        (None, start + 37 * 40),
        (start + 370, start + 37 * 40 + 1),
    ]
    queries = [
        HistoryFilter(**dict(zip(values, combination, strict=True)), since=since, until=until)
        for combination in itertools.product(*values.values())
        for since, until in times
    ]
    # Every filter alone, then a sample of the combinations (all of them take a while).
    checked = [query for query in queries if sum(value is not None for value in vars(query).values()) <= 1]
    checked += queries[:: len(queries) // 500]
    for query in checked:
        listed = [entry.id for page in await every_page(store, query, LATER, limit=7) for entry in page]
        assert listed == expected(seeded, query), query


async def test_pages_hold_every_entry_exactly_once_while_new_ones_arrive(store: Store, listing: str) -> None:
    known = await seed(store, count=45)
    arrivals = itertools.count()
    for query in (HistoryFilter(), HistoryFilter(agent_id="mfa"), HistoryFilter(status=Status.APPROVED)):
        before = expected(known, query)
        listed: list[str] = []
        page = await store.list_history(query, LATER, limit=4)
        while True:
            listed += [entry.id for entry in page.entries]
            # Sent meanwhile: newer than every page, so never in a later one.
            arrived = verification_at(LATER - 1000 + next(arrivals), agent_id="mfa")
            await store.create_verification(arrived)
            known.append(Seeded(arrived, Status.PENDING, None, 0))
            if page.next is None:
                break
            page = await store.list_history(query, LATER, after=page.next, limit=4)
        assert listed == before
        assert len(listed) == len(set(listed))


async def test_sends_at_the_same_instant_page_by_id(store: Store) -> None:
    same = [verification_at(DAY0) for _ in range(11)]
    for verification in same:
        await store.create_verification(verification)
    pages = await every_page(store, HistoryFilter(), LATER, limit=3)
    assert [len(page) for page in pages] == [3, 3, 3, 2]
    assert [entry.id for page in pages for entry in page] == sorted((v.id for v in same), reverse=True)


async def test_a_page_starts_anywhere_a_cursor_says_and_a_filtered_page_merges_its_combinations(
    store: Store,
) -> None:
    seeded = await seed(store, count=30)
    ids = expected(seeded, HistoryFilter(origin="call"))
    middle = next(item for item in seeded if item.verification.id == ids[4]).verification
    page = await store.list_history(
        HistoryFilter(origin="call"), LATER, after=(middle.created_at, middle.id), limit=3
    )
    assert [entry.id for entry in page.entries] == ids[5:8]
    assert page.next == page.entries[-1].position


# -- the summary -------------------------------------------------------------------


async def test_the_summary_counts_outcomes_conversion_and_times_of_the_codes_sent(store: Store) -> None:
    history = History(store, 30 * DAY, clock=lambda: LATER)
    delays = (3, 12, 28, 44, 70)
    start = DAY0 + 11 * HOUR
    for index, delay in enumerate(delays):
        approved = verification_at(start + index * MINUTE, country="GB" if index < 2 else "US")
        await store.create_verification(approved)
        await store.transition(approved.id, Status.APPROVED, approved.created_at + delay)
    for index, ending in enumerate((Status.EXPIRED, Status.MAX_ATTEMPTS_REACHED, Status.CANCELED)):
        ended = verification_at(start + index, channel="call", origin="call")
        await store.create_verification(ended)
        await store.transition(ended.id, ending, ended.created_at + 600)
    await store.create_verification(verification_at(start + 30, country="FR"))  # still pending

    summary = await history.summary(HistoryFilter())
    totals = summary.totals
    assert (totals.sent, totals.approved, totals.expired, totals.max_attempts_reached) == (9, 5, 1, 1)
    assert (totals.canceled, totals.pending) == (1, 1)
    assert totals.conversion == pytest.approx(5 / 9)
    # Nearest rank of 5 approvals: the median is the 3rd (28 s, in (25, 30]), p95 the 5th (70 s, in (60, 75]).
    assert (totals.approve_quantile(0.5), totals.approve_quantile(0.95)) == (30, 75)
    assert {country: tally.sent for country, tally in summary.by_country.items()} == {
        "GB": 2,
        "US": 6,
        "FR": 1,
    }
    assert summary.by_country["GB"].conversion == 1.0
    assert summary.by_country["US"].approved == 3
    assert {channel: (tally.sent, tally.approved) for channel, tally in summary.by_channel.items()} == {
        "sms": (6, 5),
        "call": (3, 0),
    }

    only_call = await history.summary(HistoryFilter(channel="call"))
    assert (only_call.totals.sent, only_call.totals.approved, only_call.totals.conversion) == (3, 0, 0.0)
    approved_only = await history.summary(HistoryFilter(status=Status.APPROVED))
    assert (approved_only.totals.sent, approved_only.totals.expired) == (5, 0)
    nothing = await history.summary(HistoryFilter(agent_id="nobody"))
    assert nothing.totals.sent == 0 and nothing.totals.conversion is None
    assert nothing.totals.approve_quantile(0.5) is None


async def test_the_summary_of_the_seeded_set_agrees_with_its_list(store: Store) -> None:
    seeded = await seed(store)
    history = History(store, 30 * DAY, clock=lambda: LATER)
    for query in (
        HistoryFilter(),
        HistoryFilter(agent_id="signup"),
        HistoryFilter(country="FR", origin="api"),
        HistoryFilter(status=Status.PENDING),
        HistoryFilter(channel="call", status=Status.APPROVED),
    ):
        listed = [item for item in seeded if item.verification.id in set(expected(seeded, query))]
        summary = await history.summary(query)
        assert summary.totals.sent == len(listed), query
        for status in Status:
            assert summary.totals.count(status) == sum(item.status is status for item in listed), (
                query,
                status,
            )
        times = sorted(
            item.ended_at - item.verification.created_at
            for item in listed
            if item.status is Status.APPROVED and item.ended_at is not None
        )
        if times:
            median = times[math.ceil(0.5 * len(times)) - 1]
            assert summary.totals.approve_quantile(0.5) == APPROVE_BIN_EDGES[approve_bin(median)]
        for country in NUMBERS:
            sent = sum(item.country == country for item in listed)
            assert summary.by_country.get(country, Tally()).sent == sent, (query, country)


async def test_the_summary_window_is_rounded_and_said_and_its_timeline_is_by_the_minute(store: Store) -> None:
    now = DAY0 + 12 * HOUR + 30
    history = History(store, 30 * DAY, clock=lambda: now)
    inside = verification_at(now - 20 * MINUTE - 10)
    before = verification_at(now - 2 * HOUR)
    for verification in (inside, before):
        await store.create_verification(verification)
    await store.transition(inside.id, Status.APPROVED, inside.created_at + 15)

    last_hour = await history.summary(HistoryFilter(since=now - HOUR))
    # Up to 6 hours: by the minute, since rounded down and until (now) up.
    assert (last_hour.since, last_hour.until, last_hour.step) == (
        DAY0 + 11 * HOUR,
        DAY0 + 12 * HOUR + 60,
        MINUTE,
    )
    assert last_hour.totals.sent == 1
    assert len(last_hour.timeline) == 61
    busy = [(start, tally.sent, tally.approved) for start, tally in last_hour.timeline if tally.sent]
    assert busy == [(int(inside.created_at) // 60 * 60, 1, 1)]

    # Up to 3 days by the hour; longer by the UTC day.
    two_days = await history.summary(HistoryFilter(since=now - 2 * DAY))
    assert (two_days.since, two_days.until, two_days.step) == (
        DAY0 - 2 * DAY + 12 * HOUR,
        DAY0 + 13 * HOUR,
        HOUR,
    )
    assert len(two_days.timeline) == 49 and two_days.totals.sent == 2
    week = await history.summary(HistoryFilter(since=now - 7 * DAY - 30 * MINUTE))
    assert (week.since, week.until, week.step) == (DAY0 - 7 * DAY, DAY0 + DAY, DAY)
    assert week.totals.sent == 2
    month = await history.summary(HistoryFilter())
    # The whole history: the UTC days that start within the retention.
    assert (month.since, month.until, month.step) == (DAY0 - 29 * DAY, DAY0 + DAY, DAY)
    assert month.totals.sent == 2 and len(month.timeline) == 30
    assert sum(tally.sent for _, tally in month.timeline) == 2
    # A short window long ago is counted by the hour: minutes are kept for the last 28 hours.
    earlier = await history.summary(HistoryFilter(since=now - 3 * DAY, until=now - 3 * DAY + HOUR))
    assert earlier.step == HOUR


async def test_a_window_in_the_future_or_reversed_counts_nothing(store: Store) -> None:
    await seed(store, count=6)
    history = History(store, 30 * DAY, clock=lambda: LATER)
    for query in (
        HistoryFilter(since=LATER + DAY),
        HistoryFilter(since=LATER - HOUR, until=LATER - 2 * HOUR),
    ):
        summary = await history.summary(query)
        assert summary.totals.sent == 0 and summary.since <= summary.until


# -- retention ---------------------------------------------------------------------


async def test_entries_and_counts_older_than_the_retention_are_left_out(store: Store) -> None:
    seeded = await seed(store, count=12)
    retention = 30 * DAY
    history = History(store, retention, clock=lambda: LATER)
    assert len((await store.list_history(HistoryFilter(), LATER)).entries) == 12
    assert (await history.summary(HistoryFilter())).totals.sent == 12

    much_later = seeded[-1].verification.created_at + retention + HOUR
    history.clock = lambda: much_later
    assert (await store.list_history(HistoryFilter(), much_later)).entries == []
    assert (await store.list_history(HistoryFilter(agent_id="mfa"), much_later)).entries == []
    assert (await history.summary(HistoryFilter())).totals.sent == 0


async def test_a_store_forgets_entries_after_its_retention(make: MakeStore) -> None:
    store = await make(history_retention=0.3)
    verification = verification_at(DAY0)
    await store.create_verification(verification)
    await store.transition(verification.id, Status.APPROVED, DAY0 + 0.05)
    assert len((await store.list_history(HistoryFilter(), DAY0 + 0.1)).entries) == 1

    for _ in range(150):  # 3 s at most: the entry goes by the wall clock, as a Redis TTL does
        if not (await store.list_history(HistoryFilter(), DAY0 + 0.1)).entries:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the entry was not forgotten")
    # The verification itself is kept for its own day after it ended.
    assert await store.get_verification(verification.id) is not None


async def test_history_written_by_one_instance_is_read_by_another(make: MakeStore, tmp_path: Path) -> None:
    first = await make()
    verification = verification_at(DAY0)
    await first.create_verification(verification)
    if isinstance(first, SqliteStore):
        second: Store = SqliteStore(str(first._path))
        await second.open()
    else:
        assert isinstance(first, RedisStore)
        second = RedisStore(first._url, prefix=first._prefix)
        await second.open()
    try:
        await second.transition(verification.id, Status.CANCELED, DAY0 + 5)
        [entry] = (await first.list_history(HistoryFilter(status=Status.CANCELED), LATER)).entries
        assert entry.id == verification.id
    finally:
        await second.close()


async def test_sqlite_history_of_steps_not_yet_folded_outlives_a_crash(tmp_path: Path) -> None:
    # Each step writes its journal row in its own transaction; a process that stops before
    # the fold loses none of it: the next one folds the journal before it reads.
    path = tmp_path / "mfa.sqlite3"
    store = SqliteStore(str(path))
    await store.open()
    await store.create_verification(verification_at(DAY0))  # the first write: a purge and a fold
    if store._maintenance is not None:
        await store._maintenance
    verification = verification_at(DAY0 + 60, country="GB")
    await store.create_verification(verification)
    await store.begin_attempt(verification.id, DAY0 + 70)
    await store.transition(verification.id, Status.APPROVED, DAY0 + 75)
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT count(*) FROM history_journal").fetchone()[0] == 3
    raw.close()
    await store.close()  # as a killed process: nothing folds on the way out

    reopened = SqliteStore(str(path))
    await reopened.open()
    try:
        [entry] = (await reopened.list_history(HistoryFilter(country="GB"), LATER)).entries
        assert (entry.id, entry.status, entry.attempts, entry.ended_at) == (
            verification.id,
            Status.APPROVED,
            1,
            DAY0 + 75,
        )
        summary = await History(reopened, 30 * DAY, clock=lambda: LATER).summary(HistoryFilter(since=DAY0))
        assert (summary.totals.sent, summary.totals.approved) == (2, 1)
        assert summary.totals.approve_quantile(0.5) == 15  # 15 s from send to approval
    finally:
        await reopened.close()


# -- cursors -----------------------------------------------------------------------


def test_a_cursor_names_a_position_and_nothing_else_decodes() -> None:
    position = (1_700_006_400.123456, "6f1c4b1e-8f0e-4c41-9d7e-0b1f2a3c4d5e")
    assert decode_cursor(encode_cursor(position)) == position
    good = encode_cursor(position)
    for bad in (
        "",
        "x" * 201,
        "not base64!",
        good[:-3],
        good + "A",
        encode_cursor((math.inf, "id")),
        encode_cursor((-1.0, "id")),
        encode_cursor((1e12, "id")),
        encode_cursor((1.0, "")),
        encode_cursor((1.0, "id with spaces")),
        "aDI6MS4wOmlk",  # "h2:1.0:id": another version
        "aDE6bmFuOmlk",  # "h1:nan:id"
        "aDE6MS4w",  # no id
        "_w",  # not UTF-8 / ASCII
    ):
        with pytest.raises(InvalidCursor):
            decode_cursor(bad)


# -- races, and verifications the history never saw -----------------------------------


async def test_parallel_ends_are_counted_once(store: Store) -> None:
    history = History(store, 30 * DAY, clock=lambda: LATER)
    verification = verification_at(DAY0 + 11 * HOUR)
    await store.create_verification(verification)
    endings = [Status.APPROVED, Status.EXPIRED, Status.CANCELED, Status.MAX_ATTEMPTS_REACHED] * 5
    ended = await asyncio.gather(
        *(store.transition(verification.id, ending, verification.created_at + 20) for ending in endings)
    )
    winners = [result for result in ended if result is not None]
    assert len(winners) == 1
    [entry] = (await store.list_history(HistoryFilter(), LATER)).entries
    assert entry.status is winners[0].status
    totals = (await history.summary(HistoryFilter(since=DAY0 + 10 * HOUR))).totals
    assert totals.sent == 1 and totals.count(winners[0].status) == 1 and totals.pending == 0
    assert sum(totals.count(status) for status in Status) == 1


async def test_a_verification_without_a_history_entry_still_ends(store: Store) -> None:
    # Sent before the history was kept, or kept past the retention: its steps work as
    # before and leave no entry or count behind.
    history = History(store, 30 * DAY, clock=lambda: LATER)
    verification = verification_at(DAY0 + 11 * HOUR)
    await store.create_verification(verification)
    if isinstance(store, SqliteStore):
        await store._fold_history()  # the entry is written, then lost
        await store._execute("DELETE FROM history WHERE id = ?", (verification.id,))
    else:
        assert isinstance(store, RedisStore)
        await store._client.delete(store._key("h", verification.id))
    attempt = await store.begin_attempt(verification.id, verification.created_at + 5)
    assert attempt is not None and attempt.verification.attempts == 1
    await store.refund_attempt(verification.id, (), verification.created_at + 6)
    assert await store.transition(verification.id, Status.APPROVED, verification.created_at + 9) is not None
    assert (await store.list_history(HistoryFilter(status=Status.APPROVED), LATER)).entries == []
    totals = (await history.summary(HistoryFilter(since=DAY0 + 10 * HOUR))).totals
    assert (totals.sent, totals.approved) == (1, 0)  # its send was counted; its end had no entry


async def test_sqlite_gives_a_file_from_before_the_history_its_tables(tmp_path: Path) -> None:
    path = tmp_path / "mfa.sqlite3"
    store = SqliteStore(str(path))
    await store.open()
    before = verification_at(DAY0)
    await store.create_verification(before)
    await store.close()
    old = sqlite3.connect(path)
    for table in ("history", "history_combo", "history_rollup", "history_journal"):
        old.execute(f"DROP TABLE {table}")
    old.execute('ALTER TABLE verification DROP COLUMN "country"')  # as the file was before
    old.commit()
    old.close()

    reopened = SqliteStore(str(path))
    await reopened.open()
    try:
        assert (await reopened.get_verification(before.id)).country is None  # type: ignore[union-attr]
        assert await reopened.transition(before.id, Status.APPROVED, DAY0 + 10) is not None
        after = verification_at(DAY0 + 20, country="FR")
        await reopened.create_verification(after)
        [entry] = (await reopened.list_history(HistoryFilter(), LATER)).entries
        assert (entry.id, entry.country) == (after.id, "FR")
    finally:
        await reopened.close()


async def test_an_outcome_counted_after_a_bucket_s_keeping_leaves_that_bucket_out(store: Store) -> None:
    # A code that lives long (up to 7 days) ends after its send's minute is no longer kept:
    # the hour and the day still count it, the minute does not come back to life for it.
    verification = verification_at(DAY0 + 10 * HOUR, expires_at=DAY0 + 5 * DAY)
    await store.create_verification(verification)
    await store.transition(verification.id, Status.APPROVED, DAY0 + 2 * DAY)
    minute = int(DAY0 + 10 * HOUR)
    by_minute = await store.history_tallies(HistoryFilter(), Span(MINUTE, minute, minute + MINUTE))
    by_hour = await store.history_tallies(HistoryFilter(), Span(HOUR, minute, minute + HOUR))
    by_day = await store.history_tallies(HistoryFilter(), Span(DAY, int(DAY0), int(DAY0 + DAY)))
    assert (by_minute.by_start[minute].sent, by_minute.by_start[minute].approved) == (1, 0)
    assert (by_hour.by_start[minute].sent, by_hour.by_start[minute].approved) == (1, 1)
    assert by_day.by_start[int(DAY0)].approved == 1
    assert by_day.by_start[int(DAY0)].approve_quantile(0.5) == 604800  # 38 hours: the last bin


async def test_redis_forgets_a_combination_no_entry_joined_for_the_retention(store: Store) -> None:
    if not isinstance(store, RedisStore):
        pytest.skip("SQLite forgets unused combinations in its purge, by the wall clock")
    await store.create_verification(verification_at(DAY0, country="GB"))
    await store.create_verification(verification_at(DAY0 + 31 * DAY, country="FR"))
    combos = await store._client.zrange(store._key("hx", "combos"), 0, -1)
    assert combos == ["pending|mfa|api|sms|FR"]

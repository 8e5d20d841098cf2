"""The SQLite history's writes: a journal in each step's own transaction, folded in batches.

A verification's steps that the history shows (sent, an attempt counted or
given back, ended) each add one row to ``history_journal`` inside the
transaction that takes the step, so the history never disagrees with the engine
and a crash loses nothing: a journal left behind is folded after the restart.
One journal row is an append to the table's last page; writing the entry, its
indexes and its six rollup counters in the step itself cost about a tenth of
what a whole call costs the agent (bench/README.md, "Issue 17: the SQLite
store's commits").

The fold applies the journal in order, one batch per transaction, on the
store's thread (with the checkpoints) and before every read of the history, so
a read sees every step committed before it. An entry sent and ended within one
batch is written once, as it ended; the batch's rollup events are added up per
row, so a bucket's counters take one upsert per batch instead of one per event.
The rules are those the steps applied before: an attempt given back only while
the entry is pending and has one, an end only of a pending entry, and no entry
(nor its end's count) for a verification that has none (sent before the history
was kept, or kept past the retention).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from engine.models import Status, Verification
from engine.stores.history import (
    ALL_AGENTS,
    APPROVE_BIN_EDGES,
    LEVELS,
    approve_bin,
    bucket_start,
    kept_for,
)

# Journal rows folded in one transaction (the writes of the event loop wait for it).
FOLD_BATCH = 1000

# A journal row's step.
SENT, COUNTED, ENDED = 0, 1, 2

# The rollups' counters: one column per outcome and one per time-to-approve bin (t0...).
OUTCOME_COLUMNS = ("sent", "approved", "expired", "max_attempts_reached", "canceled")
BIN_COLUMNS = tuple(f"t{index}" for index in range(len(APPROVE_BIN_EDGES)))
TALLY_COLUMNS = OUTCOME_COLUMNS + BIN_COLUMNS
# Agent id before start: a summary of one agent (or of all, "*") reads its rows alone.
ROLLUP_KEY = "level, agent_id, start, origin, channel, country"
ENTRY_COLUMNS = (
    'id, "to", country, agent_id, origin, channel, call_id, status, attempts, max_attempts,'
    " created_at, ended_at"
)

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS history_rollup (level INTEGER NOT NULL, start INTEGER NOT NULL,"
    " agent_id TEXT NOT NULL, origin TEXT NOT NULL, channel TEXT NOT NULL, country TEXT NOT NULL, "
    + ", ".join(f"{column} INTEGER NOT NULL DEFAULT 0" for column in TALLY_COLUMNS)
    + f", forget_at REAL NOT NULL, PRIMARY KEY ({ROLLUP_KEY})) WITHOUT ROWID;"
    " CREATE INDEX IF NOT EXISTS history_rollup_forget ON history_rollup (forget_at);"
    # seq: the steps' order. attempts: SENT, ENDED the entry's; COUNTED +1 or -1 (given back).
    # at: SENT the send (created_at), ENDED the end. wall: the step's wall clock, which the
    # entry's and the counters' forget_at start from. The place (agent id ... country) is
    # the verification's, on SENT and ENDED rows.
    " CREATE TABLE IF NOT EXISTS history_journal (seq INTEGER PRIMARY KEY, step INTEGER NOT NULL,"
    ' id TEXT NOT NULL, status TEXT, attempts INTEGER NOT NULL, at REAL, wall REAL NOT NULL, "to" TEXT,'
    " country TEXT, agent_id TEXT, origin TEXT, channel TEXT, call_id TEXT, max_attempts INTEGER);"
)

_JOURNAL = (
    'INSERT INTO history_journal (step, id, status, attempts, at, wall, "to", country, agent_id, origin,'
    " channel, call_id, max_attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_READ_JOURNAL = (
    'SELECT seq, step, id, status, attempts, at, wall, "to", country, agent_id, origin, channel,'
    " call_id, max_attempts FROM history_journal ORDER BY seq LIMIT ?"
)


# -- the steps' side: one journal row each, inside the step's transaction ----------
def journal_sent(db: sqlite3.Connection, verification: Verification, wall: float) -> None:
    db.execute(
        _JOURNAL,
        (
            SENT,
            verification.id,
            verification.status.value,
            verification.attempts,
            verification.created_at,
            wall,
            verification.masked_to,
            verification.country or "",
            verification.agent_id,
            verification.origin,
            verification.channel,
            verification.call_id,
            verification.max_attempts,
        ),
    )


def journal_counted(db: sqlite3.Connection, verification_id: str, change: int, wall: float) -> None:
    """An attempt counted (``change`` 1) or given back (-1)."""
    db.execute(_JOURNAL, (COUNTED, verification_id, None, change, None, wall, *(None,) * 7))


def journal_ended(db: sqlite3.Connection, ended: Verification, now: float, wall: float) -> None:
    db.execute(
        _JOURNAL,
        (
            ENDED,
            ended.id,
            ended.status.value,
            ended.attempts,
            now,
            wall,
            None,
            ended.country or "",
            ended.agent_id,
            ended.origin,
            ended.channel,
            None,
            None,
        ),
    )


# -- the fold -------------------------------------------------------------------
def fold(db: sqlite3.Connection, retention: float) -> bool:
    """Fold up to FOLD_BATCH journal rows, oldest first, inside the caller's transaction.

    True when rows are left for another batch.
    """
    rows = db.execute(_READ_JOURNAL, (FOLD_BATCH,)).fetchall()
    if not rows:
        return False
    batch = _Batch(db, retention)
    for row in rows:
        batch.apply(row)
    batch.write()
    db.execute("DELETE FROM history_journal WHERE seq <= ?", (rows[-1][0],))
    return len(rows) == FOLD_BATCH


@dataclass
class _Entry:
    """An entry sent in this batch, written once at its end, in its state then."""

    id: str
    to: str
    country: str
    agent_id: str
    origin: str
    channel: str
    call_id: str | None
    status: str
    attempts: int
    max_attempts: int
    created_at: float
    ended_at: float | None
    forget_at: float

    @property
    def place(self) -> tuple[str, str, str, str]:
        return (self.agent_id, self.origin, self.channel, self.country)

    def columns(self) -> tuple[Any, ...]:
        """Its values in ENTRY_COLUMNS' order."""
        return (
            self.id, self.to, self.country, self.agent_id, self.origin, self.channel, self.call_id,
            self.status, self.attempts, self.max_attempts, self.created_at, self.ended_at,
        )  # fmt: skip


# A rollup row's key, in ROLLUP_KEY's order.
_RowKey = tuple[int, str, int, str, str, str]


class _Batch:
    """One batch of the journal, applied in order, then written in one go."""

    def __init__(self, db: sqlite3.Connection, retention: float) -> None:
        self._db = db
        self._retention = retention
        self._entries: dict[str, _Entry] = {}
        self._combos: dict[tuple[str, ...], int] = {}
        # Per rollup row: the counts to add, and its forget_at if this batch makes it.
        self._counts: dict[_RowKey, dict[str, int]] = {}
        self._forget_at: dict[_RowKey, float] = {}

    def apply(self, row: Sequence[Any]) -> None:
        (
            _,
            step,
            entry_id,
            status,
            attempts,
            at,
            wall,
            to,
            country,
            agent_id,
            origin,
            channel,
            call_id,
            most,
        ) = row
        if step == SENT:
            entry = _Entry(
                entry_id, to, country, agent_id, origin, channel, call_id, status, attempts, most, at, None,
                wall + self._retention,
            )  # fmt: skip
            self._entries[entry_id] = entry
            self._count(("sent",), at, entry.place, at, wall)
        elif step == COUNTED:
            self._counted(entry_id, attempts)
        else:
            self._ended(entry_id, Status(status), attempts, at, wall, (agent_id, origin, channel, country))

    def _counted(self, entry_id: str, change: int) -> None:
        entry = self._entries.get(entry_id)
        if entry is None:
            if change > 0:
                self._db.execute("UPDATE history SET attempts = attempts + 1 WHERE id = ?", (entry_id,))
            else:
                self._db.execute(
                    "UPDATE history SET attempts = attempts - 1"
                    " WHERE id = ? AND status = 'pending' AND attempts > 0",
                    (entry_id,),
                )
        elif change > 0:
            entry.attempts += 1
        elif entry.status == Status.PENDING.value and entry.attempts > 0:
            entry.attempts -= 1

    def _ended(
        self, entry_id: str, status: Status, attempts: int, now: float, wall: float, place: tuple[str, ...]
    ) -> None:
        entry = self._entries.get(entry_id)
        if entry is not None:
            if entry.status != Status.PENDING.value:
                return
            entry.status, entry.attempts, entry.ended_at = status.value, attempts, now
            created_at, counted_place = entry.created_at, entry.place
        else:
            found = self._db.execute(
                "UPDATE history SET status = ?, combo = ?, attempts = ?, ended_at = ?"
                " WHERE id = ? AND status = 'pending'"
                " RETURNING created_at, agent_id, origin, channel, country",
                (status.value, self._combo(place, status.value), attempts, now, entry_id),
            ).fetchone()
            if found is None:
                return  # older than the retention, or sent before the history was kept
            created_at, counted_place = found[0], tuple(found[1:])
        if status is Status.APPROVED:
            columns: tuple[str, ...] = ("approved", BIN_COLUMNS[approve_bin(now - created_at)])
        else:
            columns = (status.value,)
        self._count(columns, created_at, counted_place, now, wall)

    def _count(
        self, columns: tuple[str, ...], created_at: float, place: tuple[str, ...], now: float, wall: float
    ) -> None:
        """One event in the buckets of every size that ``created_at`` (the send) falls in and
        that are still kept at ``now``: in the row of its agent id, origin, channel and
        country, and in the all-agents row."""
        agent_id, origin, channel, country = place
        for level in LEVELS:
            start = bucket_start(created_at, level)
            kept = kept_for(level, self._retention, start, now)
            if kept <= 0:
                continue
            for key in (
                (level, agent_id, start, origin, channel, country),
                (level, ALL_AGENTS, start, ALL_AGENTS, channel, country),
            ):
                counts = self._counts.setdefault(key, {})
                for column in columns:
                    counts[column] = counts.get(column, 0) + 1
                self._forget_at.setdefault(key, wall + kept)

    def _combo(self, place: Iterable[str], status: str) -> int:
        key = (*place, status)
        combo = self._combos.get(key)
        if combo is None:
            combo = self._combos[key] = _combo_number(self._db, *key)
        return combo

    def write(self) -> None:
        # OR IGNORE: an entry already there is left as it is rather than stopping every fold.
        self._db.executemany(
            f"INSERT OR IGNORE INTO history ({ENTRY_COLUMNS}, combo, forget_at)"  # noqa: S608 - fixed columns
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (*entry.columns(), self._combo(entry.place, entry.status), entry.forget_at)
                for entry in self._entries.values()
            ],
        )
        by_columns: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for key, counts in self._counts.items():
            columns = tuple(sorted(counts))
            by_columns.setdefault(columns, []).append(
                (*key, *(counts[column] for column in columns), self._forget_at[key])
            )
        for columns, rows in by_columns.items():
            self._db.executemany(_add_sql(columns), rows)


@cache
def _add_sql(columns: tuple[str, ...]) -> str:
    """Add to ``columns`` of a rollup row, making the row if it is the bucket's first event."""
    assert set(columns) <= set(TALLY_COLUMNS)  # names from the fixed lists only
    return (
        f"INSERT INTO history_rollup ({ROLLUP_KEY}, {', '.join(columns)}, forget_at)"  # noqa: S608
        f" VALUES (?, ?, ?, ?, ?, ?, {', '.join('?' * len(columns))}, ?)"
        f" ON CONFLICT ({ROLLUP_KEY}) DO UPDATE SET "
        + ", ".join(f"{column} = {column} + excluded.{column}" for column in columns)
    )


def _combo_number(
    db: sqlite3.Connection, agent_id: str, origin: str, channel: str, country: str, status: str
) -> int:
    """The number of a combination of the list's dimensions, numbered on first use."""
    key = (agent_id, origin, channel, country, status)
    row = db.execute(
        "SELECT id FROM history_combo"
        " WHERE agent_id = ? AND origin = ? AND channel = ? AND country = ? AND status = ?",
        key,
    ).fetchone()
    if row is not None:
        return int(row[0])
    cursor = db.execute(
        "INSERT INTO history_combo (agent_id, origin, channel, country, status) VALUES (?, ?, ?, ?, ?)", key
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid

"""The SQLite store: one instance, one file, every decision all or nothing.

Statements run on the event loop, on a connection of its own: on a small local
file each takes microseconds, less than handing it to a thread would cost
(bench/README.md, "What changed"). Nothing awaits inside a job, so the
statements of two jobs can never interleave. A read runs at once. A write waits
for the end of its turn of the event loop; the turn's writes then run one after
the other in one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``), each inside
a savepoint of its own, so that one that fails undoes itself and no other, and
each caller hears back once that commit has succeeded. A commit costs about as
much however much it holds, and under load a turn holds about twenty writes
(bench/README.md, "Issue 17: one commit a turn"); the write lock is held only
while the statements run, so another process's writes still get in between.
What could hold up the event loop never runs there:

- waiting for a lock: that connection has a busy timeout of 0; when another
  process (or the thread below) holds the file's write lock, the turn's writes
  run on the thread instead, whose connection waits for the lock;
- fsync: under WAL with ``synchronous = NORMAL`` a commit does not sync; the
  checkpoints that do, and the batch deletes of forgotten rows, run on the thread.
  A checkpoint's copy and sync go on beside the loop's writes (a bounded number
  of them); only its last short step, which starts the log again, holds them.

``BEGIN IMMEDIATE`` takes SQLite's write lock before a decision reads
anything, so even a second process on the same file cannot slip in between
the read and the write.

The contract's times (``now``, ``expires_at``) are the caller's clock. What
Redis forgets through key expiry (a TTL, a finished verification after
RETAIN_FINISHED_SECONDS) is emulated here with a ``forget_at`` column on the
wall clock: rows past it are invisible at once and deleted in batches.

The history (engine/stores/history.py) is three tables folded from a journal
written in the verification's own transactions (engine/stores/sqlite_history.py):
``history`` (one entry per verification, the
number masked; indexed by send time alone, by status and by ``combo``),
``history_combo`` (each combination of agent id, origin, channel, country and
status, numbered: an entry's ``combo``) and ``history_rollup`` (the summary's
counters: per bucket, one row per agent id, origin, channel and country, and one
per channel and country with agent id and origin ``*``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any, TypeVar

from engine.errors import StoreUnavailable
from engine.models import DeliveryState, Fallback, Status, Verification
from engine.private_files import create_private, make_private, private_folder
from engine.stores.base import (
    RETAIN_FINISHED_SECONDS,
    Attempt,
    AttemptGate,
    Budgets,
    Claim,
    ClaimState,
    DeliveryChange,
    OutboxItem,
    Record,
    Store,
)
from engine.stores.guard import (
    HELD,
    GuardCheck,
    GuardRefused,
    Hold,
    country_limit,
    country_refusal,
    hold_for,
    should_hold,
    weighted,
)
from engine.stores.history import (
    ALL_AGENTS,
    DEFAULT_RETENTION,
    MERGE_UP_TO,
    HistoryEntry,
    HistoryFilter,
    HistoryPage,
    Position,
    Span,
    Tallies,
    TallySums,
    newest_first,
    newest_matching,
    next_page,
)
from engine.stores.sqlite_history import (
    ENTRY_COLUMNS,
    ROLLUP_KEY,
    TALLY_COLUMNS,
    fold,
    journal_counted,
    journal_ended,
    journal_sent,
)
from engine.stores.sqlite_history import SCHEMA as _HISTORY_SCHEMA
from engine.stores.windows import (
    Refused,
    Window,
    bucket,
    bucket_key,
    buckets_have_room,
    buckets_retry_after,
    log_retry_after,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

# Seconds a connection waits for another process's write lock before giving up.
BUSY_TIMEOUT_SECONDS = 5.0
# How often forgotten rows are deleted (they are already invisible before that).
PURGE_INTERVAL_SECONDS = 10.0
PURGE_BATCH = 2000  # rows per table and pass
# Writes between two WAL checkpoints, and two folds of the history's journal, at most:
# the log never holds more (SQLite's own default is 1000 pages). Each checkpoint copies
# a page once however often it changed, and a fold adds a bucket's events up in one
# upsert: 2000 cost a call 0.13 ms less than 500, and with a turn's writes in one
# commit 4000 did better than 2000 again (bench/README.md, "Issue 17: the SQLite store's
# commits" and "Issue 17: one commit a turn"). A write adds about 2.5 pages to the log
# under load (a turn's writes share pages) and 5 when alone: a log of 40 to 80 MB.
CHECKPOINT_EVERY_WRITES = 4000
# Of those, the last ones the event loop may make itself while the checkpoint copies
# the log (and syncs it, tens of milliseconds); any more wait for it on the thread. The
# checkpoint starts this many writes early.
WRITES_BESIDE_THE_COPY = 800

_FIELDS = tuple(Verification.model_fields)
_COLUMNS = ", ".join(f'"{field}"' for field in _FIELDS)
# The only SQL built from strings, and only from Verification's own field names.
_INSERT_VERIFICATION = (
    f"INSERT INTO verification ({_COLUMNS}, forget_at) VALUES ({', '.join('?' * (len(_FIELDS) + 1))})"  # noqa: S608
)
_SELECT_VERIFICATION = f"SELECT {_COLUMNS} FROM verification WHERE id = ? AND forget_at > ?"  # noqa: S608
# One UPDATE ... WHERE status = 'pending': the first caller matches, the others find nothing.
_END_VERIFICATION = (
    "UPDATE verification"  # noqa: S608
    " SET status = ?, updated_at = ?, forget_at = ?"
    " WHERE id = ? AND status = 'pending' AND forget_at > ?"
    f" RETURNING {_COLUMNS}"
)

# Claims in the order they were taken (id): each request writes its claim twice, and
# with the random keys as the table's order every write would land on a page of its own.
# Claims that live alike (a repeat's, 15 to 30 s) come due in that order too, so the purge
# looks for forgotten ones from the oldest id and no forget_at index has to be kept up (it
# measured a third more per request). A claim that lives long (a discovery's binding: the
# token lifetime) keeps its place among the oldest until it goes; the purge steps over it.
# The key is kept as given: a 32-byte digest of it measured no cheaper. result NULL: the
# owner is still running.
_CLAIM_TABLE = (
    "CREATE TABLE IF NOT EXISTS claim"
    " (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, result TEXT, forget_at REAL NOT NULL)"
)

# Every Verification field is a column (checked in open(); see _MIGRATIONS).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS verification (
    "id" TEXT PRIMARY KEY,
    "to" TEXT NOT NULL,
    "channel" TEXT NOT NULL,
    "status" TEXT NOT NULL,
    "max_attempts" INTEGER NOT NULL,
    "attempts" INTEGER NOT NULL,
    "created_at" REAL NOT NULL,
    "expires_at" REAL NOT NULL,
    "updated_at" REAL NOT NULL,
    "agent_id" TEXT NOT NULL,
    "call_id" TEXT,
    "provider" TEXT NOT NULL,
    "provider_ref" TEXT,
    "code_digest" TEXT,
    "origin" TEXT NOT NULL,
    "country" TEXT,
    "delivery" TEXT,
    "delivery_error" TEXT,
    "fallback" TEXT,
    "fallback_digest" TEXT,
    "delivery_told" INTEGER NOT NULL DEFAULT 0,
    forget_at REAL NOT NULL
) WITHOUT ROWID;
-- Partial: a verification leaves the expiry schedule when it stops being pending.
CREATE INDEX IF NOT EXISTS verification_due ON verification (expires_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS verification_forget ON verification (forget_at);
-- Partial: a call's live codes (verify_mfa checks a reading against each of them).
CREATE INDEX IF NOT EXISTS verification_call ON verification (call_id) WHERE status = 'pending';

CREATE TABLE IF NOT EXISTS hit (key TEXT NOT NULL, at REAL NOT NULL, forget_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS hit_key ON hit (key, at);
CREATE INDEX IF NOT EXISTS hit_forget ON hit (forget_at);

CREATE TABLE IF NOT EXISTS counter (
    key TEXT PRIMARY KEY, value INTEGER NOT NULL, forget_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS counter_forget ON counter (forget_at);

-- The claim table: _CLAIM_TABLE, created by _create_claim_table.

CREATE TABLE IF NOT EXISTS record (
    kind TEXT NOT NULL, id TEXT NOT NULL, data TEXT NOT NULL, forget_at REAL NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS record_forget ON record (forget_at);

CREATE TABLE IF NOT EXISTS outbox (
    queue TEXT NOT NULL, id TEXT NOT NULL, payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, due_at REAL NOT NULL,
    PRIMARY KEY (queue, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (queue, due_at);

CREATE TABLE IF NOT EXISTS secret (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;

-- The pumping guard's holds (engine/stores/guard.py). No forget_at index: a few rows at most.
CREATE TABLE IF NOT EXISTS hold (
    prefix TEXT PRIMARY KEY, country TEXT NOT NULL, since REAL NOT NULL, until REAL NOT NULL,
    sends INTEGER NOT NULL, approved INTEGER NOT NULL, reason TEXT NOT NULL, forget_at REAL NOT NULL
) WITHOUT ROWID;
-- The history (engine/stores/history.py). country is '' when unknown (a verification from
-- before countries were kept).
CREATE TABLE IF NOT EXISTS history (
    id TEXT PRIMARY KEY,
    combo INTEGER NOT NULL,
    "to" TEXT NOT NULL,
    country TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    origin TEXT NOT NULL,
    channel TEXT NOT NULL,
    call_id TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    created_at REAL NOT NULL,
    ended_at REAL,
    forget_at REAL NOT NULL
) WITHOUT ROWID;
-- The list's order: unfiltered, by status, per combination (a filtered list merges its combinations).
CREATE INDEX IF NOT EXISTS history_sent ON history (created_at, id);
CREATE INDEX IF NOT EXISTS history_status_sent ON history (status, created_at, id);
CREATE INDEX IF NOT EXISTS history_combo_sent ON history (combo, created_at, id);
CREATE INDEX IF NOT EXISTS history_forget ON history (forget_at);
CREATE TABLE IF NOT EXISTS history_combo (
    id INTEGER PRIMARY KEY,
    agent_id TEXT NOT NULL, origin TEXT NOT NULL, channel TEXT NOT NULL, country TEXT NOT NULL,
    status TEXT NOT NULL,
    UNIQUE (agent_id, origin, channel, country, status)
);
"""

# Summed in Python: a GROUP BY with a sum per column costs SQLite more than the reading.
_READ_TALLIES = (
    "SELECT start, channel, country, "  # noqa: S608
    + ", ".join(TALLY_COLUMNS)
    + " FROM history_rollup WHERE level = ? AND start >= ? AND start < ? AND forget_at > ?"
)
# Columns added since the first release, and how an older file gets them.
_MIGRATIONS = {
    "origin": (
        "ALTER TABLE verification ADD COLUMN \"origin\" TEXT NOT NULL DEFAULT 'api'",
        "UPDATE verification SET \"origin\" = 'call' WHERE call_id IS NOT NULL",
    ),
    "country": ('ALTER TABLE verification ADD COLUMN "country" TEXT',),
    "delivery": ('ALTER TABLE verification ADD COLUMN "delivery" TEXT',),
    "delivery_error": ('ALTER TABLE verification ADD COLUMN "delivery_error" TEXT',),
    "fallback": ('ALTER TABLE verification ADD COLUMN "fallback" TEXT',),
    "fallback_digest": ('ALTER TABLE verification ADD COLUMN "fallback_digest" TEXT',),
    "delivery_told": ('ALTER TABLE verification ADD COLUMN "delivery_told" INTEGER NOT NULL DEFAULT 0',),
}

# Each table whose rows are forgotten: its key, and the order its rows come due in.
_FORGETTING_TABLES = {
    "verification": ("id", "forget_at"),
    "hit": ("rowid", "forget_at"),
    "counter": ("key", "forget_at"),
    "claim": ("id", "id"),
    "record": ("kind, id", "forget_at"),
    "hold": ("prefix", "forget_at"),
    "history": ("id", "forget_at"),
    "history_rollup": (ROLLUP_KEY, "forget_at"),
}


@contextmanager
def _unavailable() -> Iterator[None]:
    """Turn SQLite's "cannot use the file" errors into StoreUnavailable.

    Constraint and programming errors are bugs, not an unreachable store: they pass through.
    """
    try:
        yield
    except (sqlite3.IntegrityError, sqlite3.ProgrammingError):
        raise
    except sqlite3.DatabaseError as exc:  # OperationalError: locked, missing, read-only, disk I/O
        raise StoreUnavailable(f"the SQLite store failed: {exc}") from exc


def _verification(row: Sequence[Any]) -> Verification:
    return Verification.model_validate(dict(zip(_FIELDS, row, strict=True)))


def _history_entry(row: Sequence[Any]) -> HistoryEntry:
    (
        entry_id,
        to,
        country,
        agent_id,
        origin,
        channel,
        call_id,
        status,
        attempts,
        max_attempts,
        created,
        ended,
    ) = row
    return HistoryEntry(
        id=entry_id,
        to=to,
        country=country or None,
        agent_id=agent_id,
        origin=origin,
        channel=channel,
        call_id=call_id,
        status=Status(status),
        attempts=attempts,
        max_attempts=max_attempts,
        created_at=created,
        ended_at=ended,
    )


def _fold_all(db: sqlite3.Connection, retention: float) -> None:
    """Fold the history's journal, a batch per transaction."""
    while _in_transaction(db, lambda db: fold(db, retention)):
        pass


def _tidy(db: sqlite3.Connection, *, purge: bool, retention: float) -> bool:
    """On the thread: fold the history's journal, and delete forgotten rows (if ``purge``).

    True when more forgotten rows are left than one pass deletes.
    """
    _fold_all(db, retention)
    more = purge and any([_purge_batch(db, table, time.time()) for table in _FORGETTING_TABLES])
    if purge:
        # Combinations no entry has any more (a few rows; each test one index lookup).
        db.execute(
            "DELETE FROM history_combo"
            " WHERE NOT EXISTS (SELECT 1 FROM history WHERE combo = history_combo.id)"
        )
    return more


def _copy(db: sqlite3.Connection) -> None:
    """On the thread: copy the WAL into the file, and sync both, beside other writers."""
    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _restart(db: sqlite3.Connection) -> None:
    """On the thread: copy what the WAL holds still, holding writes off, so that the next
    write starts it again from its beginning (its file never grows past that)."""
    db.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()


def _purge_batch(db: sqlite3.Connection, table: str, wall: float) -> bool:
    """Delete the first PURGE_BATCH forgotten rows of ``table``; True if more may be left.

    A DELETE holds every write of the event loop (they queue behind it on the
    thread), so it is kept short: the rows are found in an order an index gives
    (forget_at's, or the claims' ids), and a backlog (a day of call records
    coming due) goes in several passes. By forget_at, the search stops at the
    first live row. By id, it steps over the live rows in its way: the last
    half minute of claims, and any discovery bindings (claims kept for an hour),
    which would otherwise hold every forgotten claim behind them.
    """
    key, order = _FORGETTING_TABLES[table]
    deleted = db.execute(
        f"DELETE FROM {table} WHERE ({key}) IN"  # noqa: S608 - names from _FORGETTING_TABLES
        f" (SELECT {key} FROM {table} WHERE forget_at <= ? ORDER BY {order} LIMIT ?)",
        (wall, PURGE_BATCH),
    ).rowcount
    return deleted >= PURGE_BATCH


def _create_claim_table(db: sqlite3.Connection) -> None:
    """The claim table (inside a transaction).

    A file from before claims were kept in the order they were taken has them by
    key: its live claims are carried over, in the order they come due, and its
    table dropped.
    """
    columns = {column[1] for column in db.execute("PRAGMA table_info(claim)")}
    by_key = bool(columns) and "id" not in columns
    if by_key:
        db.execute("ALTER TABLE claim RENAME TO claim_by_key")
    db.execute(_CLAIM_TABLE)
    if by_key:
        db.execute(
            "INSERT INTO claim (key, result, forget_at)"
            " SELECT key, result, forget_at FROM claim_by_key WHERE forget_at > ? ORDER BY forget_at",
            (time.time(),),
        )
        db.execute("DROP TABLE claim_by_key")


def _put_record(db: sqlite3.Connection, record: Record) -> None:
    db.execute(
        "INSERT OR REPLACE INTO record (kind, id, data, forget_at) VALUES (?, ?, ?, ?)",
        (record.kind, record.id, _json(record.data), time.time() + record.ttl),
    )


def _log_count(db: sqlite3.Connection, window: Window, now: float) -> tuple[int, float | None]:
    """An exact window's events inside it at ``now``, and the oldest one's time.

    Events that left the window are only skipped here: each is forgotten (``forget_at``)
    when it leaves, and the purge deletes it in a batch, so a count costs one read.
    """
    count, oldest = db.execute(
        "SELECT count(*), min(at) FROM hit WHERE key = ? AND at > ?", (window.key, now - window.seconds)
    ).fetchone()
    return int(count), oldest


def _log_event(db: sqlite3.Connection, window: Window, now: float, wall: float) -> None:
    db.execute(
        "INSERT INTO hit (key, at, forget_at) VALUES (?, ?, ?)", (window.key, now, wall + window.seconds)
    )


def _take_back_event(db: sqlite3.Connection, window: Window) -> None:
    """Remove an exact window's newest event."""
    db.execute(
        "DELETE FROM hit WHERE rowid ="
        " (SELECT rowid FROM hit WHERE key = ? ORDER BY at DESC, rowid DESC LIMIT 1)",
        (window.key,),
    )


_HOLD_COLUMNS = "prefix, country, since, until, sends, approved, reason"


def _hold(row: Sequence[Any]) -> Hold:
    prefix, country, since, until, sends, approved, reason = row
    return Hold(prefix, country, float(since), float(until), int(sends), int(approved), reason)


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


def _in_savepoint(db: sqlite3.Connection, job: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``job`` inside the open transaction, all or nothing: undone if it raises."""
    db.execute("SAVEPOINT job")
    try:
        result = job(db)
    except BaseException:
        with suppress(sqlite3.Error):
            db.execute("ROLLBACK TO job")
            db.execute("RELEASE job")
        raise
    db.execute("RELEASE job")
    return result


@dataclass(frozen=True)
class _Write:
    """A write waiting for the end of its turn of the event loop."""

    job: Callable[[sqlite3.Connection], Any]
    transaction: bool
    answer: asyncio.Future[Any]


# What a write returned, as a one-tuple, or what it raised.
_Outcome = tuple[Any] | Exception


def _each_write(db: sqlite3.Connection, writes: Sequence[_Write]) -> list[_Outcome]:
    """In one open transaction: each write's job in turn (all or nothing, if it asks).
    What each returned or raised; a job that raised undid only itself. Runs on either
    connection's thread: it never touches the writes' answers, which are the loop's."""
    outcomes: list[_Outcome] = []
    for write in writes:
        try:
            with _unavailable():
                outcomes.append((_in_savepoint(db, write.job) if write.transaction else write.job(db),))
        except Exception as exc:
            if not db.in_transaction:
                # SQLite rolled the whole transaction back (a full or failing disk): the
                # writes before are lost, and the ones after must not run on their own.
                raise StoreUnavailable(f"the SQLite store rolled back a batch of writes: {exc}") from exc
            outcomes.append(exc)
    return outcomes


def _answer(writes: Sequence[_Write], outcomes: Sequence[_Outcome] | BaseException) -> None:
    """Tell each write's caller what it returned or raised, or that its batch failed."""
    for index, write in enumerate(writes):
        if write.answer.done():
            continue  # its caller was cancelled
        if isinstance(outcomes, BaseException):
            write.answer.set_exception(StoreUnavailable(f"the SQLite store did not commit: {outcomes}"))
            continue
        outcome = outcomes[index]
        if isinstance(outcome, Exception):
            write.answer.set_exception(outcome)
        else:
            write.answer.set_result(outcome[0])


def _outcomes_of(done: asyncio.Future[list[_Outcome]]) -> list[_Outcome] | BaseException:
    """What a batch run on the thread returned, or why it did not."""
    if done.cancelled():
        return StoreUnavailable("the SQLite store's writes were cancelled")
    return done.exception() or done.result()


def _in_transaction(db: sqlite3.Connection, job: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``job`` inside ``BEGIN IMMEDIATE`` ... ``COMMIT``; roll back if it raises."""
    db.execute("BEGIN IMMEDIATE")
    return _then_commit(db, job)


def _then_commit(db: sqlite3.Connection, job: Callable[[sqlite3.Connection], T]) -> T:
    """In the transaction just begun: ``job``, then ``COMMIT``; roll back if either raises."""
    try:
        result = job(db)
        db.execute("COMMIT")
    except BaseException:
        # Also after a failed COMMIT, which leaves the transaction open.
        with suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    return result


class _Thread:
    """A ``sqlite3`` connection of its own on a thread of its own, for work that may wait.

    Jobs run on that thread one at a time, in the order they were submitted; the
    event loop only waits for the answer. A job whose caller is cancelled
    before it starts never runs; once started it runs to its end, so a
    transaction is never left half done.
    """

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None

    async def open(self, path: Path) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        # This connection may wait for another process's write lock, up to BUSY_TIMEOUT_SECONDS.
        self._db = await asyncio.wrap_future(self._executor.submit(_connect, path, BUSY_TIMEOUT_SECONDS))

    def submit(self, job: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue ``job`` on the thread now; the future of its result."""
        executor = self._executor
        if executor is None:
            raise StoreUnavailable("the SQLite store is not open")
        try:
            return asyncio.wrap_future(executor.submit(self._call, job))
        except RuntimeError as exc:  # shut down meanwhile: "cannot schedule new futures"
            raise StoreUnavailable("the SQLite store is closed") from exc

    async def run(self, job: Callable[[sqlite3.Connection], T]) -> T:
        return await self.submit(job)

    def _call(self, job: Callable[[sqlite3.Connection], T]) -> T:
        if self._db is None:
            raise StoreUnavailable("the SQLite store is not open")
        with _unavailable():
            return job(self._db)

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        await asyncio.wrap_future(executor.submit(self._disconnect))
        executor.shutdown(wait=False)

    def _disconnect(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            _close(db)


def _private_files(path: Path) -> None:
    """The database, its folder and its WAL files readable by this user alone.

    SQLite creates the -wal and -shm files with the database file's mode, so
    the database is created 0600 before SQLite would create it 0644.
    """
    private_folder(path.parent)
    for companion in ("-wal", "-shm"):
        make_private(path.with_name(path.name + companion))
    create_private(path)


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; each decision opens its own.
    db = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout)
    try:
        # NORMAL under WAL: a power cut may lose the last commits, never corrupt the file.
        db.execute("PRAGMA synchronous = NORMAL")
        # Checkpoints (which sync) are the maintenance's own jobs, never a commit's: on the
        # thread, a commit's would hold the event loop's writes that wait behind it.
        db.execute("PRAGMA wal_autocheckpoint = 0")
    except BaseException:
        db.close()
        raise
    return db


def _close(db: sqlite3.Connection) -> None:
    with suppress(sqlite3.Error):  # nothing left to save; WAL keeps the file consistent
        db.close()


def _is_busy(exc: sqlite3.Error) -> bool:
    """Another connection holds the lock this statement needs (and we chose not to wait)."""
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class SqliteStore(Store):
    """The store in one SQLite file (``path``; its folder is created if missing).

    The file, its WAL files and a folder made here are private to this user
    (engine/private_files.py): the file holds server keys and full numbers.
    ``history_retention``: seconds a verification stays in the history.
    """

    def __init__(self, path: str, *, history_retention: float = DEFAULT_RETENTION) -> None:
        self._path = Path(path)
        self._retention = history_retention
        # Used on the event loop itself; never waits for a lock (busy timeout 0).
        self._db: sqlite3.Connection | None = None
        self._thread = _Thread()
        self._writes_since_checkpoint = 0
        self._next_purge = 0.0
        self._maintenance: asyncio.Task[None] | None = None
        # The writes of this turn of the event loop, waiting for its end.
        self._batch: list[_Write] | None = None
        # While the maintenance's checkpoint copies the log beside the loop's writes.
        self._copying = False
        # Weak, so a listener dropped without being closed does not collect messages forever.
        self._listeners: weakref.WeakSet[asyncio.Queue[str | None]] = weakref.WeakSet()

    # -- lifecycle ----------------------------------------------------------
    async def open(self) -> None:
        try:
            await asyncio.to_thread(_private_files, self._path)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create the SQLite store's file: {exc}") from exc

        def create(db: sqlite3.Connection) -> tuple[str, ...]:
            # WAL first: it is a property of the file that the other connection then shares.
            db.execute("PRAGMA journal_mode = WAL")
            db.executescript(_SCHEMA)
            db.executescript(_HISTORY_SCHEMA)
            _in_transaction(db, _create_claim_table)
            columns = {column[1] for column in db.execute("PRAGMA table_info(verification)")}
            for column, statements in _MIGRATIONS.items():
                if column not in columns:
                    db.execute("BEGIN IMMEDIATE")
                    for sql in statements:
                        db.execute(sql)
                    db.execute("COMMIT")
                    columns.add(column)
            return tuple(columns)

        try:
            await self._thread.open(self._path)
            columns = await self._thread.run(create)
            self._db = _connect(self._path, busy_timeout=0)
        except (sqlite3.Error, StoreUnavailable) as exc:
            await self.close()
            raise StoreUnavailable(f"cannot open the SQLite store: {exc}") from exc
        if not set(_FIELDS) <= set(columns):
            await self.close()
            raise StoreUnavailable("the SQLite store's verification table does not match this version")

    async def close(self) -> None:
        for queue in list(self._listeners):
            queue.put_nowait(None)  # ends that listener's iteration
        if self._batch is not None:
            self._commit_batch()  # the writes under way, now rather than after the close
        if self._maintenance is not None:
            with suppress(Exception):
                await self._maintenance
        db, self._db = self._db, None
        if db is not None:
            _close(db)
        await self._thread.close()

    async def ping(self) -> None:
        await self._read("SELECT 1")

    # -- running statements -------------------------------------------------
    # A statement on a small local file takes microseconds, less than the hand-over
    # to a thread that would hide it, so it runs on the event loop. What can take
    # long never does: a file locked by another process (the writes run on the thread
    # instead, which waits for the lock), checkpoints and purges (run on the thread).
    # Nothing awaits inside a job, so two jobs can never interleave.
    async def _run(self, job: Callable[[sqlite3.Connection], T], *, write: bool, transaction: bool) -> T:
        """Run ``job`` here, or on the thread if it would have to wait; ``transaction``
        makes it all or nothing (a single statement is atomic alone).

        A write waits for the end of this turn of the event loop: the turn's writes then
        run one after the other in one transaction (each pays a share of one commit),
        and each caller hears back once that commit has succeeded. A read runs at
        once, and sees only what is committed.
        """
        db = self._db
        if db is None:
            raise StoreUnavailable("the SQLite store is not open")
        if not write:
            with _unavailable():
                return job(db)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[T] = loop.create_future()
        if self._batch is None:
            self._batch = []
            loop.call_soon(self._commit_batch)
        self._batch.append(_Write(job, transaction, answer))
        try:
            return await answer
        finally:
            self._maintain()

    def _commit_batch(self) -> None:
        """At the end of a turn: its writes in one transaction, here or on the thread."""
        batch, self._batch = self._batch, None
        # A write whose caller was cancelled before it ran never runs.
        writes = [write for write in batch or () if not write.answer.cancelled()]
        db = self._db
        if not writes or db is None:
            _answer(writes, StoreUnavailable("the SQLite store is closed"))
            return
        if not self._writes_held_off():
            try:
                with _unavailable():
                    try:
                        db.execute("BEGIN IMMEDIATE")
                    except sqlite3.OperationalError as exc:
                        if not _is_busy(exc):
                            raise
                    else:
                        _answer(writes, _then_commit(db, lambda db: _each_write(db, writes)))
                        return
            except Exception as exc:  # every caller must hear back, whatever went wrong
                _answer(writes, exc)
                return
        # Another process holds the lock, or the fold, the purge or the checkpoint's
        # restart does (or the log would outgrow its bound): wait for it on the thread.
        try:
            done = self._thread.submit(lambda db: _in_transaction(db, lambda db: _each_write(db, writes)))
        except StoreUnavailable as exc:
            _answer(writes, exc)
            return
        done.add_done_callback(lambda done: _answer(writes, _outcomes_of(done)))

    async def _read(self, sql: str, parameters: Sequence[Any] = ()) -> list[Any]:
        """The rows of one query."""
        return await self._run(
            lambda db: db.execute(sql, parameters).fetchall(), write=False, transaction=False
        )

    async def _write(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``job`` inside one ``BEGIN IMMEDIATE`` transaction."""
        return await self._run(job, write=True, transaction=True)

    async def _execute(self, sql: str, parameters: Sequence[Any] = ()) -> list[Any]:
        """One statement (atomic on its own); its rows (for RETURNING)."""
        return await self._run(
            lambda db: db.execute(sql, parameters).fetchall(), write=True, transaction=False
        )

    def _maintaining(self) -> bool:
        return self._maintenance is not None and not self._maintenance.done()

    def _writes_held_off(self) -> bool:
        """Whether writes must wait for the maintenance on the thread: while it runs,
        except while its checkpoint copies the log, until WRITES_BESIDE_THE_COPY writes
        have gone on beside the copy."""
        beside_the_copy = self._copying and self._writes_since_checkpoint < WRITES_BESIDE_THE_COPY
        return self._maintaining() and not beside_the_copy

    def _maintain(self) -> None:
        """After a write: start a checkpoint or a purge on the thread when one is due."""
        self._writes_since_checkpoint += 1
        if self._maintaining():
            return
        purge = time.monotonic() >= self._next_purge
        if not purge and self._writes_since_checkpoint < CHECKPOINT_EVERY_WRITES - WRITES_BESIDE_THE_COPY:
            return
        if purge:
            self._next_purge = time.monotonic() + PURGE_INTERVAL_SECONDS
        self._writes_since_checkpoint = 0
        try:
            # Queued on the thread at once, even while the event loop is busy.
            retention = self._retention
            tidied = self._thread.submit(lambda db: _tidy(db, purge=purge, retention=retention))
        except StoreUnavailable:
            return  # closing: the write that brought us here has succeeded all the same
        self._maintenance = asyncio.ensure_future(self._maintenance_after(tidied))

    async def _maintenance_after(self, tidied: asyncio.Future[bool]) -> None:
        """The maintenance, once the fold and purge are queued: the checkpoint, in two jobs
        on the thread, so that the writes waiting for the first job (the loop's writes
        would fail on its lock) wait for no more than that."""
        try:
            if await tidied:
                self._next_purge = time.monotonic()  # a backlog: the next pass after the next write
            self._copying = True
            try:
                await self._thread.run(_copy)
            finally:
                self._copying = False
            await self._thread.run(_restart)
        except Exception as failure:
            log.warning("SQLite maintenance (purge, checkpoint) failed; it is tried again later: %s", failure)

    # -- server keys --------------------------------------------------------
    async def server_keys(self, proposed: Mapping[str, bytes]) -> dict[str, bytes]:
        def keep_and_read(db: sqlite3.Connection) -> dict[str, bytes]:
            # INSERT OR IGNORE: whoever inserts first wins; everyone then reads the winner.
            db.executemany("INSERT OR IGNORE INTO secret (name, value) VALUES (?, ?)", proposed.items())
            names = list(proposed)
            rows = db.execute(
                f"SELECT name, value FROM secret WHERE name IN ({', '.join('?' * len(names))})",  # noqa: S608
                names,
            )
            return {name: bytes(value) for name, value in rows}

        return await self._write(keep_and_read)

    # -- verifications ------------------------------------------------------
    async def create_verification(self, verification: Verification) -> None:
        lifetime = max(0.0, verification.expires_at - verification.created_at)

        def create(db: sqlite3.Connection) -> None:
            wall = time.time()
            values = [*verification.model_dump().values(), wall + lifetime + RETAIN_FINISHED_SECONDS]
            db.execute(_INSERT_VERIFICATION, values)
            journal_sent(db, verification, wall)

        try:
            await self._write(create)
        except sqlite3.IntegrityError as exc:
            raise ValueError(f"verification {verification.id} already exists") from exc

    async def get_verification(self, verification_id: str) -> Verification | None:
        rows = await self._read(_SELECT_VERIFICATION, (verification_id, time.time()))
        return _verification(rows[0]) if rows else None

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
        def attempt(db: sqlite3.Connection) -> Attempt | None:
            wall = time.time()
            row = db.execute(_SELECT_VERIFICATION, (verification_id, wall)).fetchone()
            if row is None:
                return None
            verification = _verification(row)
            if (call_id is not None and verification.call_id != call_id) or (
                origin is not None and verification.origin != origin
            ):
                return None
            if verified_kind is not None and verification.call_id is not None:
                verified = db.execute(
                    "SELECT 1 FROM record WHERE kind = ? AND id = ? AND forget_at > ?",
                    (verified_kind, verification.call_id, wall),
                ).fetchone()
                if verified:
                    return Attempt(AttemptGate.CALL_VERIFIED, verification)
            windows = tuple(budgets(verification.to, verification.call_id)) if budgets else ()
            counts = []
            for index, window in enumerate(windows):
                count, oldest = _log_count(db, window, now)
                if count >= window.limit:
                    refused = Refused(index, log_retry_after(window, oldest, now))
                    return Attempt(AttemptGate.OVER_BUDGET, verification, refused=refused)
                counts.append(count)
            if verification.status is not Status.PENDING:
                return Attempt(AttemptGate.NOT_PENDING, verification)
            if verification.is_expired(now):
                ended = self._end(db, verification_id, Status.EXPIRED, now)
                assert ended is not None  # read as pending inside this very transaction
                return Attempt(AttemptGate.EXPIRED, ended, changed=True)
            if verification.attempts >= verification.max_attempts:
                # Not ended here: a counted attempt still in flight may be the right code.
                return Attempt(AttemptGate.NO_ATTEMPTS_LEFT, verification)
            db.execute(
                "UPDATE verification SET attempts = attempts + 1, updated_at = ? WHERE id = ?",
                (now, verification_id),
            )
            journal_counted(db, verification_id, 1, wall)
            for window in windows:
                _log_event(db, window, now, wall)
            counted = verification.model_copy(
                update={"attempts": verification.attempts + 1, "updated_at": now}
            )
            room = tuple(window.limit - count - 1 for window, count in zip(windows, counts, strict=True))
            return Attempt(AttemptGate.COUNTED, counted, budgets=windows, room=room)

        return await self._write(attempt)

    async def pending_for_call(self, call_id: str, now: float) -> list[Verification]:
        rows = await self._read(
            f"SELECT {_COLUMNS} FROM verification"  # noqa: S608 - column names from Verification
            " WHERE call_id = ? AND status = 'pending' AND expires_at > ? AND forget_at > ?"
            " ORDER BY created_at DESC LIMIT 20",
            (call_id, now, time.time()),
        )
        return [_verification(row) for row in rows]

    async def refund_attempt(self, verification_id: str, budgets: Sequence[Window], now: float) -> None:
        def refund(db: sqlite3.Connection) -> None:
            given_back = db.execute(
                "UPDATE verification SET attempts = attempts - 1"
                " WHERE id = ? AND status = 'pending' AND attempts > 0",
                (verification_id,),
            ).rowcount
            if given_back:
                journal_counted(db, verification_id, -1, time.time())
            for window in budgets:
                _take_back_event(db, window)

        await self._write(refund)

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
        def end_and_record(db: sqlite3.Connection) -> Verification | None:
            self._take_back(db, give_back, now)
            ended = self._end(db, verification_id, to, now)
            if ended is not None:
                if record is not None:
                    _put_record(db, record)
                wall = time.time()
                for window in count:
                    assert not window.exact, "a transition counts bucketed windows only"
                    self._add_to_bucket(db, window, now, 1, wall)
            return ended

        return await self._write(end_and_record)

    def _end(
        self, db: sqlite3.Connection, verification_id: str, to: Status, now: float
    ) -> Verification | None:
        """Move a pending verification (and its history entry) to ``to``, inside the caller's transaction."""
        wall = time.time()
        row = db.execute(
            _END_VERIFICATION,
            (to.value, now, wall + RETAIN_FINISHED_SECONDS, verification_id, wall),
        ).fetchone()
        if row is None:
            return None
        ended = _verification(row)
        journal_ended(db, ended, now, wall)
        return ended

    async def due_for_expiry(self, now: float, limit: int = 100) -> list[str]:
        rows = await self._read(
            "SELECT id FROM verification WHERE status = 'pending' AND expires_at <= ? AND forget_at > ?"
            " ORDER BY expires_at LIMIT ?",
            (now, time.time(), limit),
        )
        return [row[0] for row in rows]

    async def next_expiry(self) -> float | None:
        rows = await self._read(
            "SELECT min(expires_at) FROM verification WHERE status = 'pending' AND forget_at > ?",
            (time.time(),),
        )
        earliest = rows[0][0]
        return None if earliest is None else float(earliest)

    # -- delivery ----------------------------------------------------------------
    async def record_delivery(
        self, verification_id: str, carrier_ref: str, state: DeliveryState, error_code: str | None
    ) -> DeliveryChange | None:
        def record(db: sqlite3.Connection) -> DeliveryChange | None:
            row = db.execute(_SELECT_VERIFICATION, (verification_id, time.time())).fetchone()
            if row is None:
                return None
            verification = _verification(row)
            recorded = verification.delivery
            if recorded is None or verification.provider_ref != carrier_ref:
                return None
            if recorded.final or state.rank <= recorded.rank:
                return DeliveryChange(verification)  # repeated, late or out of order
            error = error_code if state.final else None
            db.execute(
                'UPDATE verification SET "delivery" = ?, "delivery_error" = ? WHERE id = ?',
                (state.value, error, verification_id),
            )
            moved = verification.model_copy(update={"delivery": state, "delivery_error": error})
            return DeliveryChange(moved, became_final=state.final)

        return await self._write(record)

    async def claim_fallback(self, verification_id: str, now: float, code_digest: str) -> Verification | None:
        rows = await self._execute(
            "UPDATE verification"  # noqa: S608 - column names from Verification
            ' SET "fallback" = ?, "fallback_digest" = ?'
            " WHERE id = ? AND status = 'pending' AND expires_at > ? AND forget_at > ?"
            ' AND "delivery" IS NOT NULL AND "delivery" != ? AND "fallback" IS NULL'
            f" RETURNING {_COLUMNS}",
            (
                Fallback.CALLING.value,
                code_digest,
                verification_id,
                now,
                time.time(),
                DeliveryState.DELIVERED.value,
            ),
        )
        return _verification(rows[0]) if rows else None

    async def settle_fallback(self, verification_id: str, outcome: Fallback) -> Verification | None:
        rows = await self._execute(
            'UPDATE verification SET "fallback" = ?'  # noqa: S608 - column names from Verification
            ' WHERE id = ? AND "fallback" = ? AND forget_at > ?'
            f" RETURNING {_COLUMNS}",
            (outcome.value, verification_id, Fallback.CALLING.value, time.time()),
        )
        return _verification(rows[0]) if rows else None

    async def mark_delivery_told(self, verification_id: str) -> bool:
        rows = await self._execute(
            'UPDATE verification SET "delivery_told" = 1'
            ' WHERE id = ? AND "delivery_told" = 0 AND forget_at > ? RETURNING 1',
            (verification_id, time.time()),
        )
        return bool(rows)

    # -- history --------------------------------------------------------------
    # Written as a journal inside the verification's own transactions (create, count,
    # end), folded into the history's tables (engine/stores/sqlite_history.py), read here.
    async def _fold_history(self) -> None:
        """Fold the whole journal, so that a read of the history sees every step before it."""
        retention = self._retention
        await self._thread.run(lambda db: _fold_all(db, retention))

    async def list_history(
        self, query: HistoryFilter, now: float, *, after: Position | None = None, limit: int = 50
    ) -> HistoryPage:
        await self._fold_history()
        low = max(query.since if query.since is not None else -math.inf, now - self._retention)
        where = "created_at >= ? AND forget_at > ?"
        window: list[Any] = [low, time.time()]
        if query.until is not None:
            where += " AND created_at < ?"
            window.append(query.until)
        # A source is an index: (column, value), or None for the index of send times alone.
        by_status: list[tuple[str, Any] | None] = [
            None if query.status is None else ("status", query.status.value)
        ]
        sources = by_status
        if query.names_more_than_status:
            combos = await self._read(
                "SELECT id, agent_id, origin, channel, country, status FROM history_combo"
            )
            sources = [("combo", row[0]) for row in combos if query.matches(*row[1:])]

        async def fetch(
            requests: list[tuple[tuple[str, Any] | None, HistoryEntry | None, int]],
        ) -> list[list[HistoryEntry]]:
            pages = []
            for source, last, count in requests:
                start = last.position if last is not None else after
                sql = f"SELECT {ENTRY_COLUMNS} FROM history WHERE {where}"  # noqa: S608 - fixed text
                parameters = list(window)
                if source is not None:
                    sql += f" AND {source[0]} = ?"  # "status" or "combo"
                    parameters.append(source[1])
                if start is not None:
                    sql += " AND (created_at, id) < (?, ?)"
                    parameters += start
                sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
                rows = await self._read(sql, [*parameters, count])
                pages.append([_history_entry(row) for row in rows])
            return pages

        def position(entry: HistoryEntry) -> Position:
            return entry.position

        if len(sources) <= MERGE_UP_TO:
            found = await newest_first(sources, fetch, limit + 1, position)
            return HistoryPage(found[:limit], next_page(found, limit, position))
        walked = await newest_matching(by_status, fetch, limit + 1, position, query.lists)
        return HistoryPage(walked.kept[:limit], next_page(walked.kept, limit, position, walked=walked))

    async def history_tallies(self, query: HistoryFilter, span: Span) -> Tallies:
        await self._fold_history()
        # The all-agents rows unless the filter names an agent id or an origin.
        if query.agent_id is None and query.origin is None:
            where, parameters = " AND agent_id = ?", [ALL_AGENTS]
        else:
            where, parameters = " AND agent_id != ?", [ALL_AGENTS]
        for column in ("agent_id", "origin", "channel", "country"):
            value = getattr(query, column)
            if value is not None:
                where += f" AND {column} = ?"
                parameters.append(value)
        rows = await self._read(
            _READ_TALLIES + where,
            [span.level, span.start, span.end, time.time(), *parameters],
        )
        sums = TallySums()
        for start, channel, country, *counts in rows:
            sums.add_row(start, channel, country, counts)
        return sums.tallies()

    # -- counters and limits ------------------------------------------------
    async def hit(
        self, windows: Sequence[Window], now: float, *, guard: GuardCheck | None = None
    ) -> Refused | GuardRefused | None:
        def count_all(db: sqlite3.Connection) -> Refused | GuardRefused | None:
            wall = time.time()
            for index, window in enumerate(windows):
                retry_after = (
                    self._log_room(db, window, now)
                    if window.exact
                    else self._buckets_room(db, window, now, wall)
                )
                if retry_after is not None:
                    return Refused(index, retry_after)
            counted = list(windows)
            if guard is not None:
                refused = self._guard(db, guard, now, wall)
                if refused is not None:
                    return refused
                counted += guard.counted
            for window in counted:
                if not window.counted:
                    continue
                if window.exact:
                    _log_event(db, window, now, wall)
                else:
                    self._add_to_bucket(db, window, now, 1, wall)
            return None

        return await self._write(count_all)

    def _guard(
        self, db: sqlite3.Connection, guard: GuardCheck, now: float, wall: float
    ) -> GuardRefused | None:
        """The pumping guard's decision (engine/stores/guard.py), inside `hit`'s transaction."""
        row = db.execute(
            f"SELECT {_HOLD_COLUMNS} FROM hold WHERE prefix = ? AND forget_at > ?",  # noqa: S608
            (guard.prefix, wall),
        ).fetchone()
        if row is not None and float(row[3]) > now:
            hold = _hold(row)
            return GuardRefused(HELD, hold.until - now, hold)
        # Every count the decision may need, in one query: the prefix's sends and approvals,
        # the country's sends and approvals, each a previous and a current bucket.
        budget = guard.budget
        windows = (guard.sends, guard.approvals, budget.sends, budget.approvals)
        keys = [
            bucket_key(window, number)
            for window in windows
            for number in (bucket(now, window.seconds) - 1, bucket(now, window.seconds))
        ]
        found = dict(
            db.execute(
                "SELECT key, value FROM counter WHERE key IN (?, ?, ?, ?, ?, ?, ?, ?) AND forget_at > ?",
                (*keys, wall),
            ).fetchall()
        )
        counts = [found.get(key, 0) for key in keys]
        sends = weighted(guard.sends, counts[0], counts[1], now)
        approved = weighted(guard.approvals, counts[2], counts[3], now)
        if should_hold(guard, sends, approved):
            hold = hold_for(guard, sends, approved, now)
            db.execute(
                f"INSERT OR REPLACE INTO hold ({_HOLD_COLUMNS}, forget_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                (*astuple(hold), wall + guard.hold_seconds),
            )
            return GuardRefused(HELD, guard.hold_seconds, hold, raised=True)
        limit = country_limit(budget, weighted(budget.approvals, counts[6], counts[7], now))
        if limit is not None and weighted(budget.sends, counts[4], counts[5], now) + 1 > limit:
            return country_refusal(budget, counts[4], counts[5], limit, now)
        return None

    @staticmethod
    def _bucket_counts(db: sqlite3.Connection, window: Window, now: float, wall: float) -> tuple[int, int]:
        """A bucketed window's previous and current bucket at ``now``."""
        number = bucket(now, window.seconds)
        counts = dict(
            db.execute(
                "SELECT key, value FROM counter WHERE key IN (?, ?) AND forget_at > ?",
                (bucket_key(window, number - 1), bucket_key(window, number), wall),
            ).fetchall()
        )
        return counts.get(bucket_key(window, number - 1), 0), counts.get(bucket_key(window, number), 0)

    @staticmethod
    def _log_room(db: sqlite3.Connection, window: Window, now: float) -> float | None:
        """None if the exact window has room; else the seconds until it has."""
        count, oldest = _log_count(db, window, now)
        return None if count < window.limit else log_retry_after(window, oldest, now)

    @classmethod
    def _buckets_room(cls, db: sqlite3.Connection, window: Window, now: float, wall: float) -> float | None:
        """None if the bucketed window has room; else the seconds until it has."""
        previous, current = cls._bucket_counts(db, window, now, wall)
        if buckets_have_room(window, previous, current, now):
            return None
        return buckets_retry_after(window, previous, current, now)

    @staticmethod
    def _add_to_bucket(db: sqlite3.Connection, window: Window, now: float, amount: int, wall: float) -> None:
        """Add ``amount`` to the bucket ``now`` falls in (never below 0); it is kept for two buckets."""
        db.execute(
            "INSERT INTO counter (key, value, forget_at) VALUES (?, max(0, ?), ?)"
            " ON CONFLICT (key) DO UPDATE SET"
            " value = max(0, CASE WHEN forget_at > ? THEN value ELSE 0 END + ?),"
            " forget_at = CASE WHEN forget_at > ? THEN forget_at ELSE excluded.forget_at END",
            (
                bucket_key(window, bucket(now, window.seconds)),
                amount,
                wall + 2 * window.seconds,
                wall,
                amount,
                wall,
            ),
        )

    async def unhit(self, windows: Sequence[Window], now: float) -> None:
        await self._write(lambda db: self._take_back(db, windows, now))

    def _take_back(self, db: sqlite3.Connection, windows: Sequence[Window], now: float) -> None:
        """Take back one event from each counted window, inside the caller's transaction."""
        wall = time.time()
        for window in windows:
            if not window.counted:
                continue
            if window.exact:
                _take_back_event(db, window)
            else:
                self._add_to_bucket(db, window, now, -1, wall)

    # -- the pumping guard's holds -------------------------------------------
    async def holds(self, now: float) -> list[Hold]:
        rows = await self._read(
            f"SELECT {_HOLD_COLUMNS} FROM hold WHERE until > ? AND forget_at > ? ORDER BY since DESC",  # noqa: S608
            (now, time.time()),
        )
        return [_hold(row) for row in rows]

    async def release_hold(self, prefix: str, forget: Sequence[Window], now: float) -> Hold | None:
        def release(db: sqlite3.Connection) -> Hold | None:
            row = db.execute(
                f"DELETE FROM hold WHERE prefix = ? AND forget_at > ? RETURNING {_HOLD_COLUMNS}",  # noqa: S608
                (prefix, time.time()),
            ).fetchone()
            for window in forget:
                number = bucket(now, window.seconds)
                db.execute(
                    "DELETE FROM counter WHERE key IN (?, ?)",
                    (bucket_key(window, number - 1), bucket_key(window, number)),
                )
            return _hold(row) if row is not None and float(row[3]) > now else None

        return await self._write(release)

    # -- repeated requests --------------------------------------------------
    async def claim(self, key: str, ttl: float) -> Claim:
        while True:
            wall = time.time()
            # One statement takes the key if it is free or forgotten; RETURNING says whether it did.
            taken = await self._execute(
                "INSERT INTO claim (key, result, forget_at) VALUES (?, NULL, ?)"
                " ON CONFLICT (key) DO UPDATE SET result = NULL, forget_at = excluded.forget_at"
                " WHERE claim.forget_at <= ?"
                " RETURNING 1",
                (key, wall + ttl, wall),
            )
            if taken:
                return Claim(ClaimState.NEW)
            # Someone holds it (a repeat: rare). Read what they have; if the key was
            # released or forgotten in between, try to take it again.
            rows = await self._read("SELECT result FROM claim WHERE key = ? AND forget_at > ?", (key, wall))
            if rows:
                result = rows[0][0]
                return (
                    Claim(ClaimState.RUNNING)
                    if result is None
                    else Claim(ClaimState.DONE, json.loads(result))
                )

    async def complete(self, key: str, result: dict[str, Any], ttl: float) -> None:
        # An upsert, not INSERT OR REPLACE: the claim keeps its place (REPLACE would delete
        # it and insert it again, a write more).
        await self._execute(
            "INSERT INTO claim (key, result, forget_at) VALUES (?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET result = excluded.result, forget_at = excluded.forget_at",
            (key, _json(result), time.time() + ttl),
        )

    async def release(self, key: str) -> None:
        await self._execute("DELETE FROM claim WHERE key = ?", (key,))

    # -- generic records ----------------------------------------------------
    async def put_record(self, kind: str, record_id: str, data: dict[str, Any], ttl: float) -> None:
        record = Record(kind, record_id, data, ttl)
        await self._run(lambda db: _put_record(db, record), write=True, transaction=False)

    async def get_record(self, kind: str, record_id: str) -> dict[str, Any] | None:
        rows = await self._read(
            "SELECT data FROM record WHERE kind = ? AND id = ? AND forget_at > ?",
            (kind, record_id, time.time()),
        )
        if not rows:
            return None
        data: dict[str, Any] = json.loads(rows[0][0])
        return data

    async def delete_record(self, kind: str, record_id: str) -> None:
        await self._execute("DELETE FROM record WHERE kind = ? AND id = ?", (kind, record_id))

    # -- durable outbox -----------------------------------------------------
    async def enqueue(self, queue: str, item_id: str, payload: str, due_at: float) -> None:
        await self._execute(
            "INSERT OR IGNORE INTO outbox (queue, id, payload, due_at) VALUES (?, ?, ?, ?)",
            (queue, item_id, payload, due_at),
        )

    async def claim_due(self, queue: str, now: float, lease: float, limit: int) -> list[OutboxItem]:
        """Items due by ``now``, each hidden for ``lease`` seconds; ``due_at`` is when it fell due."""

        def lease_due(db: sqlite3.Connection) -> list[Any]:
            rows = db.execute(
                "SELECT id, payload, attempts, due_at FROM outbox WHERE queue = ? AND due_at <= ?"
                " ORDER BY due_at LIMIT ?",
                (queue, now, limit),
            ).fetchall()
            db.executemany(
                "UPDATE outbox SET due_at = ? WHERE queue = ? AND id = ?",
                [(now + lease, queue, row[0]) for row in rows],
            )
            return rows

        rows = await self._write(lease_due)
        return [OutboxItem(id=row[0], payload=row[1], attempts=row[2], due_at=row[3]) for row in rows]

    async def ack(self, queue: str, item_id: str) -> None:
        await self._execute("DELETE FROM outbox WHERE queue = ? AND id = ?", (queue, item_id))

    async def retry_later(self, queue: str, item_id: str, due_at: float) -> None:
        await self._execute(
            "UPDATE outbox SET attempts = attempts + 1, due_at = ? WHERE queue = ? AND id = ?",
            (due_at, queue, item_id),
        )

    async def backlog(self, queue: str) -> int:
        rows = await self._read("SELECT count(*) FROM outbox WHERE queue = ?", (queue,))
        return int(rows[0][0])

    # -- event fan-out ------------------------------------------------------
    async def broadcast(self, message: str) -> None:
        """Hand ``message`` to every listener of this process (SQLite has one instance)."""
        for queue in list(self._listeners):
            queue.put_nowait(message)

    def listen(self) -> AsyncIterator[str]:
        """Every message broadcast after this call; ends when the store closes.

        The listener is registered here, before the first item is awaited, so
        nothing broadcast after ``listen()`` returns is missed.
        """
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._listeners.add(queue)
        return self._drain(queue)

    async def _drain(self, queue: asyncio.Queue[str | None]) -> AsyncIterator[str]:
        try:
            while (message := await queue.get()) is not None:
                yield message
        finally:
            self._listeners.discard(queue)

"""The SQLite store: one instance, one file, every decision in one transaction.

Two connections: a writer, behind an asyncio lock so that the statements of
one transaction are never interleaved with another coroutine's, and a reader
for plain lookups, which under WAL never waits for the writer. ``BEGIN
IMMEDIATE`` takes SQLite's write lock before a decision reads anything, so
even a second process on the same file cannot slip in between the read and
the write.

The contract's times (``now``, ``expires_at``) are the caller's clock. What
Redis forgets through key expiry (a TTL, a finished verification after
RETAIN_FINISHED_SECONDS) is emulated here with a ``forget_at`` column on the
wall clock: rows past it are invisible at once and deleted in batches.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sqlite3
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any

import aiosqlite

from engine.errors import StoreUnavailable
from engine.models import Status, Verification
from engine.stores.base import (
    RETAIN_FINISHED_SECONDS,
    Attempt,
    AttemptGate,
    Claim,
    ClaimState,
    OutboxItem,
    Store,
)

# aiosqlite's debug lines echo every query's parameters, phone numbers included:
# never below INFO, whatever level the application logs at.
logging.getLogger("aiosqlite").setLevel(logging.INFO)

# Seconds a connection waits for another process's write lock before giving up.
BUSY_TIMEOUT_SECONDS = 5.0
# How often forgotten rows are deleted (they are already invisible before that).
PURGE_INTERVAL_SECONDS = 60.0

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
    " SET status = ?, updated_at = ?, provider_ref = coalesce(?, provider_ref), forget_at = ?"
    " WHERE id = ? AND status = 'pending' AND forget_at > ?"
    f" RETURNING {_COLUMNS}"
)

# Column order must follow Verification's fields (checked in open()).
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
    forget_at REAL NOT NULL
) WITHOUT ROWID;
-- Partial: a verification leaves the expiry schedule when it stops being pending.
CREATE INDEX IF NOT EXISTS verification_due ON verification (expires_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS verification_forget ON verification (forget_at);

CREATE TABLE IF NOT EXISTS hit (key TEXT NOT NULL, at REAL NOT NULL, forget_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS hit_key ON hit (key, at);
CREATE INDEX IF NOT EXISTS hit_forget ON hit (forget_at);

CREATE TABLE IF NOT EXISTS counter (
    key TEXT PRIMARY KEY, value INTEGER NOT NULL, forget_at REAL NOT NULL
) WITHOUT ROWID;

-- result NULL: the owner is still running.
CREATE TABLE IF NOT EXISTS claim (key TEXT PRIMARY KEY, result TEXT, forget_at REAL NOT NULL) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS record (
    kind TEXT NOT NULL, id TEXT NOT NULL, data TEXT NOT NULL, forget_at REAL NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS outbox (
    queue TEXT NOT NULL, id TEXT NOT NULL, payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, due_at REAL NOT NULL,
    PRIMARY KEY (queue, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (queue, due_at);

CREATE TABLE IF NOT EXISTS secret (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
"""

_FORGETTING_TABLES = ("verification", "hit", "counter", "claim", "record")


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


class SqliteStore(Store):
    """The store in one SQLite file (``path``; its folder is created if missing)."""

    def __init__(self, path: str) -> None:
        self._path = Path(path)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._next_purge = 0.0
        self._secrets: dict[str, bytes] = {}
        # Weak, so a listener dropped without being closed does not collect messages forever.
        self._listeners: weakref.WeakSet[asyncio.Queue[str | None]] = weakref.WeakSet()

    # -- lifecycle ----------------------------------------------------------
    async def open(self) -> None:
        try:
            await asyncio.to_thread(self._path.parent.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create the folder of the SQLite store: {exc}") from exc
        try:
            self._writer = await self._connect()
            # WAL first: it is a property of the file that the reader then shares.
            await self._writer.execute("PRAGMA journal_mode = WAL")
            await self._writer.executescript(_SCHEMA)
            columns = await self._writer.execute_fetchall("PRAGMA table_info(verification)")
            self._reader = await self._connect()
        except sqlite3.Error as exc:
            await self.close()
            raise StoreUnavailable(f"cannot open the SQLite store: {exc}") from exc
        if tuple(column[1] for column in columns)[: len(_FIELDS)] != _FIELDS:
            await self.close()
            raise StoreUnavailable("the SQLite store's verification table does not match this version")

    async def _connect(self) -> aiosqlite.Connection:
        # isolation_level=None: no implicit transactions; each decision opens its own.
        db = await aiosqlite.connect(self._path, isolation_level=None, timeout=BUSY_TIMEOUT_SECONDS)
        try:
            await db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
            # NORMAL under WAL: a power cut may lose the last commits, never corrupt the file.
            await db.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            await db.close()
            raise
        return db

    async def close(self) -> None:
        for queue in list(self._listeners):
            queue.put_nowait(None)  # ends that listener's iteration
        writer, reader, self._writer, self._reader = self._writer, self._reader, None, None
        for db in (writer, reader):
            if db is not None:
                with suppress(sqlite3.Error):  # nothing left to save; WAL keeps the file consistent
                    await db.close()

    async def ping(self) -> None:
        async with self._read() as db:
            await db.execute_fetchall("SELECT 1")

    # -- connections and transactions --------------------------------------
    @asynccontextmanager
    async def _read(self) -> AsyncIterator[aiosqlite.Connection]:
        """The reader connection: sees only committed data."""
        if self._reader is None:
            raise StoreUnavailable("the SQLite store is not open")
        with _unavailable():
            yield self._reader

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """The writer connection, for single statements (each its own transaction)."""
        async with self._write_lock:
            if self._writer is None:
                raise StoreUnavailable("the SQLite store is not open")
            with _unavailable():
                await self._purge_if_due(self._writer)
                yield self._writer

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """The writer connection inside ``BEGIN IMMEDIATE`` ... ``COMMIT``."""
        async with self._write() as db:
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                await db.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT, which leaves the transaction open.
                with suppress(sqlite3.Error):
                    await db.execute("ROLLBACK")
                raise

    async def _purge_if_due(self, db: aiosqlite.Connection) -> None:
        if time.monotonic() < self._next_purge:
            return
        self._next_purge = time.monotonic() + PURGE_INTERVAL_SECONDS
        wall = time.time()
        for table in _FORGETTING_TABLES:
            await db.execute(f"DELETE FROM {table} WHERE forget_at <= ?", (wall,))  # noqa: S608

    # -- server keys --------------------------------------------------------
    async def secret(self, name: str) -> bytes:
        if name not in self._secrets:
            async with self._write() as db:
                # INSERT OR IGNORE: whoever inserts first wins; everyone then reads the winner.
                await db.execute(
                    "INSERT OR IGNORE INTO secret (name, value) VALUES (?, ?)",
                    (name, secrets.token_bytes(32)),
                )
                rows = await db.execute_fetchall("SELECT value FROM secret WHERE name = ?", (name,))
            self._secrets[name] = bytes(next(iter(rows))[0])
        return self._secrets[name]

    # -- verifications ------------------------------------------------------
    async def create_verification(self, verification: Verification) -> None:
        lifetime = max(0.0, verification.expires_at - verification.created_at)
        values = [*verification.model_dump().values(), time.time() + lifetime + RETAIN_FINISHED_SECONDS]
        async with self._write() as db:
            try:
                await db.execute(_INSERT_VERIFICATION, values)
            except sqlite3.IntegrityError as exc:
                raise ValueError(f"verification {verification.id} already exists") from exc

    async def get_verification(self, verification_id: str) -> Verification | None:
        async with self._read() as db:
            rows = await db.execute_fetchall(_SELECT_VERIFICATION, (verification_id, time.time()))
        row = next(iter(rows), None)
        return None if row is None else _verification(row)

    async def begin_attempt(self, verification_id: str, now: float) -> Attempt | None:
        async with self._transaction() as db:
            rows = await db.execute_fetchall(_SELECT_VERIFICATION, (verification_id, time.time()))
            row = next(iter(rows), None)
            if row is None:
                return None
            verification = _verification(row)
            if verification.status is not Status.PENDING:
                return Attempt(AttemptGate.NOT_PENDING, verification)
            if verification.is_expired(now):
                ended = await self._end(db, verification_id, Status.EXPIRED, now, None)
                assert ended is not None  # read as pending inside this very transaction
                return Attempt(AttemptGate.EXPIRED, ended, changed=True)
            if verification.attempts >= verification.max_attempts:
                # Not ended here: a counted attempt still in flight may be the right code.
                return Attempt(AttemptGate.NO_ATTEMPTS_LEFT, verification)
            await db.execute(
                "UPDATE verification SET attempts = attempts + 1, updated_at = ? WHERE id = ?",
                (now, verification_id),
            )
            counted = verification.model_copy(
                update={"attempts": verification.attempts + 1, "updated_at": now}
            )
            return Attempt(AttemptGate.COUNTED, counted)

    async def refund_attempt(self, verification_id: str) -> None:
        async with self._write() as db:
            await db.execute(
                "UPDATE verification SET attempts = attempts - 1"
                " WHERE id = ? AND status = 'pending' AND attempts > 0",
                (verification_id,),
            )

    async def transition(
        self, verification_id: str, to: Status, now: float, *, provider_ref: str | None = None
    ) -> Verification | None:
        async with self._write() as db:
            return await self._end(db, verification_id, to, now, provider_ref)

    @staticmethod
    async def _end(
        db: aiosqlite.Connection, verification_id: str, to: Status, now: float, provider_ref: str | None
    ) -> Verification | None:
        wall = time.time()
        rows = await db.execute_fetchall(
            _END_VERIFICATION,
            (to.value, now, provider_ref, wall + RETAIN_FINISHED_SECONDS, verification_id, wall),
        )
        row = next(iter(rows), None)
        return None if row is None else _verification(row)

    async def due_for_expiry(self, now: float, limit: int = 100) -> list[str]:
        async with self._read() as db:
            rows = await db.execute_fetchall(
                "SELECT id FROM verification WHERE status = 'pending' AND expires_at <= ? AND forget_at > ?"
                " ORDER BY expires_at LIMIT ?",
                (now, time.time(), limit),
            )
        return [row[0] for row in rows]

    async def next_expiry(self) -> float | None:
        async with self._read() as db:
            rows = await db.execute_fetchall(
                "SELECT min(expires_at) FROM verification WHERE status = 'pending' AND forget_at > ?",
                (time.time(),),
            )
        earliest = next(iter(rows))[0]
        return None if earliest is None else float(earliest)

    # -- counters and limits ------------------------------------------------
    async def hit(self, key: str, limit: int, window: float, now: float) -> float:
        async with self._transaction() as db:
            await db.execute("DELETE FROM hit WHERE key = ? AND at <= ?", (key, now - window))
            rows = await db.execute_fetchall("SELECT count(*), min(at) FROM hit WHERE key = ?", (key,))
            count, oldest = next(iter(rows))
            if count < limit:
                await db.execute(
                    "INSERT INTO hit (key, at, forget_at) VALUES (?, ?, ?)", (key, now, time.time() + window)
                )
                return 0.0
        return window if oldest is None else max(0.0, oldest + window - now)

    async def unhit(self, key: str, now: float) -> None:
        async with self._write() as db:
            await db.execute(
                "DELETE FROM hit WHERE rowid ="
                " (SELECT rowid FROM hit WHERE key = ? ORDER BY at DESC, rowid DESC LIMIT 1)",
                (key,),
            )

    async def incr(self, key: str, ttl: float) -> int:
        wall = time.time()
        async with self._write() as db:
            # A counter past its forget_at starts again at 1 with a new lifetime.
            rows = await db.execute_fetchall(
                "INSERT INTO counter (key, value, forget_at) VALUES (?, 1, ?)"
                " ON CONFLICT (key) DO UPDATE SET"
                " value = CASE WHEN forget_at > ? THEN value + 1 ELSE 1 END,"
                " forget_at = CASE WHEN forget_at > ? THEN forget_at ELSE excluded.forget_at END"
                " RETURNING value",
                (key, wall + ttl, wall, wall),
            )
        return int(next(iter(rows))[0])

    async def get_count(self, key: str) -> int:
        async with self._read() as db:
            rows = await db.execute_fetchall(
                "SELECT value FROM counter WHERE key = ? AND forget_at > ?", (key, time.time())
            )
        row = next(iter(rows), None)
        return 0 if row is None else int(row[0])

    # -- repeated requests --------------------------------------------------
    async def claim(self, key: str, ttl: float) -> Claim:
        async with self._transaction() as db:
            wall = time.time()
            rows = await db.execute_fetchall(
                "SELECT result FROM claim WHERE key = ? AND forget_at > ?", (key, wall)
            )
            row = next(iter(rows), None)
            if row is None:
                await db.execute(
                    "INSERT OR REPLACE INTO claim (key, result, forget_at) VALUES (?, NULL, ?)",
                    (key, wall + ttl),
                )
                return Claim(ClaimState.NEW)
        if row[0] is None:
            return Claim(ClaimState.RUNNING)
        return Claim(ClaimState.DONE, json.loads(row[0]))

    async def complete(self, key: str, result: dict[str, Any], ttl: float) -> None:
        async with self._write() as db:
            await db.execute(
                "INSERT OR REPLACE INTO claim (key, result, forget_at) VALUES (?, ?, ?)",
                (key, json.dumps(result, separators=(",", ":")), time.time() + ttl),
            )

    async def release(self, key: str) -> None:
        async with self._write() as db:
            await db.execute("DELETE FROM claim WHERE key = ?", (key,))

    # -- generic records ----------------------------------------------------
    async def put_record(self, kind: str, record_id: str, data: dict[str, Any], ttl: float) -> None:
        async with self._write() as db:
            await db.execute(
                "INSERT OR REPLACE INTO record (kind, id, data, forget_at) VALUES (?, ?, ?, ?)",
                (kind, record_id, json.dumps(data, separators=(",", ":")), time.time() + ttl),
            )

    async def get_record(self, kind: str, record_id: str) -> dict[str, Any] | None:
        async with self._read() as db:
            rows = await db.execute_fetchall(
                "SELECT data FROM record WHERE kind = ? AND id = ? AND forget_at > ?",
                (kind, record_id, time.time()),
            )
        row = next(iter(rows), None)
        if row is None:
            return None
        data: dict[str, Any] = json.loads(row[0])
        return data

    # -- durable outbox -----------------------------------------------------
    async def enqueue(self, queue: str, item_id: str, payload: str, due_at: float) -> None:
        async with self._write() as db:
            await db.execute(
                "INSERT OR IGNORE INTO outbox (queue, id, payload, due_at) VALUES (?, ?, ?, ?)",
                (queue, item_id, payload, due_at),
            )

    async def claim_due(self, queue: str, now: float, lease: float, limit: int) -> list[OutboxItem]:
        """Items due by ``now``, each hidden for ``lease`` seconds; ``due_at`` is when it fell due."""
        async with self._transaction() as db:
            rows = list(
                await db.execute_fetchall(
                    "SELECT id, payload, attempts, due_at FROM outbox WHERE queue = ? AND due_at <= ?"
                    " ORDER BY due_at LIMIT ?",
                    (queue, now, limit),
                )
            )
            await db.executemany(
                "UPDATE outbox SET due_at = ? WHERE queue = ? AND id = ?",
                [(now + lease, queue, row[0]) for row in rows],
            )
        return [OutboxItem(id=row[0], payload=row[1], attempts=row[2], due_at=row[3]) for row in rows]

    async def ack(self, queue: str, item_id: str) -> None:
        async with self._write() as db:
            await db.execute("DELETE FROM outbox WHERE queue = ? AND id = ?", (queue, item_id))

    async def retry_later(self, queue: str, item_id: str, due_at: float) -> None:
        async with self._write() as db:
            await db.execute(
                "UPDATE outbox SET attempts = attempts + 1, due_at = ? WHERE queue = ? AND id = ?",
                (due_at, queue, item_id),
            )

    async def backlog(self, queue: str) -> int:
        async with self._read() as db:
            rows = await db.execute_fetchall("SELECT count(*) FROM outbox WHERE queue = ?", (queue,))
        return int(next(iter(rows))[0])

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

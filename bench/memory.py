"""Memory per pending verification, in each store.

N verifications are started through the engine itself (destination policy,
the three rate-limit counters a send records, the pumping guard's counts of
its prefix and country, the verification record and its place in the expiry
schedule), with a stub provider that answers at once, as a SignalWire send would. Then:

- SQLite: the database file's growth after a WAL checkpoint, per verification,
  with the bytes of each table and index (SQLite's ``dbstat``);
- Redis: ``INFO memory`` ``used_memory`` growth, per verification, with
  ``MEMORY USAGE`` of each kind of key; all keys under a prefix of their own,
  deleted afterwards.

A second figure counts the verification record alone (``store.create_verification``),
without the limiter's entries: those go away after their window (an hour at most).

Each figure also says how much of it is the history (the list's entry, its indexes and
the summary's counters: engine/stores/history.py), which every verification keeps for
``MFA_HISTORY_DAYS`` whatever becomes of it: SQLite's history tables and indexes
(``dbstat``); Redis's ``used_memory`` drop when the history's keys are deleted.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from engine.events.publisher import EventPublisher
from engine.fraud import FraudGuard, FraudSettings
from engine.keys import KeyRing
from engine.limits import Limits, LimitSettings
from engine.models import Verification
from engine.providers.base import Answer, Provider, SendRequest, Sent
from engine.stores import Store, open_store
from engine.verifications import CodeShape, VerificationEngine

SHAPE = CodeShape(
    token_length=6, valid_for=600, max_attempts=3, allow_alphas=False, message="Your verification code is"
)


class StubProvider(Provider):
    """Answers a send with an id shaped like SignalWire's, at once."""

    name = "signalwire"

    async def send(self, request: SendRequest) -> Sent:
        return Sent(provider_ref=str(uuid.uuid4()))

    async def verify(self, verification: Verification, code: str) -> Answer:
        return Answer.WRONG


async def _engine(store: Store) -> VerificationEngine:
    big = 10**9
    keys = KeyRing()
    await keys.sync(store)
    limits = Limits(store, LimitSettings(big, big, big, big, big, big), keys)
    # As deployed, but a new country's budget out of the way: every number is in the US.
    fraud = FraudGuard(store, FraudSettings(new_country_sends=100_000))
    return VerificationEngine(
        store=store,
        provider=StubProvider(),
        publisher=EventPublisher(),
        limits=limits,
        shape=SHAPE,
        fraud=fraud,
    )


async def _fill(store: Store, numbers: list[str], through_engine: bool) -> None:
    engine = await _engine(store)
    now = time.time()
    for number in numbers:
        call_id = str(uuid.uuid4())
        if through_engine:
            await engine.start(number, "sms", agent_id="mfa", origin="call", call_id=call_id)
        else:
            await store.create_verification(
                Verification(
                    id=str(uuid.uuid4()),
                    to=number,
                    channel="sms",
                    max_attempts=SHAPE.max_attempts,
                    created_at=now,
                    expires_at=now + SHAPE.valid_for,
                    updated_at=now,
                    agent_id="mfa",
                    call_id=call_id,
                    provider="signalwire",
                    provider_ref=str(uuid.uuid4()),
                    origin="call",
                )
            )


def _sqlite_size(path: Path) -> tuple[int, dict[str, int]]:
    """The file's size once the WAL is folded in, and the bytes of each table and index."""
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        by_object = dict(db.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall())
    size = path.stat().st_size
    wal = path.with_name(path.name + "-wal")
    if wal.exists():
        size += wal.stat().st_size
    return size, by_object


# The history's tables and indexes (SQLite), and its kinds of key (Redis: entries, indexes, counters).
_SQLITE_HISTORY = "history"
_REDIS_HISTORY = frozenset({"h", "hx", "hr"})


async def sqlite_per_verification(numbers: list[str], through_engine: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-sqlite-") as folder:
        path = Path(folder) / "mfa.sqlite3"
        store = open_store(f"sqlite:///{path}")
        await store.open()
        await _engine(store)  # the server keys, as at start-up
        await store.close()
        before, tables_before = _sqlite_size(path)
        store = open_store(f"sqlite:///{path}")
        await store.open()
        try:
            await _fill(store, numbers, through_engine)
        finally:
            await store.close()
        after, tables_after = _sqlite_size(path)
    count = len(numbers)
    breakdown = {
        name: round((size - tables_before.get(name, 0)) / count, 1)
        for name, size in sorted(tables_after.items())
        if size - tables_before.get(name, 0) > 0
    }
    history = sum(size for name, size in breakdown.items() if name.startswith(_SQLITE_HISTORY))
    return {
        "verifications": count,
        "bytes_per_verification": round((after - before) / count, 1),
        "history_bytes_per_verification": round(history, 1),
        "file_bytes_before": before,
        "file_bytes_after": after,
        "by_table_or_index": breakdown,
    }


async def redis_per_verification(url: str, numbers: list[str], through_engine: bool) -> dict[str, Any]:
    import redis.asyncio as redis

    prefix = f"bench{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(url, decode_responses=True)
    store = open_store(f"{url}?prefix={prefix}")
    await store.open()
    try:
        await _engine(store)
        before = int((await client.info("memory"))["used_memory"])
        await _fill(store, numbers, through_engine)
        after = int((await client.info("memory"))["used_memory"])
        by_kind: dict[str, list[int]] = defaultdict(list)
        keys = 0
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            keys += 1
            kind = key.removeprefix(prefix).split(":")[0]
            if kind == "hit":
                kind = ":".join(key.removeprefix(prefix).split(":")[:3])  # hit:sends:call etc.
            usage = await client.memory_usage(key, samples=0)
            by_kind[kind].append(int(usage or 0))
        count = len(numbers)
        breakdown = {
            kind: {
                "keys": len(sizes),
                "bytes_per_key": round(sum(sizes) / len(sizes), 1),
                "bytes_per_verification": round(sum(sizes) / count, 1),
            }
            for kind, sizes in sorted(by_kind.items())
        }
        # The history's share: what Redis gives back when its keys go.
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            if key.removeprefix(prefix).split(":")[0] in _REDIS_HISTORY:
                await client.delete(key)
        without_history = int((await client.info("memory"))["used_memory"])
    finally:
        await store.close()
        deleted = 0
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            deleted += await client.unlink(key)
        await client.aclose()
    return {
        "verifications": count,
        "bytes_per_verification": round((after - before) / count, 1),
        "history_bytes_per_verification": round((after - without_history) / count, 1),
        "used_memory_before": before,
        "used_memory_after": after,
        "keys": keys,
        "by_key_kind": breakdown,
        "prefix": prefix,
        "keys_deleted": deleted,
    }

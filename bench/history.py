"""`python -m bench history`: the history's list and summary on a million verifications.

Seeds N verifications (10,000 and 1,000,000 by default) through the store's own steps
(`create_verification`, then `begin_attempt` and `transition` as each ended) into a
fresh SQLite file and into a throw-away redis-server, spread over the retention
(30 days) up to now, then times the questions an operator and the dashboard ask:
pages of the list with and without filters, and summaries of the last hour, day and
month. Each question is asked ``--repeat`` times; p50 and p95 are reported, with the
store's size per verification. Not part of the test suite; see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.processes import ROOT, redis_server, run_async, start_redis
from bench.stats import percentile
from engine.history import History
from engine.models import Status, Verification
from engine.stores import RedisStore, SqliteStore, Store
from engine.stores.history import DAY, HOUR, HOURS_KEPT, MINUTE, MINUTES_KEPT, HistoryFilter

RESULTS = ROOT / "bench" / "results"
RETENTION = 30 * DAY
# Who sends, and where: skewed the way real traffic is (one big agent, one big country).
AGENTS = (("signup-web", 6), ("support-line", 3), ("partner-api", 1))
ORIGINS = (("call", 6), ("api", 3), ("workflow", 1))
CHANNELS = (("sms", 9), ("call", 1))
_BY_SIZE = ("US", "GB", "FR", "DE", "ES", "IT", "NL", "BR", "MX", "IN", "CA", "AU", "PL", "SE", "BE", "CH")
COUNTRIES = tuple((code, 1 / rank) for rank, code in enumerate((*_BY_SIZE, "AT", "IE", "PT", "NZ"), start=1))
# Zipf: US about 28%, NZ about 1.4%
ENDINGS = (
    (Status.APPROVED, 80),
    (Status.EXPIRED, 10),
    (Status.MAX_ATTEMPTS_REACHED, 5),
    (Status.CANCELED, 3),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench history", description=__doc__)
    add = parser.add_argument
    add("--counts", default="10000,1000000", help="verifications per run, comma-separated")
    add("--stores", default="sqlite,redis", help="comma-separated, of sqlite,redis")
    add("--repeat", type=int, default=40, help="times each question is asked (default 40)")
    add("--seed", type=int, default=20261126)
    add("--redis-url", default=None, help="an existing Redis (its keys go under a prefix of their own)")
    add("--output", type=Path, default=None, help="results folder (default bench/results/history-<time>)")
    args = parser.parse_args(argv)
    args.counts = [int(count) for count in args.counts.split(",") if count]
    args.stores = [store for store in args.stores.split(",") if store]
    return args


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _pick(choices: tuple[tuple[Any, float], ...], rng: random.Random) -> Any:
    values, weights = zip(*choices, strict=True)
    return rng.choices(values, weights)[0]


@dataclass
class Seeded:
    now: float
    count: int
    seconds: float


async def seed(store: Store, count: int, rng: random.Random, now: float) -> Seeded:
    """``count`` verifications sent evenly over the retention up to ``now``, each ended as
    real ones end (approved 5-120 s after the send, the rest after the code's 10 minutes)
    but those of the last ten minutes, still pending."""
    started = time.perf_counter()
    step = (RETENTION - HOUR) / count
    first = now - RETENTION + HOUR
    in_flight: set[asyncio.Task[None]] = set()
    width = 1 if isinstance(store, SqliteStore) else 64  # Redis: many scripts in flight, as many instances

    async def one(index: int) -> None:
        created = first + index * step
        call_id = str(uuid.uuid4())
        origin = _pick(ORIGINS, rng)
        verification = Verification(
            id=str(uuid.uuid4()),
            to=f"+1202555{index % 10_000:04d}",
            channel=_pick(CHANNELS, rng),
            max_attempts=3,
            created_at=created,
            expires_at=created + 600,
            updated_at=created,
            agent_id=_pick(AGENTS, rng),
            call_id=call_id if origin == "call" else None,
            country=_pick(COUNTRIES, rng),
            provider="local",
            origin=origin,
        )
        await store.create_verification(verification)
        if created > now - 600:
            return
        ending = _pick(ENDINGS, rng)
        if ending is Status.MAX_ATTEMPTS_REACHED:
            for _ in range(3):
                await store.begin_attempt(verification.id, created + 20)
        elif ending is Status.APPROVED:
            await store.begin_attempt(verification.id, created + 5)
        delay = rng.uniform(5, 120) if ending is Status.APPROVED else 600.0
        await store.transition(verification.id, ending, created + delay)

    for index in range(count):
        task = asyncio.ensure_future(one(index))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        if len(in_flight) >= width:
            await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
        if index and index % 100_000 == 0:
            _say(f"  seeded {index} in {time.perf_counter() - started:.0f} s")
    if in_flight:
        await asyncio.wait(in_flight)
    return Seeded(now, count, time.perf_counter() - started)


async def timed(ask: Callable[[], Awaitable[Any]], repeat: int) -> dict[str, float]:
    await ask()  # warm: statement caches, script loading
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        await ask()
        samples.append(time.perf_counter() - started)
    samples.sort()
    return {
        "p50_ms": round(percentile(samples, 0.5) * 1000, 2),
        "p95_ms": round(percentile(samples, 0.95) * 1000, 2),
    }


async def questions(store: Store, now: float, repeat: int) -> dict[str, dict[str, float]]:
    history = History(store, RETENTION, clock=lambda: now)
    middle = (await store.list_history(HistoryFilter(until=now - 15 * DAY), now, limit=1)).next
    page = history.page
    asks: dict[str, Callable[[], Awaitable[Any]]] = {
        "list: first page (50)": lambda: page(HistoryFilter()),
        "list: agent_id, 3 days back": lambda: page(
            HistoryFilter(agent_id="signup-web", until=now - 3 * DAY)
        ),
        "list: a page 15 days back": lambda: store.list_history(HistoryFilter(), now, after=middle),
        "list: agent_id": lambda: page(HistoryFilter(agent_id="support-line")),
        "list: status=pending": lambda: page(HistoryFilter(status=Status.PENDING)),
        "list: status=expired, 200": lambda: page(HistoryFilter(status=Status.EXPIRED), limit=200),
        "list: country=NZ (1.4%)": lambda: page(HistoryFilter(country="NZ")),
        "list: agent+channel+country": lambda: page(
            HistoryFilter(agent_id="partner-api", channel="call", country="SE")
        ),
        "list: last hour, origin=workflow": lambda: page(HistoryFilter(origin="workflow", since=now - HOUR)),
        "summary: last hour": lambda: history.summary(HistoryFilter(since=now - HOUR)),
        "summary: last 24 h": lambda: history.summary(HistoryFilter(since=now - DAY)),
        "summary: 30 days": lambda: history.summary(HistoryFilter()),
        "summary: 30 days, country=GB": lambda: history.summary(HistoryFilter(country="GB")),
        "summary: 7 days 13:17 to now, agent": lambda: history.summary(
            HistoryFilter(agent_id="signup-web", since=now - 7 * DAY - 13 * HOUR - 17 * MINUTE)
        ),
    }
    return {name: await timed(ask, repeat) for name, ask in asks.items()}


def sqlite_sizes(path: Path, now: float) -> dict[str, int]:
    """Bytes of each history table and index (SQLite's dbstat), after a checkpoint, without
    the minute and hour buckets a store would have forgotten by ``now`` (see `past_keeping`)."""
    db = sqlite3.connect(path)
    try:
        for level, before in past_keeping(now):
            db.execute("DELETE FROM history_rollup WHERE level = ? AND start < ?", (level, before))
        db.commit()
        db.execute("VACUUM")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = db.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall()
    finally:
        db.close()
    return {name: int(size) for name, size in rows if name.startswith("history") or name == "verification"}


def past_keeping(now: float) -> list[tuple[int, float]]:
    """The minute and hour buckets (size, starting before) a store no longer holds at ``now``.

    The seeding writes a month in minutes, each bucket kept from the moment it is written:
    live, Redis would have let the old ones expire and SQLite purged them by now.
    """
    return [(MINUTE, now - MINUTES_KEPT), (HOUR, now - HOURS_KEPT)]


def redis_sizes(url: str, prefix: str, now: float) -> dict[str, int]:
    """used_memory with every key, and once the verifications' own records are gone (as a day
    after they end) and the buckets past their keeping: what the history alone holds."""
    import redis

    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        total = int(client.info("memory")["used_memory"])
        past = dict(past_keeping(now))
        for pattern in ("v:*", "call:*", "expiry", "hr:*"):
            batch = []
            for key in client.scan_iter(match=f"{prefix}{pattern}", count=5000):
                if pattern == "hr:*":
                    _, level, start = key[len(prefix) :].split(":")[:3]
                    if int(level) not in past or int(start) >= past[int(level)]:
                        continue
                batch.append(key)
                if len(batch) >= 5000:
                    client.unlink(*batch)
                    batch.clear()
            if batch:
                client.unlink(*batch)
        time.sleep(1.0)  # UNLINK frees in the background
        history_only = int(client.info("memory")["used_memory"])
        return {"used_memory": total, "used_memory_history_only": history_only}
    finally:
        client.close()


async def run_one(
    kind: str, count: int, args: argparse.Namespace, work: Path, redis_url: str | None
) -> dict[str, Any]:
    rng = random.Random(args.seed)
    now = time.time()
    prefix = f"bench-history:{uuid.uuid4().hex}:"
    path = work / f"history-{count}.sqlite3"
    store: Store
    if kind == "sqlite":
        store = SqliteStore(str(path), history_retention=RETENTION)
    else:
        assert redis_url is not None
        store = RedisStore(redis_url, prefix=prefix, history_retention=RETENTION)
    await store.open()
    baseline = None
    if kind == "redis":
        import redis

        baseline = int(redis.Redis.from_url(redis_url).info("memory")["used_memory"])  # type: ignore[arg-type]
    try:
        _say(f"{kind}: seeding {count} verifications ...")
        seeded = await seed(store, count, rng, now)
        _say(f"{kind}: seeded in {seeded.seconds:.0f} s; asking ...")
        figures = await questions(store, now, args.repeat)
    finally:
        await store.close()
    result: dict[str, Any] = {"store": kind, "count": count, "seed_seconds": round(seeded.seconds, 1)}
    result["questions"] = figures
    if kind == "sqlite":
        sizes = sqlite_sizes(path, now)
        result["sizes"] = sizes
        history_bytes = sum(size for name, size in sizes.items() if name.startswith("history"))
        result["history_bytes_per_verification"] = round(history_bytes / count)
        path.unlink(missing_ok=True)
    else:
        assert redis_url is not None and baseline is not None
        sizes = redis_sizes(redis_url, prefix, now)
        result["history_bytes_per_verification"] = round(
            (sizes["used_memory_history_only"] - baseline) / count
        )
        result["all_bytes_per_verification"] = round((sizes["used_memory"] - baseline) / count)
        _delete_prefix(redis_url, prefix)
    return result


def _delete_prefix(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        batch = []
        for key in client.scan_iter(match=f"{prefix}*", count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
    finally:
        client.close()


def report(results: list[dict[str, Any]]) -> str:
    names = list(results[0]["questions"])
    runs = [f"{result['store']} {result['count']:,}" for result in results]
    lines = ["| question (p50 / p95 ms) | " + " | ".join(runs) + " |", "|---" * (len(runs) + 1) + "|"]
    for name in names:
        cells = []
        for result in results:
            figure = result["questions"][name]
            cells.append(f"{figure['p50_ms']:.1f} / {figure['p95_ms']:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| seeding, s | " + " | ".join(str(result["seed_seconds"]) for result in results) + " |")
    lines.append(
        "| history bytes / verification | "
        + " | ".join(str(result["history_bytes_per_verification"]) for result in results)
        + " |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = args.output or RESULTS / time.strftime("history-%Y%m%d-%H%M%S")
    output.mkdir(parents=True, exist_ok=True)
    server = None
    redis_url = args.redis_url
    with tempfile.TemporaryDirectory(prefix="bench-history-") as folder:
        work = Path(folder)
        if "redis" in args.stores and redis_url is None:
            started = redis_server(work, None)
            if started is None:
                _say("no redis-server installed: Redis left out")
                args.stores.remove("redis")
            else:
                server, redis_url = started
                start_redis(server, redis_url)
        try:
            results = [
                run_async(run_one(kind, count, args, work, redis_url))
                for count in args.counts
                for kind in args.stores
            ]
        finally:
            if server is not None:
                server.stop()
    (output / "results.json").write_text(json.dumps(results, indent=2))
    print(report(results))
    _say(f"results in {output}/results.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

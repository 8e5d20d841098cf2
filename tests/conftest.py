"""Shared test fixtures. Each section belongs to one part of the project."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from uuid import uuid4

import pytest
import pytest_asyncio
import redis

from engine.codes import Message
from engine.delivery import Receipt
from engine.delivery.outbox import OutboxDelivery
from engine.delivery.signalwire_messaging import SignalWireMessaging
from engine.stores import RedisStore, SqliteStore, Store
from tests.platform import DELIVERED, Delivered, free_port
from tests.processes import RedisServer, redis_answers

# == Store fixtures (engine/stores): a Redis to test against, and every store opened fresh ==

_LOCAL_REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis to test against: the one on 6379 if it answers, else a throw-away redis-server."""
    if redis_answers(_LOCAL_REDIS):
        yield _LOCAL_REDIS
        return
    server = RedisServer(free_port())
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def _delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """Makes unopened stores that share one backing (a file, or a Redis prefix), so a test
    can open a second instance or reopen after close. Test ids read ``[sqlite]``/``[redis]``."""
    if request.param == "sqlite":
        path = str(tmp_path / "stores" / "mfa.sqlite3")
        return lambda: SqliteStore(path)
    url: str = request.getfixturevalue("redis_url")
    prefix = f"test:{uuid4().hex}:"
    request.addfinalizer(lambda: _delete_prefix(url, prefix))
    return lambda: RedisStore(url, prefix=prefix)


@pytest_asyncio.fixture
async def store(make_store: Callable[[], Store]) -> AsyncIterator[Store]:
    """An opened store, SQLite in tmp_path or Redis under a prefix of its own."""
    opened = make_store()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


# == Delivery (engine/delivery): what in-process agents delivered, with each code apart ==


@pytest.fixture(autouse=True)
def delivered(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Delivered]]:
    """Records every message the deliveries hand on (after they succeed), for `tests.platform.last_code`."""
    write_outbox = OutboxDelivery.deliver
    send_through_signalwire = SignalWireMessaging.deliver

    async def outbox(
        self: OutboxDelivery, to: str, channel: str, message: Message, *, reference: str | None = None
    ) -> Receipt:
        receipt = await write_outbox(self, to, channel, message, reference=reference)
        DELIVERED.append(Delivered(self.path.resolve(), to, channel, message, reference))
        return receipt

    async def signalwire(
        self: SignalWireMessaging, to: str, channel: str, message: Message, *, reference: str | None = None
    ) -> Receipt:
        receipt = await send_through_signalwire(self, to, channel, message, reference=reference)
        DELIVERED.append(Delivered("signalwire", to, channel, message, reference))
        return receipt

    monkeypatch.setattr(OutboxDelivery, "deliver", outbox)
    monkeypatch.setattr(SignalWireMessaging, "deliver", signalwire)
    DELIVERED.clear()
    yield DELIVERED
    DELIVERED.clear()


# == App fixtures: a Redis store URL of its own for each test that runs whole agents ==


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A `MFA_STORE` URL for agents under test: a file in tmp_path, or a Redis prefix of its own."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/mfa.sqlite3"
    return str(request.getfixturevalue("app_redis_url"))


@pytest.fixture
def app_redis_url(redis_url: str) -> Iterator[str]:
    """A `MFA_STORE` URL on the real Redis whose keys no other test shares, deleted afterwards."""
    prefix = f"test:{uuid4().hex}:"
    yield f"{redis_url}?prefix={prefix}"
    _delete_prefix(redis_url, prefix)

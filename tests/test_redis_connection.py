"""The Redis store's pipelined connection (engine/stores/redis_connection.py), against real
Redis servers: the shared one for what is safe to share, throw-away ones for passwords,
restarts and SCRIPT FLUSH."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from uuid import uuid4

import pytest
import pytest_asyncio
import redis
import redis.exceptions

from engine.errors import StoreUnavailable
from engine.stores.redis_connection import RedisConnection, Script
from tests.deployment import tool_or_skip
from tests.platform import free_port
from tests.processes import RedisServer

TIMEOUT = 2.0
QUIET = ("--save", "", "--appendonly", "no")

# KEYS: a counter. ARGV: how much to add. The counter after.
ADD = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own on the shared Redis, deleted afterwards."""
    name = f"test:{uuid4().hex}:"
    yield name
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{name}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest_asyncio.fixture
async def connection(redis_url: str) -> AsyncIterator[RedisConnection]:
    opened = RedisConnection(redis_url, timeout=TIMEOUT)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def throwaway() -> Iterator[RedisServer]:
    """A redis-server of this test's own (nothing on disk), stopped afterwards."""
    server = RedisServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_many_tasks_share_one_connection_and_each_gets_its_own_reply(
    connection: RedisConnection, prefix: str
) -> None:
    async def worker(number: int) -> list[tuple[str, object]]:
        got: list[tuple[str, object]] = []
        for step in range(20):
            token = f"{number}-{step}"
            got.append((token, await connection.execute("ECHO", token)))
            got.append((f"{number}", await connection.execute("INCR", f"{prefix}count:{number}")))
        return got

    results = await asyncio.gather(*(worker(number) for number in range(50)))

    for number, got in enumerate(results):
        echoes = [reply for token, reply in got if "-" in token]
        assert echoes == [f"{number}-{step}" for step in range(20)]
        assert [reply for token, reply in got if "-" not in token] == list(range(1, 21))
    # All of it went over one connection: Redis saw a single client id.
    ids = await asyncio.gather(*(connection.execute("CLIENT", "ID") for _ in range(20)))
    assert len(set(ids)) == 1


async def test_replies_of_every_size_and_kind_reach_their_commands_in_order(
    connection: RedisConnection, prefix: str
) -> None:
    # Large values arrive over several reads, small ones many to a read: each still finds its command.
    values = {f"{prefix}v:{size}": "x" * size + str(size) for size in (0, 1, 1000, 70_000, 300_000)}
    for key, value in values.items():
        assert await connection.execute("SET", key, value) == "OK"
    await connection.execute("RPUSH", f"{prefix}list", "a", "b", "c")

    commands: list[tuple[tuple[str, ...], object]] = []
    for round_ in range(10):
        for key, value in values.items():
            commands.append((("GET", key), value))
        commands.append((("LRANGE", f"{prefix}list", "0", "-1"), ["a", "b", "c"]))
        commands.append((("GET", f"{prefix}missing"), None))
        commands.append((("ECHO", f"r{round_}"), f"r{round_}"))
    replies = await asyncio.gather(*(connection.execute(*command) for command, _ in commands))

    assert replies == [expected for _, expected in commands]


async def test_an_error_reply_raises_as_redis_py_would_and_the_rest_go_on(
    connection: RedisConnection, prefix: str
) -> None:
    await connection.execute("SET", f"{prefix}text", "not a number")

    replies: list[object] = await asyncio.gather(
        connection.execute("ECHO", "before"),
        connection.execute("INCR", f"{prefix}text"),
        connection.execute("ECHO", "after"),
        return_exceptions=True,
    )
    before, failed, after = replies

    assert (before, after) == ("before", "after")
    assert isinstance(failed, redis.exceptions.ResponseError)
    assert "not an integer" in str(failed)
    failing = Script("return redis.error_reply('no such thing')")
    with pytest.raises(redis.exceptions.ResponseError, match="no such thing"):
        await connection.run(failing, [], [])
    assert await connection.run(ADD, [f"{prefix}n"], [5]) == 5


async def test_a_killed_connection_fails_what_is_in_flight_and_the_next_command_reconnects(
    connection: RedisConnection, redis_url: str, prefix: str
) -> None:
    first_id = await connection.execute("CLIENT", "ID")
    # A blocking read keeps the connection busy, and two commands queue behind it.
    in_flight = [
        asyncio.ensure_future(connection.execute("BLPOP", f"{prefix}never", 10)),
        asyncio.ensure_future(connection.execute("ECHO", "queued")),
        asyncio.ensure_future(connection.run(ADD, [f"{prefix}n"], [1])),
    ]
    admin = redis.Redis.from_url(redis_url)
    try:
        # Until Redis has the BLPOP blocked (what CLIENT LIST shows); bounded by a deadline.
        async with asyncio.timeout(5):
            while not any(  # noqa: ASYNC110
                client["id"] == str(first_id) and client["cmd"] == "blpop" for client in admin.client_list()
            ):
                await asyncio.sleep(0.01)
        admin.client_kill_filter(_id=first_id)

        for command in in_flight:
            with pytest.raises(StoreUnavailable):
                await command
        # Never sent again on its own: the script behind the kill did not run twice (or at all).
        assert admin.get(f"{prefix}n") is None
    finally:
        admin.close()
    assert await connection.execute("ECHO", "back") == "back"
    assert await connection.execute("CLIENT", "ID") != first_id


async def test_a_cancelled_command_keeps_its_place_in_line(connection: RedisConnection) -> None:
    assert await connection.execute("PING") == "PONG"  # connected
    given_up = asyncio.ensure_future(connection.execute("ECHO", "given up"))
    behind = [asyncio.ensure_future(connection.execute("ECHO", f"behind {n}")) for n in range(3)]
    await asyncio.sleep(0)  # all four sent (in one write), none answered yet
    given_up.cancel()

    # Its reply still comes first and is dropped; each command behind it gets its own.
    async with asyncio.timeout(TIMEOUT):  # a bound for the test: a lost reply would hang it
        assert await asyncio.gather(*behind) == ["behind 0", "behind 1", "behind 2"]
        assert await connection.execute("ECHO", "next") == "next"
    assert given_up.cancelled()


async def test_a_server_that_never_answers_is_unavailable_and_its_connection_closed() -> None:
    connections: list[asyncio.StreamReader] = []
    closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(reader)
        while await reader.read(65536):
            pass  # reads every command, answers none
        closed.set()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connection = RedisConnection(f"redis://127.0.0.1:{port}/0", timeout=0.2)
    try:
        async with asyncio.timeout(5):  # a bound for the test, not a measurement
            with pytest.raises(StoreUnavailable) as failed:
                await connection.execute("PING")
            assert isinstance(failed.value.__cause__, TimeoutError)
            await closed.wait()  # the stuck connection was closed, not left behind
            with pytest.raises(StoreUnavailable):
                await connection.execute("PING")
        assert len(connections) == 2  # the next command tried a new connection
    finally:
        await connection.close()
        server.close()
        await server.wait_closed()


async def test_a_password_and_a_database_from_the_url_are_used() -> None:
    port = free_port()
    server = RedisServer(port, arguments=(*QUIET, "--requirepass", "s3cret"))
    server.url = f"redis://:s3cret@127.0.0.1:{port}/0"
    server.start()
    try:
        connection = RedisConnection(f"redis://:s3cret@127.0.0.1:{port}/2", timeout=TIMEOUT)
        named = RedisConnection(f"redis://default:s3cret@127.0.0.1:{port}/0", timeout=TIMEOUT)
        wrong = RedisConnection(f"redis://:wrong@127.0.0.1:{port}/0", timeout=TIMEOUT)
        none = RedisConnection(f"redis://127.0.0.1:{port}/0", timeout=TIMEOUT)
        try:
            assert await connection.execute("SET", "where", "db 2") == "OK"
            assert await named.execute("PING") == "PONG"
            with pytest.raises(StoreUnavailable):
                await wrong.execute("PING")
            with pytest.raises(StoreUnavailable):
                await none.execute("PING")
        finally:
            for opened in (connection, named, wrong, none):
                await opened.close()
        check = redis.Redis(host="127.0.0.1", port=port, password="s3cret", db=2, decode_responses=True)
        try:
            assert check.get("where") == "db 2"
        finally:
            check.close()
    finally:
        server.stop()


async def test_scripts_survive_a_flush_and_a_redis_restarted_empty(throwaway: RedisServer) -> None:
    connection = RedisConnection(throwaway.url, timeout=TIMEOUT)
    try:
        assert await connection.run(ADD, ["n"], [1]) == 1
        await connection.execute("SCRIPT", "FLUSH")
        assert await connection.execute("SCRIPT", "EXISTS", ADD.sha) == [0]
        # Many at once, each meeting NOSCRIPT: each loads it and runs once.
        assert sorted(await asyncio.gather(*(connection.run(ADD, ["n"], [1]) for _ in range(10)))) == list(
            range(2, 12)
        )

        throwaway.stop()
        with pytest.raises(StoreUnavailable):
            await connection.run(ADD, ["n"], [1])
        throwaway.start()  # empty: no keys, no scripts

        assert await connection.run(ADD, ["n"], [1]) == 1
    finally:
        await connection.close()


async def test_a_closed_connection_refuses_commands(connection: RedisConnection) -> None:
    assert await connection.execute("PING") == "PONG"
    await connection.close()
    with pytest.raises(StoreUnavailable):
        await connection.execute("PING")
    await connection.close()  # twice is fine


async def test_a_command_waiting_for_the_connection_when_it_closes_is_unavailable() -> None:
    # A server that takes the connection but never answers the handshake's AUTH: the command
    # waits for the connection to be ready when the store closes (a shutdown mid-request).
    accepted = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        while await reader.read(65536):
            pass
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connection = RedisConnection(f"redis://:s3cret@127.0.0.1:{port}/0", timeout=30.0)
    try:
        async with asyncio.timeout(5):  # a bound for the test, not a measurement
            command = asyncio.create_task(connection.execute("PING"))
            await accepted.wait()
            await connection.close()
            # What every caller of the store handles; a CancelledError would look like the
            # caller's own task being cancelled.
            with pytest.raises(StoreUnavailable):
                await command
    finally:
        await connection.close()
        server.close()
        await server.wait_closed()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [tool_or_skip("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_from_the_url_as_redis_py_reads_it(certificate: tuple[Path, Path]) -> None:
    # A TLS server that answers every one-word command (PING) with PONG.
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    async def pong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while await reader.readline():  # "*1", then "$4" and "PING"
                await reader.readline()
                await reader.readline()
                writer.write(b"+PONG\r\n")
        writer.close()

    server = await asyncio.start_server(pong, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    trusted = RedisConnection(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}", timeout=TIMEOUT)
    unchecked = RedisConnection(f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none", timeout=TIMEOUT)
    untrusted = RedisConnection(f"rediss://127.0.0.1:{port}/0", timeout=TIMEOUT)
    try:
        assert await trusted.execute("PING") == "PONG"
        assert await unchecked.execute("PING") == "PONG"
        with pytest.raises(StoreUnavailable):
            await untrusted.execute("PING")  # a certificate no authority signed
    finally:
        for connection in (trusted, unchecked, untrusted):
            await connection.close()
        server.close()
        await server.wait_closed()


async def test_a_subscription_gets_what_is_published_after_it_in_order_until_closed(
    connection: RedisConnection, prefix: str
) -> None:
    subscription = await connection.subscribe(f"{prefix}events")
    # Published on the command connection right after subscribe() returned: none is missed.
    for n in range(100):
        await connection.execute("PUBLISH", f"{prefix}events", f"message {n}")
    await connection.execute("PUBLISH", f"{prefix}elsewhere", "not for it")

    async with asyncio.timeout(5):
        assert [await subscription.next() for _ in range(100)] == [f"message {n}" for n in range(100)]
        subscription.close()
        assert await subscription.next() is None
        assert await subscription.next() is None  # the end stays the end


async def test_a_lost_subscription_says_so(throwaway: RedisServer) -> None:
    connection = RedisConnection(throwaway.url, timeout=TIMEOUT)
    admin = redis.Redis.from_url(throwaway.url)
    try:
        subscription = await connection.subscribe("events")
        await connection.execute("PUBLISH", "events", "before")
        admin.client_kill_filter(_type="pubsub")

        async with asyncio.timeout(5):
            assert await subscription.next() == "before"
            for _ in range(2):
                with pytest.raises(StoreUnavailable):
                    await subscription.next()
        again = await connection.subscribe("events")  # subscribing again works at once
        await connection.execute("PUBLISH", "events", "after")
        async with asyncio.timeout(5):
            assert await again.next() == "after"
    finally:
        admin.close()
        await connection.close()


async def test_a_subscription_whose_server_stops_answering_is_lost() -> None:
    async def answers_subscribe_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"SUBSCRIBE\r\n")
        await reader.readline()  # the channel's length
        channel = (await reader.readline()).strip()
        writer.write(b"*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:1\r\n" % (len(channel), channel))
        while await reader.read(65536):
            pass  # PINGs, never answered

    server = await asyncio.start_server(answers_subscribe_only, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connection = RedisConnection(f"redis://127.0.0.1:{port}/0", timeout=0.2)
    try:
        subscription = await connection.subscribe("events", health_every=0.05)
        async with asyncio.timeout(5):  # a bound for the test, not a measurement
            with pytest.raises(StoreUnavailable) as lost:
                await subscription.next()
        assert isinstance(lost.value.__cause__, TimeoutError)
    finally:
        await connection.close()
        server.close()
        await server.wait_closed()


async def test_closing_the_connection_ends_its_subscriptions(
    connection: RedisConnection, prefix: str
) -> None:
    subscriptions = [await connection.subscribe(f"{prefix}events") for _ in range(3)]

    await connection.close()

    async with asyncio.timeout(5):
        assert [await subscription.next() for subscription in subscriptions] == [None, None, None]
    with pytest.raises(StoreUnavailable):
        await connection.subscribe(f"{prefix}events")


async def test_a_redis_out_of_memory_or_read_only_is_unavailable_not_a_bug() -> None:
    port = free_port()
    server = RedisServer(port, arguments=(*QUIET, "--maxmemory", "2mb", "--maxmemory-policy", "noeviction"))
    server.start()
    connection = RedisConnection(server.url, timeout=TIMEOUT)
    try:
        with pytest.raises(StoreUnavailable) as full:
            for number in range(1000):  # 1000 x 64 KiB: far past 2 MB
                await connection.execute("SET", f"filler:{number}", "x" * 65536)
        assert isinstance(full.value.__cause__, redis.exceptions.OutOfMemoryError)
        await connection.execute("CONFIG", "SET", "maxmemory", "0")
        await connection.execute("REPLICAOF", "127.0.0.1", str(free_port()))  # a master that is not there
        with pytest.raises(StoreUnavailable) as read_only:
            await connection.execute("SET", "after", "1")
        assert isinstance(read_only.value.__cause__, redis.exceptions.ReadOnlyError)
        with pytest.raises(redis.exceptions.ResponseError):  # a wrong command is still the caller's bug
            await connection.execute("GET", "a", "b")
    finally:
        await connection.close()
        server.stop()

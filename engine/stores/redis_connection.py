"""One pipelined connection to Redis: the Redis store's hot path (engine/stores/redis.py).

Each of the store's steps is one command or one Lua script, and redis-py spends
more CPU sending one than Redis spends running it: a pool with a lock and a
condition, a health check, an ``asyncio.timeout`` around every read. This
module does only what the store needs:

- commands packed as RESP by hiredis and written to one long-lived connection,
  any number of them in flight (from any number of tasks); those sent in the
  same turn of the event loop go out in one write (one system call, not one each);
- replies parsed by ``hiredis.Reader`` and handed to their commands in the
  order they were sent, which is the order Redis answers one connection in;
- an error reply raises what redis-py raises for it (its parser's table), so
  the store handles both clients' errors alike; one that means Redis cannot
  serve (``LOADING``, a refused password) raises StoreUnavailable;
- a lost connection fails every command in flight with StoreUnavailable, and
  the next command connects again with the URL's host, port, db, username,
  password and TLS (``rediss://`` and its ``ssl_*`` options, as redis-py reads
  them). Nothing is sent again on its own: a script may have run before the loss;
- a command unanswered for ``timeout`` seconds closes the connection, with the
  same failure: a stuck Redis is "unavailable" at once, not a hung request;
- scripts go by EVALSHA. A Redis that forgot them (restarted empty, SCRIPT
  FLUSH) answers NOSCRIPT, which ran nothing: the script is loaded and sent again.

Subscriptions (`subscribe`) each have a connection of their own, as pub/sub needs.

What it leaves to redis-py: MULTI/EXEC, pattern subscriptions, RESP3, Cluster and Sentinel.
Commands are not held back when the socket's buffer fills: the callers in flight
bound what is queued (the store's steps are small, and each waits for its reply).
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import hiredis
import redis.exceptions
from redis._parsers.base import BaseParser
from redis.asyncio.connection import SSLConnection, parse_url

from engine.errors import StoreUnavailable

Arg = str | int | float | bytes

# How often an idle subscription asks Redis for a PONG (redis-py's health check, the same).
HEALTH_CHECK_SECONDS = 30.0

_UNREACHABLE = "the Redis store cannot be reached"


class Script:
    """A Lua script, sent by its SHA1 (see `RedisConnection.run`)."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


def _pack(command: tuple[Arg, ...]) -> bytes:
    # hiredis's stubs type the tuple as one element long; it takes any length.
    packed: bytes = hiredis.pack_command(command)  # type: ignore[arg-type]
    return packed


def _unavailable(cause: BaseException | None) -> StoreUnavailable:
    failure = StoreUnavailable(_UNREACHABLE)
    failure.__cause__ = cause
    return failure


_CANNOT_SERVE = ("MISCONF ", "BUSY ", "MASTERDOWN ")


def cannot_serve(error: BaseException) -> bool:
    """Whether a Redis error says it cannot serve now, not that the command was wrong:
    redis-py's ConnectionError family (LOADING, NOAUTH...), and a Redis out of memory, a
    read-only replica, one that cannot save (MISCONF), one busy with a script, or a replica
    whose master is down."""
    if isinstance(
        error,
        (
            redis.exceptions.ConnectionError,
            redis.exceptions.OutOfMemoryError,
            redis.exceptions.ReadOnlyError,
            redis.exceptions.MasterDownError,
        ),
    ):
        return True
    return isinstance(error, redis.exceptions.ResponseError) and str(error).startswith(_CANNOT_SERVE)


def _error(reply: hiredis.ReplyError) -> Exception:
    """The exception redis-py raises for an error reply; StoreUnavailable for those that
    say Redis cannot serve now (`cannot_serve`)."""
    error: Exception = BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
    if cannot_serve(error):
        return _unavailable(error)
    return error


class _Link(asyncio.Protocol):
    """One TCP (or TLS) connection: commands go out in order and replies come back in it.

    Every command waits in ``_waiting`` with its deadline until its reply; a single
    timer watches the oldest one (the first that would be late).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(encoding="utf-8")
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._outgoing: list[bytes] = []  # sent in this turn of the loop, written at its end
        self._timer: asyncio.TimerHandle | None = None
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not asyncio.Transport subclasses, but behave as one).
        self._transport = cast(asyncio.Transport, transport)
        self.open = True

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Write one packed command; the future gets its reply."""
        if not self.open or self._transport is None:
            raise _unavailable(None)
        future = self._loop.create_future()
        deadline = self._loop.time() + self._timeout
        self._waiting.append((future, deadline))
        if not self._outgoing:
            self._loop.call_soon(self._write)
        self._outgoing.append(packed)
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._check_deadline)
        return future

    def _write(self) -> None:
        outgoing = self._outgoing
        if self.open and self._transport is not None:
            self._transport.write(b"".join(outgoing))
        outgoing.clear()  # closed meanwhile: their commands already failed

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                self._answered(reply)
        except (hiredis.ProtocolError, IndexError) as exc:
            # Not Redis's protocol, or a reply nobody asked for: nothing after it can be trusted.
            self.close(exc)

    def _answered(self, reply: Any) -> None:
        future, _ = self._waiting.popleft()
        if future.done():
            return  # its caller gave up (cancelled); the reply still had its place
        if isinstance(reply, hiredis.ReplyError):
            future.set_exception(_error(reply))
        else:
            future.set_result(reply)

    def _check_deadline(self) -> None:
        self._timer = None
        if not self._waiting:
            return
        deadline = self._waiting[0][1]
        if self._loop.time() >= deadline:
            self.close(TimeoutError(f"no reply from Redis within {self._timeout} s"))
        else:
            self._timer = self._loop.call_at(deadline, self._check_deadline)

    def close(self, cause: BaseException | None = None) -> None:
        """Close the connection; every command still waiting fails with StoreUnavailable."""
        self.open = False
        if self._transport is not None:
            self._transport.abort()
        self._fail_waiting(cause)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._fail_waiting(exc or ConnectionResetError("Redis closed the connection"))

    def _fail_waiting(self, cause: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(_unavailable(cause))


_PUSHED = frozenset({"message", "subscribe", "pong"})


class _Subscriber(_Link):
    """A connection in pub/sub mode: after the handshake's replies, Redis only pushes to it.

    Messages go to ``messages`` in order; then None once it was closed here, or
    StoreUnavailable once the connection was lost. An idle connection is pinged every
    ``health_every`` seconds: no PONG within ``timeout`` closes it as lost (a peer gone
    without a word would otherwise leave a listener waiting for ever). ``messages`` is
    not bounded: the store's one listener (the live events' hub) never waits on a message.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, health_every: float) -> None:
        super().__init__(loop, timeout)
        self.messages: asyncio.Queue[str | StoreUnavailable | None] = asyncio.Queue()
        self.subscribed: asyncio.Future[None] = loop.create_future()
        self._health_every = health_every
        self._health: asyncio.TimerHandle | None = None
        self._pong_due = False
        self._closed_here = False
        self._ended = False

    def subscribe(self, channel: str) -> None:
        assert self._transport is not None
        self._transport.write(_pack(("SUBSCRIBE", channel)))

    def _answered(self, reply: Any) -> None:
        if not (isinstance(reply, list) and reply and reply[0] in _PUSHED):
            super()._answered(reply)  # the handshake's AUTH and SELECT
        elif reply[0] == "message":
            self.messages.put_nowait(reply[2])
        elif reply[0] == "subscribe":
            if not self.subscribed.done():
                self.subscribed.set_result(None)
                self._health = self._loop.call_later(self._health_every, self._ping)
        else:
            self._pong_due = False

    def _ping(self) -> None:
        if not self.open or self._transport is None:
            return
        self._pong_due = True
        self._transport.write(_pack(("PING",)))
        self._health = self._loop.call_later(self._timeout, self._check_pong)

    def _check_pong(self) -> None:
        if self._pong_due:
            self.close(TimeoutError(f"no PONG from Redis within {self._timeout} s"))
        else:
            self._health = self._loop.call_later(self._health_every, self._ping)

    def end(self) -> None:
        """Close it from this side: ``messages`` ends with None, not a failure."""
        self._closed_here = True
        self.close()

    def _fail_waiting(self, cause: BaseException | None) -> None:
        super()._fail_waiting(cause)
        if self._health is not None:
            self._health.cancel()
            self._health = None
        if not self.subscribed.done():
            self.subscribed.set_exception(_unavailable(cause))
            self.subscribed.exception()  # retrieved: its waiter may have gone (cancelled)
        if not self._ended:
            self._ended = True
            self.messages.put_nowait(None if self._closed_here else _unavailable(cause))


class Subscription:
    """The messages published on one channel from the moment Redis confirmed SUBSCRIBE
    (see `RedisConnection.subscribe`), on a connection of its own."""

    def __init__(self, subscriber: _Subscriber) -> None:
        self._subscriber = subscriber

    async def next(self) -> str | None:
        """The next message; None once closed here. Raises StoreUnavailable once the
        connection was lost: what is published after that is not seen (pub/sub keeps
        no history), so a listener subscribes again."""
        messages = self._subscriber.messages
        message = await messages.get()
        if message is None or isinstance(message, StoreUnavailable):
            # The end stays the end for every later call.
            messages.put_nowait(None if message is None else _unavailable(message.__cause__))
            if message is not None:
                raise message
        return message

    def close(self) -> None:
        """Unsubscribe by closing the connection; `next` returns None from then on. Safe twice."""
        self._subscriber.end()


class RedisConnection:
    """Commands and scripts on one pipelined connection to the Redis at ``url``.

    ``timeout``: seconds to connect, and for each command's reply.
    Connects on first use, and again on the first use after the connection was lost.
    `subscribe` opens a connection of its own for each subscription.
    """

    def __init__(self, url: str, *, timeout: float) -> None:
        options = parse_url(url)
        self._host = str(options.get("host", "localhost"))
        self._port = int(options.get("port", 6379))
        self._hello: list[tuple[Arg, ...]] = []
        password, username = options.get("password"), options.get("username")
        if password is not None:
            self._hello.append(("AUTH", username, password) if username else ("AUTH", password))
        if int(options.get("db", 0)):
            self._hello.append(("SELECT", int(options.get("db", 0))))
        self._ssl = None
        if options.get("connection_class") is SSLConnection:
            # redis-py's reading of the URL's ssl_* options, so both clients trust the same server.
            ssl_options = {name: value for name, value in options.items() if name.startswith("ssl_")}
            self._ssl = SSLConnection(host=self._host, **ssl_options).ssl_context.get()  # type: ignore[arg-type]
        self._timeout = timeout
        self._link: _Link | None = None
        self._connecting: asyncio.Task[_Link] | None = None
        self._subscriptions: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._closed = False

    async def execute(self, *command: Arg) -> Any:
        """Send one command and return its reply as hiredis reads it (str, int, None, lists)."""
        link = self._link
        if link is None or not link.open:
            link = await self._connected()
        return await link.send(_pack(command))

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Run ``script`` with ``keys`` and ``args`` (EVALSHA); loads it once if Redis lacks it."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await self.execute(*command)
        except redis.exceptions.NoScriptError:
            # Nothing ran: Redis has not seen the script (a first use, or it restarted empty).
            await self.execute("SCRIPT", "LOAD", script.source)
            return await self.execute(*command)

    async def close(self) -> None:
        """Close the connection; commands still in flight fail with StoreUnavailable. Safe twice."""
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        link, self._link = self._link, None
        if link is not None:
            link.close()
        for subscription in list(self._subscriptions):
            subscription.close()

    async def subscribe(self, channel: str, *, health_every: float = HEALTH_CHECK_SECONDS) -> Subscription:
        """Subscribe to ``channel`` on a new connection; returns once Redis confirmed it,
        so every message published from then on is received."""
        if self._closed:
            raise StoreUnavailable("the Redis store is not open")
        loop = asyncio.get_running_loop()
        subscriber: _Subscriber | None = None
        try:
            async with asyncio.timeout(self._timeout):
                _, subscriber = await loop.create_connection(
                    lambda: _Subscriber(loop, self._timeout, health_every),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                )
                for command in self._hello:
                    await subscriber.send(_pack(command))
                subscriber.subscribe(channel)
                await subscriber.subscribed
        except (OSError, TimeoutError) as exc:
            if subscriber is not None:
                subscriber.end()
            raise _unavailable(exc) from exc
        except BaseException:
            if subscriber is not None:
                subscriber.end()
            raise
        subscription = Subscription(subscriber)
        self._subscriptions.add(subscription)
        if self._closed:  # closed while this connected: not kept
            subscription.close()
        return subscription

    async def _connected(self) -> _Link:
        if self._closed:
            raise StoreUnavailable("the Redis store is not open")
        attempt = self._connecting
        if attempt is None:
            # Every command that finds no connection waits for the same attempt.
            attempt = self._connecting = asyncio.get_running_loop().create_task(self._connect())
            attempt.add_done_callback(self._finished_connecting)
        try:
            # Shielded: a waiter that is cancelled leaves the attempt to the others.
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if attempt.cancelled() and self._closed and (task is None or not task.cancelling()):
                # `close` cancelled the attempt, not this caller's own task.
                raise StoreUnavailable("the Redis store is not open") from None
            raise

    def _finished_connecting(self, attempt: asyncio.Task[_Link]) -> None:
        self._connecting = None
        if attempt.cancelled() or attempt.exception() is not None:
            return
        if self._closed:
            attempt.result().close()  # connected just as the store closed: not kept
        else:
            self._link = attempt.result()

    async def _connect(self) -> _Link:
        loop = asyncio.get_running_loop()
        link: _Link | None = None
        try:
            async with asyncio.timeout(self._timeout):
                _, link = await loop.create_connection(
                    lambda: _Link(loop, self._timeout), self._host, self._port, ssl=self._ssl
                )
                for command in self._hello:
                    await link.send(_pack(command))
        except (OSError, TimeoutError) as exc:
            if link is not None:
                link.close(exc)
            raise _unavailable(exc) from exc
        except BaseException as exc:
            if link is not None:
                link.close(exc)
            raise
        return link

"""A small HTTP/1.1 client: keep-alive pools per origin, one total timeout, named errors.

SignalWire's REST calls are the only traffic: a few small JSON requests per
verification, to one origin, over connections kept alive between them. A
general client spends more CPU on each of those than the exchange needs, so
this one does only what they need, on asyncio's Protocol/Transport and
httptools' response parser:

- a pool per origin (scheme, host, port) of at most ``pool_size``
  connections; requests wait their turn, first come first served, when all
  are busy; an idle connection is closed after ``keepalive`` seconds; a
  connection is reused only after a complete answer that allows it (not
  ``Connection: close``, not HTTP/1.0 without keep-alive, not read until
  close) and while the server has not closed it;
- https with certificate and host name checks (the default context, or one
  given), the host name sent as SNI; DNS through the loop's ``getaddrinfo``,
  one look-up shared by the connections a pool opens together, kept five
  minutes unless a connection to its addresses fails;
- a request written in one ``transport.write``; answers with a
  ``Content-Length``, chunked or read until close, at most ``max_body``
  bytes; ``1xx`` answers skipped; at most MAX_HEAD bytes of everything else
  (the heads, chunk sizes, trailers), so a hostile answer cannot make the
  client hold or parse more than that until the timeout;
- one timeout over the whole request: waiting for a connection, connecting,
  writing and reading.

A request is never repeated here. Whatever goes wrong is one of the
``HttpError`` subclasses below, and the type says whether the request can
have reached the server: only ``ConnectFailed`` (and ``TlsFailed``) mean it
surely did not. A request that fails, times out or is cancelled once it has
a connection closes that connection (its answer may still come), so a
connection in the pool never holds an old answer and a slot is never lost.

Messages name the origin and what failed, never a header or a body.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, cast
from urllib.parse import urlsplit

if sys.platform != "win32":
    import resource

import httptools


def _pool_size() -> int:
    """Connections in flight = request rate x provider delay: 1200 at 200 calls/s (three
    requests each) with a 2 s provider, and a smaller pool makes requests queue for a
    connection. Half of the files this process may open, so the connections the agent
    serves keep the other half; at most 4000."""
    if sys.platform == "win32":
        return 1000
    files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if files == resource.RLIM_INFINITY:
        return 4000
    return max(100, min(4000, files // 2))


POOL_SIZE = _pool_size()
KEEPALIVE_SECONDS = 30.0
MAX_BODY = 1024 * 1024  # bytes; SignalWire's answers are a few hundred
# Bytes of an answer that are not its body: status lines and headers (interim answers' too),
# chunk sizes, trailers. The parser keeps a header line whole until it ends: without this
# bound a server could make the client hold megabytes (aiohttp's limit is 8190 bytes a line).
MAX_HEAD = 64 * 1024
USER_AGENT = "signalwire-mfa-agent"
CLOSE_WAIT_SECONDS = 1.0  # at most, for connections to finish closing when the client closes
# An origin's addresses are looked up once for all the connections opened within this time
# (a pool filling up would otherwise ask for each), and again after a connection fails.
DNS_TTL_SECONDS = 300.0

# host and port -> the addresses to try, in order (the loop's getaddrinfo by default).
Resolver = Callable[[str, int], Awaitable[Sequence[tuple[str, int]]]]

# A request target as sent: an absolute path and query, printable ASCII without spaces.
_TARGET = re.compile(r"/[!-~]*")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE = re.compile(r"[\t -~]*")


class HttpError(Exception):
    """A request that did not get a complete answer."""


class ConnectFailed(HttpError):
    """No connection could be opened (refused, unreachable, not resolved, the client closed):
    nothing of the request was written."""


class TlsFailed(HttpError):
    """The TLS handshake failed (an untrusted certificate, a wrong host name): nothing of the
    request was written, and trying again at once will not change the certificate."""


class ConnectionLost(HttpError):
    """The connection broke after the request was written (or while it was): it may have arrived."""


class BadResponse(HttpError):
    """The answer is not valid HTTP/1.1, or its body is larger than the client accepts."""


class RequestTimedOut(HttpError):
    """The request's timeout passed first (waiting for a connection, connecting, or the answer)."""


class Origin(NamedTuple):
    """Where connections go: the pool's key."""

    scheme: str  # "http" or "https"
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def split_url(url: str) -> tuple[Origin, str]:
    """A base URL's origin and path (without a trailing slash): ``https://h/api`` -> (h:443, "/api")."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an http or https URL with a host is needed")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("a base URL has no query, fragment or credentials")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Origin(parts.scheme, parts.hostname, port), parts.path.rstrip("/")


def render_headers(headers: Mapping[str, str]) -> bytes:
    """Header lines as written, checked once: a name or value that could split the request
    (a line break, a control character) is refused."""
    lines = []
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name) or not _HEADER_VALUE.fullmatch(value):
            raise ValueError(f"header {name!r} cannot be sent as it is")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("ascii")


@dataclass(frozen=True, slots=True)
class Response:
    """A complete answer: its status, its header lines in order (names in lower case), its body."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The last value of the header ``name`` (any case), or None."""
        wanted = name.lower().encode("ascii")
        for key, value in reversed(self.headers):
            if key == wanted:
                return value.decode("latin-1")
        return None


class HttpClient:
    """Requests over pooled keep-alive connections; see the module docstring.

    Make it inside the running loop and ``close`` it at shutdown.
    """

    def __init__(
        self,
        *,
        pool_size: int = POOL_SIZE,
        keepalive: float = KEEPALIVE_SECONDS,
        max_body: int = MAX_BODY,
        ssl_context: ssl.SSLContext | None = None,
        resolver: Resolver | None = None,
        user_agent: str = USER_AGENT,
    ) -> None:
        if pool_size < 1:
            raise ValueError("a pool needs at least one connection")
        self._loop = asyncio.get_running_loop()
        self._pool_size = pool_size
        self._keepalive = keepalive
        self._max_body = max_body
        self._ssl_context = ssl_context
        self._resolver = resolver or self._getaddrinfo
        self._agent = render_headers({"User-Agent": user_agent})
        self._pools: dict[Origin, _Pool] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"HttpClient(origins={len(self._pools)}, pool_size={self._pool_size})"

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        *,
        headers: bytes = b"",
        body: bytes | None = None,
        content_type: str | None = None,
        time_limit: float,
    ) -> Response:
        """Send one request and read its whole answer, all within ``time_limit`` seconds.

        ``target`` is the path and query as sent; ``headers`` are lines from
        ``render_headers`` (Host, User-Agent and the body's Content-Type and
        Content-Length are added here). Not for HEAD, whose answer announces a
        body it does not send. Raises an ``HttpError``; never retries.
        """
        if not _TARGET.fullmatch(target) or not method.isalpha() or method == "HEAD":
            raise ValueError("the method or the target cannot be sent as it is")
        if content_type is not None and not _HEADER_VALUE.fullmatch(content_type):
            raise ValueError("the content type cannot be sent as it is")
        pool = self._pools.get(origin)
        if pool is None:
            if self._closed:
                raise ConnectFailed(f"the client is closed ({origin})")
            pool = self._pools[origin] = _Pool(self, origin)
        head = f"{method} {target} HTTP/1.1\r\n".encode("ascii") + pool.host_line + self._agent + headers
        if body is not None:
            kind = f"Content-Type: {content_type}\r\n" if content_type else ""
            head += f"{kind}Content-Length: {len(body)}\r\n\r\n".encode("ascii") + body
        else:
            head += b"\r\n"
        try:
            async with asyncio.timeout(time_limit):
                return await pool.exchange(head)
        except TimeoutError:
            raise RequestTimedOut(f"no answer from {origin} within {time_limit:g} s") from None

    async def close(self) -> None:
        """Close every connection; waiting and later requests fail with ``ConnectFailed``."""
        self._closed = True
        closing = [pool.close() for pool in self._pools.values()]
        self._pools.clear()
        lost = [future for futures in closing for future in futures]
        if lost:
            await asyncio.wait(lost, timeout=CLOSE_WAIT_SECONDS)

    @property
    def closed(self) -> bool:
        return self._closed

    def connections(self, origin: Origin) -> int:
        """Connections to ``origin`` open or opening now, busy or idle."""
        pool = self._pools.get(origin)
        return pool.count if pool is not None else 0

    def _ssl_for(self, origin: Origin) -> ssl.SSLContext | None:
        if origin.scheme != "https":
            return None
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    async def _getaddrinfo(self, host: str, port: int) -> Sequence[tuple[str, int]]:
        infos = await self._loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return list(dict.fromkeys((str(info[4][0]), int(info[4][1])) for info in infos))

    async def _resolve(self, origin: Origin) -> Sequence[tuple[str, int]]:
        try:
            addresses = await self._resolver(origin.host, origin.port)
        except (OSError, UnicodeError) as exc:  # UnicodeError: a name no resolver can encode
            raise ConnectFailed(f"could not resolve {origin} ({type(exc).__name__})") from exc
        if not addresses:
            raise ConnectFailed(f"could not resolve {origin} (no address)")
        return addresses

    async def _connect(self, origin: Origin, addresses: Sequence[tuple[str, int]]) -> _Connection:
        """A new connection to ``origin`` at the first of ``addresses`` that answers, after TLS
        when it is https."""
        context = self._ssl_for(origin)
        failure: OSError | None = None
        for host, port in addresses:
            try:
                _, connection = await self._loop.create_connection(
                    lambda: _Connection(self._max_body),
                    host,
                    port,
                    ssl=context,
                    server_hostname=origin.host if context else None,
                )
            except ssl.SSLError as exc:  # a certificate error is one too
                raise TlsFailed(f"TLS with {origin} failed ({type(exc).__name__})") from exc
            except OSError as exc:
                failure = exc
                continue
            return connection
        assert failure is not None
        raise ConnectFailed(f"could not connect to {origin} ({type(failure).__name__})") from failure


class _Pool:
    """The connections to one origin: idle ones (oldest first), a count of all, and the
    requests waiting for one."""

    def __init__(self, client: HttpClient, origin: Origin) -> None:
        self.client = client
        self.origin = origin
        self.host_line = render_headers({"Host": _host_header(origin)})
        self.loop = client._loop
        self.size = client._pool_size
        self.keepalive = client._keepalive
        self.idle: collections.deque[_Connection] = collections.deque()
        self.count = 0  # opening, busy and idle
        # A waiter is given an idle connection, or None: the right to open one.
        self.waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self.sweep: asyncio.TimerHandle | None = None
        self.lookup: asyncio.Future[Sequence[tuple[str, int]]] | None = None  # shared by openers
        self.looked_up = 0.0

    async def exchange(self, request: bytes) -> Response:
        connection = await self.acquire()
        try:
            response = await connection.exchange(request)
        except BaseException:
            # An error, a timeout or a cancel: the answer may still come, so nobody else
            # may read from this connection.
            self.discard(connection)
            raise
        if connection.reusable:
            self.release(connection)
        else:
            self.discard(connection)
        return response

    async def acquire(self) -> _Connection:
        while self.idle:
            connection = self.idle.pop()  # the newest: the oldest ones expire
            connection.pool = None
            if not connection.closed:
                return connection
            self.count -= 1
        if self.count < self.size:
            self.count += 1
            return await self._open()
        waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
        self.waiters.append(waiter)
        try:
            given = await waiter
        except BaseException:
            if waiter.cancelled():
                # A release in the same turn of the loop may have taken it off already.
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
            elif waiter.exception() is None:  # given something just before the cancel: pass it on
                passed = waiter.result()
                if passed is None:
                    self._slot_freed()
                else:
                    self.release(passed)
            raise
        if given is not None and not given.closed:
            return given
        if given is not None:  # closed by the server on its way here: open one in its place
            given.abort()
        return await self._open()

    async def _open(self) -> _Connection:
        """Open a connection in a slot already counted; the slot is freed if it fails."""
        try:
            return await self.client._connect(self.origin, await self._addresses())
        except BaseException as exc:
            if isinstance(exc, ConnectFailed):
                self.lookup = None  # the next connection looks the name up again
            self._slot_freed()
            raise

    async def _addresses(self) -> Sequence[tuple[str, int]]:
        """The origin's addresses: one look-up for every connection opened meanwhile, kept for
        DNS_TTL_SECONDS; one opener giving up (a timeout) does not cancel it for the others."""
        lookup = self.lookup
        if lookup is None or self.loop.time() - self.looked_up > DNS_TTL_SECONDS:
            lookup = self.lookup = asyncio.ensure_future(self.client._resolve(self.origin))
            # Its error taken here too: its openers may all have given up before it fails.
            lookup.add_done_callback(lambda done: done.cancelled() or done.exception())
            self.looked_up = self.loop.time()
        return await asyncio.shield(lookup)

    def release(self, connection: _Connection) -> None:
        """A connection that finished its exchange cleanly: to a waiter, or idle."""
        if connection.closed or self.client.closed:
            self.discard(connection)
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        connection.idle_since = self.loop.time()
        connection.pool = self
        self.idle.append(connection)
        if self.sweep is None:
            self.sweep = self.loop.call_at(connection.idle_since + self.keepalive, self._expire)

    def discard(self, connection: _Connection) -> None:
        """Close a connection that must not be reused, and free its slot."""
        connection.abort()
        self._slot_freed()

    def forget(self, connection: _Connection) -> None:
        """An idle connection the server closed."""
        try:
            self.idle.remove(connection)
        except ValueError:
            return
        self._slot_freed()

    def _slot_freed(self) -> None:
        self.count -= 1
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                self.count += 1
                waiter.set_result(None)
                return

    def _expire(self) -> None:
        self.sweep = None
        deadline = self.loop.time() - self.keepalive
        while self.idle and self.idle[0].idle_since <= deadline:
            connection = self.idle.popleft()
            connection.pool = None
            connection.close()
            self.count -= 1
        if self.idle:
            self.sweep = self.loop.call_at(self.idle[0].idle_since + self.keepalive, self._expire)

    def close(self) -> list[asyncio.Future[None]]:
        """Close the idle connections and fail the waiters; busy ones close when they finish."""
        if self.sweep is not None:
            self.sweep.cancel()
            self.sweep = None
        lost = []
        while self.idle:
            connection = self.idle.popleft()
            connection.pool = None
            connection.close()
            lost.append(connection.lost)
            self.count -= 1
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectFailed(f"the client is closed ({self.origin})"))
        return lost


class _Connection(asyncio.Protocol):
    """One connection: writes a request, parses its answer, knows whether it may be reused."""

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[None] = self.loop.create_future()
        self.closed = False
        self.reusable = False
        self.idle_since = 0.0
        self.pool: _Pool | None = None  # set while idle in a pool, to be told of a close
        self.answer: asyncio.Future[Response] | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.body_size = 0
        self.received = 0  # bytes of the answer to the current request, body included
        self.headers_done = False
        self.until_close = True  # the body ends when the connection does: no length, not chunked
        self.error: HttpError | None = None

    # The exchange.

    async def exchange(self, request: bytes) -> Response:
        assert self.transport is not None and self.answer is None
        if self.closed:
            raise ConnectionLost("the connection closed before the request was written")
        self.answer = self.loop.create_future()
        self.reusable = False
        self.received = self.body_size = 0
        self.transport.write(request)
        try:
            return await self.answer
        finally:
            self.answer = None

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, error: HttpError) -> None:
        self.abort()
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(error)

    # asyncio.Protocol.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not an asyncio.Transport subclass, but quacks like one).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.answer is None or self.answer.done():
            self._fail(BadResponse("data arrived with no request waiting for it"))
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadResponse("the server switched protocols"))
        except httptools.HttpParserError:
            self._fail(self.error or BadResponse("the answer is not valid HTTP/1.1"))
        self.received += len(data)
        if self.received - self.body_size > MAX_HEAD and not self.closed:
            self._fail(BadResponse(f"the answer's head is larger than {MAX_HEAD} bytes"))

    def eof_received(self) -> bool | None:
        return False  # close: a half-closed connection cannot carry another request

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.lost.done():
            self.lost.set_result(None)
        if self.pool is not None:
            pool, self.pool = self.pool, None
            pool.forget(self)
        answer = self.answer
        if answer is None or answer.done():
            return
        if self.headers_done and self.until_close and self.error is None:
            self._complete()
            return
        answer.set_exception(self.error or ConnectionLost("the connection closed before the whole answer"))

    # httptools.HttpResponseParser's callbacks.

    def on_message_begin(self) -> None:
        if self.answer is None or self.answer.done():
            self.error = BadResponse("an answer arrived with no request waiting for it")
            raise self.error
        self.headers = []
        self.body = []
        self.headers_done = False
        self.until_close = True

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" or name == b"transfer-encoding":
            self.until_close = False
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.max_body:
            self.error = BadResponse(f"the answer's body is larger than {self.max_body} bytes")
            raise self.error
        self.body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            return  # an interim answer: the final one follows on the same connection
        self.reusable = self.parser.should_keep_alive()
        self._complete()

    def _complete(self) -> None:
        assert self.answer is not None
        status = self.parser.get_status_code()
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.answer.set_result(Response(status, tuple(self.headers), body))
        self.headers, self.body = [], []


def _host_header(origin: Origin) -> str:
    host = f"[{origin.host}]" if ":" in origin.host else origin.host
    default = 443 if origin.scheme == "https" else 80
    return host if origin.port == default else f"{host}:{origin.port}"


__all__ = [
    "KEEPALIVE_SECONDS",
    "MAX_BODY",
    "MAX_HEAD",
    "POOL_SIZE",
    "BadResponse",
    "ConnectFailed",
    "ConnectionLost",
    "HttpClient",
    "HttpError",
    "Origin",
    "RequestTimedOut",
    "Resolver",
    "Response",
    "TlsFailed",
    "split_url",
]

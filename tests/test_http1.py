"""The HTTP/1.1 client SignalWire's REST calls go through (engine/http1.py), against real servers
on 127.0.0.1: an aiohttp app for well-behaved HTTP, raw asyncio servers for the misbehaving kinds,
and a TLS server with a certificate made for the test."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import shutil
import socket
import ssl
import subprocess
import sys
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.platform != "win32":
    import resource

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from engine import http1
from engine.errors import ProviderUnavailable
from engine.http1 import (
    MAX_BODY,
    BadResponse,
    ConnectFailed,
    ConnectionLost,
    HttpClient,
    Origin,
    RequestTimedOut,
    Response,
    TlsFailed,
    render_headers,
    split_url,
)
from engine.signalwire_rest import RequestNotSent, SignalWireRest

WAIT = 5.0  # seconds a test waits for something that happens at once, before it fails


@pytest.fixture(params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Every test on asyncio's loop and on uvloop, which the agent serves on: their transports
    differ (uvloop's are not asyncio.Transport subclasses), and this client talks to them directly."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")  # not on Windows
        policy: asyncio.AbstractEventLoopPolicy = uvloop.EventLoopPolicy()
        return policy
    return asyncio.DefaultEventLoopPolicy()


@contextlib.asynccontextmanager
async def client(**options: Any) -> AsyncIterator[HttpClient]:
    http = HttpClient(**options)
    try:
        yield http
    finally:
        await http.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def until(condition: Callable[[], bool]) -> None:
    """Wait for something the client notices on its own (a close by the server), within WAIT."""
    async with asyncio.timeout(WAIT):
        while not condition():  # noqa: ASYNC110 (nothing to wait on: the client's state)
            await asyncio.sleep(0.01)


async def get(http: HttpClient, origin: Origin, target: str = "/", seconds: float = WAIT) -> Response:
    return await http.request(origin, "GET", target, time_limit=seconds)


# == An aiohttp app: well-behaved HTTP/1.1 ==


@dataclass
class App:
    """An aiohttp server that tells which connection carried each request."""

    origin: Origin = field(init=False)
    peers: list[int] = field(default_factory=list)  # the client's port, per request
    transports: list[asyncio.Transport] = field(default_factory=list)
    open_now: int = 0
    most_open: int = 0

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/json", self.json)
        app.router.add_post("/echo", self.echo)
        app.router.add_get("/chunked", self.chunked)
        app.router.add_get("/close", self.close)
        app.router.add_get("/slow", self.slow)
        return app

    def seen(self, request: web.Request) -> None:
        assert request.transport is not None
        self.peers.append(request.transport.get_extra_info("peername")[1])
        self.transports.append(request.transport)  # type: ignore[arg-type]

    async def json(self, request: web.Request) -> web.Response:
        self.seen(request)
        return web.json_response({"n": len(self.peers)}, headers={"RETRY-after": "7"})

    async def echo(self, request: web.Request) -> web.Response:
        self.seen(request)
        body = (await request.read()).decode()
        return web.json_response(
            {"type": request.content_type, "body": body, "agent": request.headers["User-Agent"]}
        )

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        self.seen(request)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b'{"parts":', b"[1,", b"2,3]}"):
            await response.write(part)
        await response.write_eof()
        return response

    async def close(self, request: web.Request) -> web.Response:
        self.seen(request)
        response = web.json_response({"closing": True})
        response.force_close()  # Connection: close
        return response

    async def slow(self, request: web.Request) -> web.Response:
        # Long enough for every request of a burst to be in flight together.
        self.seen(request)
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        await asyncio.sleep(0.005)
        self.open_now -= 1
        return web.json_response({"at": request.query["i"]})


@pytest.fixture
async def app(aiohttp_server: Any) -> App:
    app = App()
    server: TestServer = await aiohttp_server(app.application(), host="127.0.0.1")
    app.origin = Origin("http", "127.0.0.1", int(server.port or 0))
    return app


async def test_sequential_requests_share_one_kept_alive_connection(app: App) -> None:
    async with client() as http:
        answers = [json.loads((await get(http, app.origin, "/json")).body) for _ in range(20)]
        assert answers == [{"n": n} for n in range(1, 21)]
        assert len(set(app.peers)) == 1
        assert http.connections(app.origin) == 1


async def test_headers_are_read_in_any_case_and_bodies_are_sent_with_their_type(app: App) -> None:
    async with client() as http:
        response = await get(http, app.origin, "/json")
        assert response.status == 200
        assert response.header("Retry-After") == "7"
        assert response.header("retry-AFTER") == "7"
        assert response.header("X-Missing") is None

        posted = await http.request(
            app.origin, "POST", "/echo", body=b"a=1&b=%2B2", content_type="application/x-www-form-urlencoded",
            time_limit=WAIT,
        )  # fmt: skip
        assert json.loads(posted.body) == {
            "type": "application/x-www-form-urlencoded",
            "body": "a=1&b=%2B2",
            "agent": "signalwire-mfa-agent",
        }


async def test_a_chunked_answer_is_read_whole_and_its_connection_reused(app: App) -> None:
    async with client() as http:
        for _ in range(3):
            assert json.loads((await get(http, app.origin, "/chunked")).body) == {"parts": [1, 2, 3]}
        assert len(set(app.peers)) == 1


async def test_an_answer_with_connection_close_is_not_reused(app: App) -> None:
    async with client() as http:
        await get(http, app.origin, "/close")
        await get(http, app.origin, "/json")
        await get(http, app.origin, "/json")
    first, second, third = app.peers
    assert first != second == third


async def test_a_pooled_connection_the_server_closed_is_replaced(app: App) -> None:
    async with client() as http:
        await get(http, app.origin, "/json")
        app.transports[0].close()  # the server gives up on the idle connection
        await until(lambda: http.connections(app.origin) == 0)  # and the client has seen it

        response = await get(http, app.origin, "/json")

    assert response.status == 200
    assert len(set(app.peers)) == 2


async def test_200_parallel_requests_over_a_pool_of_3_all_complete_on_3_connections(app: App) -> None:
    async with client(pool_size=3) as http:
        answers = await asyncio.gather(*(get(http, app.origin, f"/slow?i={i}") for i in range(200)))
        assert [json.loads(answer.body)["at"] for answer in answers] == [str(i) for i in range(200)]
        assert http.connections(app.origin) <= 3
    assert len(set(app.peers)) <= 3
    assert app.most_open <= 3


# == Raw servers: whatever a broken server or network does ==


Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A TCP server on 127.0.0.1 that reads each request's head and body, then lets ``answer``
    write whatever it likes; it keeps the requests it read and counts connections."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.connections = 0
        self.hung_up = asyncio.Event()  # a client closed a connection
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Origin:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return Origin("http", "127.0.0.1", self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.answer(reader, writer)
            if not writer.is_closing():
                await reader.read()  # until the client hangs up
                self.hung_up.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.hung_up.set()
        finally:
            writer.close()


def answering(*answers: bytes, close: bool = False) -> Callable[[RawServer], Answer]:
    """Each request on a connection gets the next of ``answers``, as is; then the connection
    is closed when ``close``, else kept."""

    def make(server: RawServer) -> Answer:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for raw in answers:
                await server.read_request(reader)
                writer.write(raw)
                await writer.drain()
            if close:
                writer.close()

        return answer

    return make


@contextlib.asynccontextmanager
async def raw(make: Callable[[RawServer], Answer]) -> AsyncIterator[tuple[RawServer, Origin]]:
    server = RawServer(lambda reader, writer: make(server)(reader, writer))
    async with server as origin:
        yield server, origin


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_the_request_is_written_as_documented() -> None:
    async with raw(answering(OK)) as (server, origin), client() as http:
        await http.request(
            origin,
            "POST",
            "/api/x?y=1",
            headers=render_headers({"Authorization": "Basic abc", "Accept": "application/json"}),
            body=b'{"a":1}',
            content_type="application/json",
            time_limit=WAIT,
        )
    assert server.requests == [
        b"POST /api/x?y=1 HTTP/1.1\r\n"
        + f"Host: 127.0.0.1:{origin.port}\r\n".encode()
        + b"User-Agent: signalwire-mfa-agent\r\n"
        b"Authorization: Basic abc\r\nAccept: application/json\r\n"
        b"Content-Type: application/json\r\nContent-Length: 7\r\n\r\n"
        b'{"a":1}'
    ]


def test_what_could_split_a_request_is_refused() -> None:
    with pytest.raises(ValueError):
        render_headers({"X-A": "1\r\nX-Injected: 2"})
    with pytest.raises(ValueError):
        render_headers({"X A": "1"})
    assert split_url("https://space.signalwire.com") == (Origin("https", "space.signalwire.com", 443), "")
    assert split_url("http://127.0.0.1:8080/base/") == (Origin("http", "127.0.0.1", 8080), "/base")


async def test_an_unsendable_target_is_refused_before_anything_is_written() -> None:
    async with raw(answering(OK)) as (server, origin), client() as http:
        for target in ("/a b", "/a\r\nX: y", "relative", "/é"):
            with pytest.raises(ValueError):
                await get(http, origin, target)
        with pytest.raises(ValueError):
            await http.request(origin, "HEAD", "/", time_limit=WAIT)
        with pytest.raises(ValueError):
            await http.request(origin, "POST", "/", body=b"", content_type="a\r\nX: y", time_limit=WAIT)
    assert server.connections == 0


async def test_a_server_that_never_answers_is_a_timeout_and_frees_the_slot() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        await reader.read()  # nothing, ever, until the client hangs up
        server.hung_up.set()

    server = RawServer(silent)
    async with server as origin, client(pool_size=1) as http:
        with pytest.raises(RequestTimedOut):
            await get(http, origin, seconds=0.2)
        async with asyncio.timeout(WAIT):
            await server.hung_up.wait()  # the late answer can never reach another request
            with pytest.raises(RequestTimedOut):
                await get(http, origin, seconds=0.2)  # the one slot was given back
    assert server.connections == 2


async def test_a_slow_drip_counts_against_the_one_timeout() -> None:
    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
        while True:  # a byte at a time, never done: each read succeeds, the whole is too slow
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.01)

    server = RawServer(drip)
    async with server as origin, client() as http:
        with pytest.raises(RequestTimedOut):
            await get(http, origin, seconds=0.3)


async def test_an_answer_dripped_a_byte_at_a_time_is_read_whole() -> None:
    answer = b"HTTP/1.1 200 OK\r\nretry-after: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"

    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        for byte in answer:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0)
        await server.read_request(reader)
        writer.write(OK)

    server = RawServer(drip)
    async with server as origin, client() as http:
        response = await get(http, origin)
        assert (response.status, response.header("Retry-After"), response.body) == (200, "3", b"hello")
        assert (await get(http, origin)).body == b"ok"  # on the same connection
    assert server.connections == 1


async def test_a_refused_connection_was_not_sent() -> None:
    async with client() as http:
        with pytest.raises(ConnectFailed):
            await get(http, Origin("http", "127.0.0.1", closed_port()))
        rest = SignalWireRest(http, f"http://127.0.0.1:{closed_port()}", "project", "token", WAIT)
        with pytest.raises(RequestNotSent) as raised:
            await rest.post_json("/api/relay/rest/mfa/sms", {"to": "+15551234567"})
    assert raised.value.kind == "connection"


async def test_a_name_that_does_not_resolve_was_not_sent() -> None:
    async def nowhere(host: str, port: int) -> list[tuple[str, int]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async with client(resolver=nowhere) as http:
        with pytest.raises(ConnectFailed):
            await get(http, Origin("https", "space.invalid", 443))


async def test_a_host_name_no_resolver_can_encode_was_not_sent() -> None:
    async with client() as http:  # the loop's own resolver: a label over 63 letters is a UnicodeError
        with pytest.raises(ConnectFailed):
            await get(http, Origin("https", "x" * 64 + ".example.com", 443))


async def test_a_look_up_that_fails_after_its_requests_gave_up_leaves_no_error_unheard() -> None:
    unheard: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: unheard.append(context))
    answer = asyncio.Event()

    async def slow_failure(host: str, port: int) -> list[tuple[str, int]]:
        await answer.wait()
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    async with client(resolver=slow_failure) as http:
        with pytest.raises(RequestTimedOut):
            await get(http, Origin("https", "space.example", 443), seconds=0.05)
        answer.set()
        for _ in range(5):
            await asyncio.sleep(0)
        gc.collect()
    assert not unheard


async def test_garbage_for_a_status_line_is_a_bad_response() -> None:
    async with raw(answering(b"SMTP ready\r\n\r\n")) as (_, origin), client() as http:
        with pytest.raises(BadResponse):
            await get(http, origin)
        rest = SignalWireRest(http, f"http://127.0.0.1:{origin.port}", "project", "token", WAIT)
        with pytest.raises(ProviderUnavailable) as raised:
            await rest.get_json("/api/x")
        assert raised.value.kind == "bad_response"


async def test_a_connection_closed_mid_body_is_lost_not_a_short_answer() -> None:
    cut = b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial":'
    async with raw(answering(cut, close=True)) as (_, origin), client() as http:
        with pytest.raises(ConnectionLost):
            await get(http, origin)
        rest = SignalWireRest(http, f"http://127.0.0.1:{origin.port}", "project", "token", WAIT)
        with pytest.raises(ProviderUnavailable) as raised:
            await rest.get_json("/api/x")
        assert raised.value.kind == "connection"
        assert not isinstance(raised.value, RequestNotSent)


async def test_a_connection_closed_before_any_answer_is_lost() -> None:
    async with raw(answering(b"", close=True)) as (_, origin), client() as http:
        with pytest.raises(ConnectionLost):
            await get(http, origin)


async def test_a_body_over_the_cap_is_a_bad_response_and_closes_the_connection() -> None:
    big = b"x" * (MAX_BODY + 1)
    for answer in (
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % len(big) + big + b"\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n" + big,
    ):
        async with raw(answering(answer)) as (server, origin), client() as http:
            with pytest.raises(BadResponse):
                await get(http, origin)
            async with asyncio.timeout(WAIT):
                await server.hung_up.wait()
            assert http.connections(origin) == 0


async def test_a_body_up_to_the_cap_is_read() -> None:
    body = b"y" * MAX_BODY
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    async with raw(answering(answer)) as (_, origin), client() as http:
        assert (await get(http, origin)).body == body


async def test_a_body_read_until_close_is_whole_and_its_connection_not_reused() -> None:
    until_close = answering(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", close=True)
    async with raw(until_close) as (server, origin), client() as http:
        assert (await get(http, origin)).body == b"until the end"
        assert http.connections(origin) == 0
        assert (await get(http, origin)).body == b"until the end"
    assert server.connections == 2


async def test_http_1_0_without_keep_alive_is_not_reused() -> None:
    answer = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with raw(answering(answer, answer)) as (server, origin), client() as http:
        await get(http, origin)
        await get(http, origin)
    assert server.connections == 2


async def test_interim_answers_are_skipped() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK
    async with raw(answering(answer, OK)) as (server, origin), client() as http:
        first = await get(http, origin)
        assert (first.status, first.body, first.header("Link")) == (200, b"ok", None)
        assert (await get(http, origin)).body == b"ok"
    assert server.connections == 1


async def test_bytes_after_an_answer_spoil_its_connection_not_the_next_answer() -> None:
    spoiled = OK + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"  # in one write
    async with raw(answering(spoiled)) as (server, origin), client() as http:
        assert (await get(http, origin)).body == b"ok"
        assert (await get(http, origin)).body == b"ok"
    assert server.connections == 2


# == Hostile answers: what one answer may make the client hold or do is bounded ==


HOSTILE_BYTES = 8 * 1024 * 1024  # sent by a hostile server, far more than any answer may take


def endless(start: bytes, unit: bytes) -> Callable[[RawServer], Answer]:
    """An answer that begins with ``start`` and repeats ``unit`` for HOSTILE_BYTES (as fast as
    the client reads), then stalls: the client must give up long before its timeout."""

    def make(server: RawServer) -> Answer:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(start)
            block = unit * max(1, 65536 // len(unit))
            for _ in range(HOSTILE_BYTES // len(block)):
                writer.write(block)
                await writer.drain()

        return answer

    return make


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("start", "unit"),
    [
        pytest.param(b"HTTP/1.1 200 OK\r\n", b"X-A: 1\r\n", id="headers-without-end"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX-Big: ", b"a", id="a-header-line-of-megabytes"),
        pytest.param(b"HTTP/1.1 200 OK\r\n", b"X", id="a-header-name-of-megabytes"),
        pytest.param(CHUNKED + b"2\r\nok\r\n0\r\n", b"X-T: 1\r\n", id="trailers-without-end"),
        pytest.param(b"", b"HTTP/1.1 100 Continue\r\n\r\n", id="interim-answers-without-end"),
        pytest.param(CHUNKED, b"1\r\nx\r\n", id="one-byte-chunks-without-end"),
    ],
)
async def test_an_answer_that_never_ends_its_head_is_a_bad_response_in_bounded_memory(
    start: bytes, unit: bytes
) -> None:
    async with raw(endless(start, unit)) as (server, origin), client() as http:
        tracemalloc.start()
        try:
            with pytest.raises(BadResponse):  # not a timeout: the client stopped reading
                await get(http, origin, seconds=30.0)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        async with asyncio.timeout(WAIT):
            await server.hung_up.wait()
        assert http.connections(origin) == 0
    assert peak < 4 * 1024 * 1024


async def test_a_json_body_nested_too_deep_to_read_is_a_bad_response() -> None:
    nested = b"[" * 100_000
    deep = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(nested) + nested
    refused = b"HTTP/1.1 422 Unprocessable\r\nContent-Length: %d\r\n\r\n" % len(nested) + nested
    async with raw(answering(deep, refused)) as (_, origin), client() as http:
        rest = SignalWireRest(http, f"http://127.0.0.1:{origin.port}", "project", "token", WAIT)
        with pytest.raises(ProviderUnavailable) as raised:
            await rest.get_json("/api/x")
        assert raised.value.kind == "bad_response"
        assert await rest.get_json("/api/x") == (422, {})  # the status speaks; the body reads as {}


# == Cancellation ==


async def test_a_cancelled_request_closes_its_connection_and_the_pool_still_serves() -> None:
    arrived = asyncio.Event()
    release = asyncio.Event()

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_request(reader)
            if len(server.requests) == 1:
                arrived.set()
                await release.wait()
            writer.write(OK)
            await writer.drain()

    server = RawServer(held)
    async with server as origin, client(pool_size=1) as http:
        request = asyncio.create_task(get(http, origin))
        async with asyncio.timeout(WAIT):
            await arrived.wait()
            waiting = asyncio.create_task(get(http, origin))  # queued for the pool's one connection
            await asyncio.sleep(0)
            waiting.cancel()
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            with pytest.raises(asyncio.CancelledError):
                await waiting
            release.set()  # the first answer comes now, to a connection nobody reads any more
            assert (await get(http, origin)).body == b"ok"
            assert (await get(http, origin)).body == b"ok"
        assert http.connections(origin) == 1
    assert server.connections == 2


async def test_an_idle_connection_is_closed_after_the_keepalive() -> None:
    async with raw(answering(OK)) as (server, origin), client(keepalive=0.05) as http:
        await get(http, origin)
        async with asyncio.timeout(WAIT):
            await server.hung_up.wait()
        assert http.connections(origin) == 0
        assert (await get(http, origin)).body == b"ok"  # a new connection serves the next request
    assert server.connections == 2


async def test_connections_opened_together_share_one_look_up_and_a_refusal_asks_again(app: App) -> None:
    looked_up: list[str] = []
    ports = [closed_port(), app.origin.port]

    async def resolver(host: str, port: int) -> list[tuple[str, int]]:
        looked_up.append(host)
        await asyncio.sleep(0)  # an answer that takes a turn of the loop, as a real one does
        return [("127.0.0.1", ports[0])]

    async with client(pool_size=10, resolver=resolver) as http:
        origin = Origin("http", "signalwire.test", app.origin.port)
        with pytest.raises(ConnectFailed):
            await get(http, origin, "/slow?i=0")
        ports.pop(0)
        answers = await asyncio.gather(*(get(http, origin, f"/slow?i={i}") for i in range(10)))
    assert [json.loads(answer.body)["at"] for answer in answers] == [str(i) for i in range(10)]
    assert len(set(app.peers)) == 10  # ten connections, opened together
    assert looked_up == ["signalwire.test", "signalwire.test"]  # the refusal's, then one for all ten


async def test_a_closed_client_closes_its_connections_and_opens_no_more() -> None:
    async with raw(answering(OK)) as (server, origin):
        http = HttpClient()
        await get(http, origin)
        await http.close()
        async with asyncio.timeout(WAIT):
            await server.hung_up.wait()
        with pytest.raises(ConnectFailed):
            await get(http, origin)
    assert server.connections == 1


async def test_a_request_cancelled_as_it_is_handed_a_connection_passes_it_on() -> None:
    waiting: list[asyncio.Task[Any]] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        waiting.append(asyncio.create_task(get(http, origin)))  # queued behind the first request
        await asyncio.sleep(0)
        writer.write(OK)
        while True:
            await server.read_request(reader)
            writer.write(OK)

    server = RawServer(answer)
    async with server as origin, client(pool_size=1) as http:
        await get(http, origin)
        # The first request's end handed its connection to the waiting one, which has not run yet.
        waiting[0].cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting[0]
        assert (await get(http, origin, seconds=1.0)).body == b"ok"  # the connection was not lost
    assert server.connections == 1


async def test_requests_cancelled_together_with_the_one_they_wait_for_are_cancelled() -> None:
    # What timeouts do to a burst against a provider that stalls: the request holding the
    # connection and the one waiting for it are cancelled in the same turn of the loop.
    arrived = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        arrived.set()
        await reader.read()

    server = RawServer(stall)
    async with server as origin, client(pool_size=1) as http:
        holding = asyncio.create_task(get(http, origin))
        async with asyncio.timeout(WAIT):
            await arrived.wait()
        waiting = asyncio.create_task(get(http, origin))
        await asyncio.sleep(0)  # queued for the pool's one connection
        holding.cancel()  # frees the slot before the waiting request runs again
        waiting.cancel()
        for task in (holding, waiting):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert http.connections(origin) == 0
        with pytest.raises(RequestTimedOut):  # the slot is free and counted right
            await get(http, origin, seconds=0.1)


async def test_a_burst_against_a_server_that_stalls_times_out_within_the_pool_and_leaves_nothing() -> None:
    open_now = most_open = 0
    hung_up = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, most_open
        open_now += 1
        most_open = max(most_open, open_now)
        try:
            await reader.read()  # takes the request, never answers
        finally:
            open_now -= 1
            if open_now == 0:
                hung_up.set()
            writer.close()

    server = await asyncio.start_server(stall, "127.0.0.1", 0, backlog=1024)
    origin = Origin("http", "127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        async with client(pool_size=50) as http:
            outcomes = await asyncio.gather(
                *(get(http, origin, seconds=0.2) for _ in range(1000)), return_exceptions=True
            )
            assert {type(outcome) for outcome in outcomes} == {RequestTimedOut}
            assert http.connections(origin) == 0
            async with asyncio.timeout(WAIT):
                await hung_up.wait()  # every connection it opened was closed
        assert most_open <= 50
    finally:
        server.close()


async def test_requests_waiting_for_a_slot_get_it_in_turn() -> None:
    async with raw(answering(OK, OK, OK, OK, OK)) as (server, origin), client(pool_size=1) as http:
        answers = await asyncio.gather(*(get(http, origin, f"/{n}") for n in range(5)))
    assert [answer.body for answer in answers] == [b"ok"] * 5
    assert [request.split(b" ")[1] for request in server.requests] == [b"/0", b"/1", b"/2", b"/3", b"/4"]
    assert server.connections == 1


# == TLS, with a certificate made for the test ==


@dataclass
class Certificate:
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for localhost, from the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed: the TLS tests need it to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    made = Certificate(folder / "cert.pem", folder / "key.pem")
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(made.key), "-out", str(made.cert),
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return made


@contextlib.asynccontextmanager
async def tls_app(certificate: Certificate) -> AsyncIterator[int]:
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(certificate.cert, certificate.key)
    application = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"tls": request.secure})

    application.router.add_get("/hello", hello)
    runner = web.AppRunner(application)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_side)
    await site.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


async def to_loopback(host: str, port: int) -> list[tuple[str, int]]:
    return [("127.0.0.1", port)]


async def test_https_with_a_trusted_certificate_checks_and_answers(certificate: Certificate) -> None:
    trusting = ssl.create_default_context(cafile=str(certificate.cert))
    async with tls_app(certificate) as port, client(ssl_context=trusting, resolver=to_loopback) as http:
        origin, _ = split_url(f"https://localhost:{port}")
        for _ in range(3):
            response = await get(http, origin, "/hello")
            assert json.loads(response.body) == {"tls": True}
        assert http.connections(origin) == 1


async def test_an_untrusted_certificate_fails_tls_and_is_a_connection_fault(certificate: Certificate) -> None:
    async with tls_app(certificate) as port, client(resolver=to_loopback) as http:  # the system's CAs
        with pytest.raises(TlsFailed):
            await get(http, Origin("https", "localhost", port), "/hello")
        rest = SignalWireRest(http, f"https://localhost:{port}", "project", "token", WAIT)
        with pytest.raises(ProviderUnavailable) as raised:
            await rest.get_json("/hello")
    assert raised.value.kind == "connection"
    assert not isinstance(raised.value, RequestNotSent)


async def test_a_certificate_for_another_name_fails_tls(certificate: Certificate) -> None:
    trusting = ssl.create_default_context(cafile=str(certificate.cert))
    async with tls_app(certificate) as port, client(ssl_context=trusting, resolver=to_loopback) as http:
        with pytest.raises(TlsFailed):
            await get(http, Origin("https", "space.signalwire.test", port), "/hello")


@pytest.mark.skipif(sys.platform == "win32", reason="no RLIMIT_NOFILE")
def test_the_pool_takes_half_the_files_the_process_may_open_within_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for soft, size in ((1024, 512), (20_000, 4000), (150, 100), (resource.RLIM_INFINITY, 4000)):
        monkeypatch.setattr(http1.resource, "getrlimit", lambda _kind, soft=soft: (soft, soft))
        assert http1._pool_size() == size, soft

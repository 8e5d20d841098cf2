"""The HTTP edge (`server/`): what every connection and request passes before any route.

Credentials before any body; bodies and WebSocket messages capped; a request head
that takes too long, or one client address holding too many connections, closed;
text that UTF-8 cannot carry refused as bad input. Requests here are written on raw
sockets where the test needs to control what is sent and when, and bodies are
streamed from generators, so no test holds a large body itself.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server import WS_MAX_MESSAGE_BYTES
from server.connections import check_uvicorn
from tests.platform import (
    PASSWORD,
    USER,
    FakePlatform,
    RunningAgent,
    read_outbox,
    serve_agent,
    settings_for,
)
from tests.processes import AgentProcess

CALLER = "+12025550143"
CAP = 16_384  # the smallest MFA_MAX_BODY_BYTES allowed, so the bodies here stay small
DEADLINE = 10.0
MIB = 1024 * 1024
GOOD = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
WRONG = "Basic " + base64.b64encode(f"{USER}:not-the-password".encode()).decode()

# == a raw HTTP/1.1 client: the test decides what is sent, and sees what comes back when ==


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes
    seconds: float  # from the end of the request head to the whole answer
    sent: int  # body bytes written before the answer came (or the server stopped taking them)
    closed: bool  # the server closed the connection after answering

    def json(self) -> Any:
        return json.loads(self.body)


def junk(size: int, piece: int = 64 * 1024) -> Iterator[bytes]:
    """``size`` bytes in pieces, made as they are sent: a 200 MB body never exists in the test."""
    chunk = b"x" * piece
    while size > 0:
        yield chunk if size >= piece else chunk[:size]
        size -= piece


def chunked(pieces: Iterable[bytes], *, finish: bool = True) -> Iterator[bytes]:
    """The pieces in HTTP/1.1 chunked framing, with the last chunk only if ``finish``."""
    for piece in pieces:
        yield b"%x\r\n" % len(piece) + piece + b"\r\n"
    if finish:
        yield b"0\r\n\r\n"


async def connect(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def receive(sock: socket.socket) -> bytes:
    """The next bytes, or b"" once the server has closed (a reset counts as closed)."""
    try:
        return await asyncio.get_running_loop().sock_recv(sock, 65536)
    except (ConnectionResetError, BrokenPipeError):
        return b""


async def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes the connection within ``seconds`` (anything it sends is skipped)."""
    try:
        async with asyncio.timeout(seconds):
            while await receive(sock):
                pass
    except TimeoutError:
        return False
    return True


async def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        more = await receive(sock)
        if not more:
            raise ConnectionError(f"closed before an answer: {data!r}")
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        more = await receive(sock)
        if not more:
            raise ConnectionError(f"closed in the middle of an answer: {data!r}")
        body += more
    return int(status_line.split()[1]), headers, body


async def exchange(
    port: int,
    method: str,
    path: str,
    body: Iterable[bytes] = (),
    *,
    length: int | None = None,
    authorization: str | None = GOOD,
    headers: dict[str, str] | None = None,
) -> Answer:
    """One request on a new connection: its head, then ``body`` streamed until the server answers.

    ``length`` is the Content-Length sent; without it the body goes chunked (pass pieces
    already framed with `chunked`). The body stops as soon as the answer is in, or when the
    server stops reading it.
    """
    loop = asyncio.get_running_loop()
    sock = await connect(port)
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: application/json"]
    if authorization:
        lines.append(f"Authorization: {authorization}")
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    sent = 0

    async def send_body() -> None:
        nonlocal sent
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            for piece in body:
                await loop.sock_sendall(sock, piece)
                sent += len(piece)

    try:
        await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode())
        started = time.monotonic()
        sender = asyncio.create_task(send_body())
        try:
            async with asyncio.timeout(DEADLINE):
                status, answer_headers, answer_body = await read_answer(sock)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        seconds = time.monotonic() - started
        closed = answer_headers.get("connection") == "close" and await closed_within(sock, DEADLINE)
        return Answer(status, answer_headers, answer_body, seconds, sent, closed)
    finally:
        sock.close()


# == an agent with a small body cap ==


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[RunningAgent]:
    async with serve_agent(settings_for(tmp_path, mfa_max_body_bytes=CAP)) as running:
        yield running


def port_of(agent: RunningAgent) -> int:
    return agent.settings.port


async def call_urls(agent: RunningAgent, http: aiohttp.ClientSession) -> FakePlatform:
    platform = FakePlatform(http, agent.base_url, agent.auth, caller_id_num=CALLER)
    await platform.start_call()
    return platform


def path_of(url: str) -> str:
    """A function URL's path and query (its credentials go in a header here)."""
    return "/" + url.split("/", 3)[3]


def api_error(answer: Answer, status: int, code: str) -> None:
    assert answer.status == status, answer
    assert answer.headers["content-type"] == "application/json", answer
    body = answer.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"], body


def spoken(answer: Answer) -> str:
    """A SWAIG answer: HTTP 200 and a response the model can say."""
    assert answer.status == 200, answer
    text = answer.json()["response"]
    assert isinstance(text, str) and text
    return str(text)


# == credentials before any body ==


async def test_a_body_is_not_read_before_the_credentials_are_checked(agent: RunningAgent) -> None:
    port = port_of(agent)
    # The head announces a body that never comes: only an edge that refuses first can answer.
    for path in ("/verifications", "/verifications/x/check", "/orchestrators/E4_SmsPhoneVerification"):
        for authorization in (None, WRONG):
            answer = await exchange(port, "POST", path, length=5000, authorization=authorization)
            api_error(answer, 401, "unauthorized")
            assert answer.headers["www-authenticate"] == 'Basic realm="mfa"'
            assert answer.closed  # the body is not read: the connection cannot be used again
    for path in ("/swaig", "/swaig/", "/"):
        answer = await exchange(port, "POST", path, length=5000, authorization=None)
        # The SDK's own refusal, as before: the platform never posts without credentials.
        assert (answer.status, answer.json()) == (401, {"error": "Unauthorized"}), answer
        assert answer.headers["www-authenticate"] == "Basic"
        assert answer.closed


async def test_wrong_credentials_with_a_bad_body_get_401_not_422(agent: RunningAgent) -> None:
    for path in ("/verifications", "/verifications/x/check"):
        for bad in (b"{not json", b'{"to": 7}', b"\xff\xfe"):
            answer = await exchange(port_of(agent), "POST", path, [bad], length=len(bad), authorization=WRONG)
            api_error(answer, 401, "unauthorized")


async def test_every_route_but_get_health_needs_credentials(agent: RunningAgent) -> None:
    async with aiohttp.ClientSession() as http:
        base = agent.base_url
        for method, path in [
            ("GET", "/ready"),
            ("GET", "/metrics"),
            ("GET", "/dashboard"),
            ("GET", "/openapi.json"),
            ("GET", "/verifications/abc"),
            ("GET", "/"),
            ("POST", "/swaig"),
            ("GET", "/no-such-route"),
            ("POST", "/health"),
        ]:
            async with http.request(method, base + path) as refused:
                assert refused.status == 401, path
                assert refused.headers["WWW-Authenticate"].startswith("Basic"), path
            async with http.request(method, base + path, auth=agent.auth) as allowed:
                assert allowed.status != 401, path
        async with http.get(base + "/ready") as refused:
            assert (await refused.json())["error"]["code"] == "unauthorized"
        async with http.get(base + "/health") as health:
            assert health.status == 200
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused_socket:
            await http.ws_connect(base + "/websocket")
        assert refused_socket.value.status == 403


# == bodies over the cap ==


async def test_a_declared_length_over_the_cap_is_refused_before_reading(agent: RunningAgent) -> None:
    async with aiohttp.ClientSession() as http:
        platform = await call_urls(agent, http)
    port = port_of(agent)
    for path in ("/verifications", "/verifications/x/check", "/", "/orchestrators/E4_SmsPhoneVerification"):
        answer = await exchange(port, "POST", path, length=CAP + 1)  # and no body at all
        api_error(answer, 413, "body_too_large")
        assert str(CAP) in answer.json()["error"]["message"]
        assert answer.closed
    for path in ("/swaig", "/swaig/", path_of(platform.urls["send_mfa"])):
        answer = await exchange(port, "POST", path, length=CAP + 1)
        assert "Nothing was done" in spoken(answer)  # the platform always gets 200 and words
        assert answer.headers["connection"] == "close" and answer.closed
    assert read_outbox(agent.settings) == []


async def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_cap(agent: RunningAgent) -> None:
    port = port_of(agent)
    # The last chunk never comes: the answer can only be the edge counting as the body streams.
    endless = chunked(junk(CAP + 4096, piece=1024), finish=False)
    answer = await exchange(port, "POST", "/verifications", endless)
    api_error(answer, 413, "body_too_large")
    assert answer.closed
    async with aiohttp.ClientSession() as http:
        platform = await call_urls(agent, http)
    endless = chunked(junk(CAP + 4096, piece=1024), finish=False)
    answer = await exchange(port, "POST", path_of(platform.urls["verify_mfa"]), endless)
    assert "Nothing was done" in spoken(answer) and answer.closed


def padded(document: dict[str, Any], size: int) -> bytes:
    """``document`` as JSON, padded with spaces to exactly ``size`` bytes."""
    text = json.dumps(document).encode()
    return text + b" " * (size - len(text))


async def test_a_body_at_the_cap_is_served(agent: RunningAgent) -> None:
    port = port_of(agent)
    body = padded({"to": CALLER}, CAP)
    answer = await exchange(port, "POST", "/verifications", [body], length=CAP)
    assert answer.status == 201, answer
    assert answer.headers.get("connection") != "close"
    answer = await exchange(port, "POST", "/verifications", chunked([body[:5000], body[5000:]]))
    assert answer.status == 201, answer
    async with aiohttp.ClientSession() as http:
        platform = await call_urls(agent, http)
    body = padded(platform.payload("send_mfa", {}), CAP)
    answer = await exchange(port, "POST", path_of(platform.urls["send_mfa"]), [body], length=CAP)
    assert "ending in 0143" in spoken(answer)
    assert len(read_outbox(agent.settings)) == 3


# == WebSocket messages ==


def dropped(agent: RunningAgent) -> float:
    value = agent.runtime.metrics.registry.get_sample_value("mfa_websocket_dropped_clients_total")
    return value or 0.0


async def wait_for_dropped(agent: RunningAgent, count: float) -> None:
    # The server counts the drop after the client has its close frame: poll, with a deadline.
    async with asyncio.timeout(DEADLINE):
        while dropped(agent) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_a_websocket_message_over_64_kib_closes_with_1009_and_is_counted(agent: RunningAgent) -> None:
    url = agent.base_url.replace("http://", "ws://") + "/websocket"
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url, auth=agent.auth) as greedy:
            await greedy.send_str(json.dumps({"type": "subscribe", "agent_id": "x" * WS_MAX_MESSAGE_BYTES}))
            closing = await greedy.receive(timeout=DEADLINE)
            assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 1009), closing
        await wait_for_dropped(agent, 1)
        async with http.ws_connect(url, auth=agent.auth) as normal:
            await normal.send_json({"type": "subscribe", "agent_id": "mfa"})
            frame = await normal.receive(timeout=DEADLINE)
            assert json.loads(frame.data) == {"type": "subscribed", "agent_id": "mfa"}
        async with http.get(agent.base_url + "/metrics", auth=agent.auth) as metrics:
            assert "mfa_websocket_dropped_clients_total 1.0" in (await metrics.text()).splitlines()


async def test_a_websocket_protocol_error_is_counted_as_a_dropped_client(agent: RunningAgent) -> None:
    sock = await connect(port_of(agent))
    loop = asyncio.get_running_loop()
    try:
        handshake = (
            "GET /websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: {GOOD}\r\n\r\n"
        )
        await loop.sock_sendall(sock, handshake.encode())
        data = b""
        async with asyncio.timeout(DEADLINE):
            while b"\r\n\r\n" not in data:
                data += await receive(sock)
        assert data.startswith(b"HTTP/1.1 101"), data
        # A text frame with RSV1 set, though no extension was agreed: a protocol error.
        await loop.sock_sendall(sock, bytes([0xC1, 0x80]) + b"mask")
        frame = data.partition(b"\r\n\r\n")[2]
        async with asyncio.timeout(DEADLINE):
            while len(frame) < 4:
                more = await receive(sock)
                assert more, frame
                frame += more
        assert frame[0] == 0x88 and int.from_bytes(frame[2:4], "big") == 1002, frame
    finally:
        sock.close()
    await wait_for_dropped(agent, 1)


# == slow and greedy clients ==


async def test_a_request_head_not_finished_in_time_is_closed(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, mfa_header_timeout=0.5)
    async with serve_agent(settings) as agent:
        loop = asyncio.get_running_loop()
        port = port_of(agent)

        silent = await connect(port)  # sends nothing at all
        partial = await connect(port)
        await loop.sock_sendall(partial, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        trickle = await connect(port)  # keeps sending, a byte at a time, never finishing
        started = time.monotonic()

        async def dribble() -> None:
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                for byte in b"GET /health HTTP/1.1\r\nX-Slow: " + b"a" * 1000:
                    await loop.sock_sendall(trickle, bytes([byte]))
                    await asyncio.sleep(0.05)

        dribbler = asyncio.create_task(dribble())
        try:
            for sock in (silent, partial, trickle):
                assert await closed_within(sock, 5.0)
            assert 0.4 < time.monotonic() - started < 5.0
        finally:
            dribbler.cancel()
            for sock in (silent, partial, trickle):
                sock.close()

        # On a kept-alive connection, the next request's head has the same deadline.
        kept = await connect(port)
        try:
            await loop.sock_sendall(kept, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            async with asyncio.timeout(DEADLINE):
                status, headers, _ = await read_answer(kept)
            assert status == 200 and headers.get("connection") != "close"
            await loop.sock_sendall(kept, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            started = time.monotonic()
            assert await closed_within(kept, 5.0)
            assert 0.4 < time.monotonic() - started < 5.0
        finally:
            kept.close()

        # A head sent in time is served as always.
        async with aiohttp.ClientSession() as http, http.get(agent.base_url + "/health") as health:
            assert health.status == 200


async def test_a_request_head_over_64_kib_is_closed(agent: RunningAgent) -> None:
    loop = asyncio.get_running_loop()
    port = port_of(agent)
    within = await connect(port)
    try:
        header = b"X-Padding: " + b"a" * 32_000 + b"\r\n"
        await loop.sock_sendall(within, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header + b"\r\n")
        async with asyncio.timeout(DEADLINE):
            assert (await read_answer(within))[0] == 200
    finally:
        within.close()
    # A header that never ends, as fast as the client can send it: closed once the head passes
    # the cap, long before the deadline, and long before it could fill the server's memory.
    endless = await connect(port)
    try:
        await loop.sock_sendall(endless, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: ")
        sent = 0
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            async with asyncio.timeout(DEADLINE):
                for piece in junk(100 * MIB):
                    await loop.sock_sendall(endless, piece)
                    sent += len(piece)
        assert sent < 50 * MIB
        assert await closed_within(endless, DEADLINE)
    finally:
        endless.close()


async def health_on(sock: socket.socket) -> int:
    await asyncio.get_running_loop().sock_sendall(sock, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    async with asyncio.timeout(DEADLINE):
        status, _, _ = await read_answer(sock)
    return status


async def test_one_client_address_holds_at_most_its_share_of_connections(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, mfa_max_connections_per_client=3)
    async with serve_agent(settings) as agent:
        port = port_of(agent)
        held = [await connect(port) for _ in range(3)]
        extra: socket.socket | None = None
        try:
            for sock in held:
                assert await health_on(sock) == 200  # answered: the server holds all three
            extra = await connect(port)
            assert await closed_within(extra, 2.0)  # closed at once, before it could send anything
            extra.close()

            for sock in held[:2]:
                sock.close()
            held = held[2:]
            # The server learns of the two closes when it reads them: poll, with a deadline.
            async with asyncio.timeout(DEADLINE):
                while True:
                    extra = await connect(port)
                    with contextlib.suppress(ConnectionError):
                        if await health_on(extra) == 200:
                            break
                    extra.close()
            second = await connect(port)
            held += [extra, second]
            assert await health_on(second) == 200
        finally:
            for sock in held:
                sock.close()


async def test_the_server_refuses_to_start_on_a_uvicorn_without_the_hooks_it_needs() -> None:
    # uvicorn's httptools protocol as it would be with one parser callback renamed.
    hooks = (
        "connection_made",
        "connection_lost",
        "data_received",
        "on_headers_complete",
        "handle_websocket_upgrade",
    )
    renamed = type("HttpToolsProtocol", (), dict.fromkeys(hooks, lambda self: None))
    with pytest.raises(RuntimeError, match=r"uvicorn .*on_message_begin.*checked against uvicorn 0\.54"):
        check_uvicorn(http_protocol=renamed)
    check_uvicorn()  # the uvicorn installed has them all


# == text UTF-8 cannot carry ==


@pytest.fixture
def every_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog, also fed by uvicorn's loggers (which do not propagate to the root)."""
    caplog.set_level(logging.INFO)
    uvicorn_logger = logging.getLogger("uvicorn")
    uvicorn_logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        uvicorn_logger.removeHandler(caplog.handler)


def no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert failures == [], [r.getMessage() for r in failures]


SURROGATE = "\\ud800"  # a lone surrogate, as a JSON escape: valid JSON, but no UTF-8 can carry it


def swaig_bodies(platform: FakePlatform, function: str, arguments: dict[str, Any]) -> dict[str, bytes]:
    good = platform.payload(function, arguments)
    marker = "\u2603MARK\u2603"
    shapes: dict[str, dict[str, Any]] = {
        "meta_data.mfa.id": {**good, "meta_data": {"mfa": {"id": marker}}},
        "arguments": {**good, "argument": {"parsed": [{**arguments, "token": marker}], "raw": "{}"}},
        "raw arguments": {**good, "argument": {"raw": json.dumps({"token": marker}, ensure_ascii=False)}},
        "call_id": {**good, "call_id": marker},
        "caller_id_name": {**good, "caller_id_name": marker},
        "global_data": {**good, "global_data": {"note": marker}},
    }
    bodies = {
        where: json.dumps(shape, ensure_ascii=False).replace(marker, SURROGATE).encode()
        for where, shape in shapes.items()
    }
    bodies["raw arguments"] = bodies["raw arguments"].replace(SURROGATE.encode(), b"\\" + SURROGATE.encode())
    plain = json.dumps({**good, "meta_data": {"mfa": {"id": marker}}}, ensure_ascii=False)
    bodies["UTF-8 encoded surrogate"] = plain.encode().replace(marker.encode(), b"\xed\xa0\x80")
    bodies["invalid byte"] = plain.encode().replace(marker.encode(), b"\xff")
    return bodies


async def test_a_lone_surrogate_anywhere_in_a_swaig_request_is_bad_input(
    agent: RunningAgent, every_log: pytest.LogCaptureFixture
) -> None:
    async with aiohttp.ClientSession() as http:
        platform = await call_urls(agent, http)
        sent = await platform.call("send_mfa")
        assert "ending in 0143" in sent["response"]
        for function, arguments in (("verify_mfa", {"token": "123456"}), ("send_mfa", {})):
            for where, body in swaig_bodies(platform, function, arguments).items():
                headers = {"Content-Type": "application/json"}
                async with http.post(platform.urls[function], data=body, headers=headers) as resp:
                    assert resp.status == 200, (function, where)
                    answer = await resp.json()
                assert isinstance(answer.get("response"), str) and answer["response"], (where, answer)
                assert "outcome is unknown" not in answer["response"], (function, where, answer)
        # Percent-escapes in a query are read with replacement characters: a bad agent_id is
        # ignored, and this well-formed resend is served as usual.
        query = platform.urls["send_mfa"] + "&agent_id=%ED%A0%80"
        async with http.post(query, json=platform.payload("send_mfa", {})) as resp:
            assert resp.status == 200
            assert "ending in 0143" in (await resp.json())["response"]
    assert len(read_outbox(agent.settings)) == 2  # the two well-formed sends, nothing else
    no_traceback(every_log)


async def test_a_lone_surrogate_in_an_api_request_is_bad_input(
    agent: RunningAgent, every_log: pytest.LogCaptureFixture
) -> None:
    port = port_of(agent)
    start = json.dumps({"to": CALLER}).encode()
    started = await exchange(port, "POST", "/verifications", [start], length=len(start))
    assert started.status == 201
    verification = started.json()["id"]
    for path, template in [
        ("/verifications", '{"to": "+1202555@"}'),
        ("/verifications", '{"to": "+12025550143", "channel": "@"}'),
        (f"/verifications/{verification}/check", '{"code": "12@"}'),
        ("/orchestrators/E4_SmsPhoneVerification", '"+1202555@"'),
        ("/verifications?agent_id=%ED%A0%80", '{"to": "+1202555@"}'),
    ]:
        # "@" becomes the surrogate as a JSON escape, then a byte that is not UTF-8 at all.
        for encoded in (template.replace("@", SURROGATE).encode(), template.encode().replace(b"@", b"\xff")):
            answer = await exchange(port, "POST", path, [encoded], length=len(encoded))
            api_error(answer, 422, "invalid_request")
    answer = await exchange(port, "GET", "/verifications/%ED%A0%80", length=0)
    api_error(answer, 422, "invalid_request")
    no_traceback(every_log)


# == a real process under large bodies ==


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the process's RSS from /proc")
async def test_large_bodies_cannot_grow_a_real_agent(tmp_path: Path) -> None:
    process = AgentProcess({"MFA_STORE": f"sqlite:///{tmp_path}/mfa.sqlite3"}, tmp_path / "agent.log")
    await process.start()
    try:
        assert process.process is not None
        pid = process.process.pid
        async with aiohttp.ClientSession() as http, http.get(process.base_url + "/ready", auth=process.auth):
            pass  # warm: the first request's imports and caches are in the baseline
        before, peak_before = rss_bytes(pid), rss_bytes(pid, "VmHWM")
        samples = [before]
        sampling = True

        async def sample() -> None:
            while sampling:
                samples.append(rss_bytes(pid))
                await asyncio.sleep(0.02)

        size = 200 * 1000 * 1000
        port = process.port
        sampler = asyncio.create_task(sample())
        try:
            answers = await asyncio.gather(
                # Without credentials: four 200 MB bodies, two declared and two chunked.
                exchange(port, "POST", "/verifications", junk(size), length=size, authorization=None),
                exchange(port, "POST", "/verifications/x/check", chunked(junk(size)), authorization=None),
                exchange(port, "POST", "/swaig", junk(size), length=size, authorization=None),
                exchange(port, "POST", "/", chunked(junk(size)), authorization=None),
                # With credentials, over the cap, declared and chunked.
                exchange(port, "POST", "/verifications", junk(size), length=size),
                exchange(port, "POST", "/verifications", chunked(junk(size))),
                exchange(port, "POST", "/swaig", junk(size), length=size),
                exchange(port, "POST", "/swaig/", chunked(junk(size))),
            )
        finally:
            sampling = False
            await sampler
        peak_after = rss_bytes(pid, "VmHWM")
        statuses = [answer.status for answer in answers]
        assert statuses == [401, 401, 401, 401, 413, 413, 200, 200], statuses
        assert [a.json()["error"]["code"] for a in answers[:2]] == ["unauthorized"] * 2
        assert [a.json() for a in answers[2:4]] == [{"error": "Unauthorized"}] * 2
        assert [a.json()["error"]["code"] for a in answers[4:6]] == ["body_too_large"] * 2
        assert all("Nothing was done" in a.json()["response"] for a in answers[6:])
        for answer in answers:
            assert answer.closed, answer
            assert answer.seconds < 5.0, answer  # answered at once, not after reading 200 MB
            assert answer.sent < size // 4, answer  # the rest was never read
        peak = max([*samples, peak_after if peak_after > peak_before else 0])
        print(f"RSS before {before / MIB:.1f} MiB, peak during {peak / MIB:.1f} MiB")
        assert peak - before < 50 * MIB, (before, peak)
        async with (
            aiohttp.ClientSession() as http,
            http.get(process.base_url + "/ready", auth=process.auth) as r,
        ):
            assert r.status == 200  # still serving
    finally:
        await process.stop()
    assert "Traceback" not in process.log(), process.log()


async def test_a_websocket_text_frame_that_is_not_utf8_is_dropped_without_a_traceback(
    agent: RunningAgent, every_log: pytest.LogCaptureFixture
) -> None:
    url = agent.base_url.replace("http://", "ws://") + "/websocket"
    async with aiohttp.ClientSession() as http, http.ws_connect(url, auth=agent.auth) as client:
        # A text frame (FIN, opcode 1), masked with a zero key, whose two bytes are not UTF-8.
        writer = client._writer  # aiohttp validates text it sends; this frame is written raw
        writer.transport.write(bytes([0x81, 0x82]) + b"\x00\x00\x00\x00" + b"\xff\xfe")
        closing = await client.receive(timeout=DEADLINE)
        assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 1007), closing
    await wait_for_dropped(agent, 1)
    no_traceback(every_log)
    assert any("Invalid UTF-8" in record.getMessage() for record in every_log.records)

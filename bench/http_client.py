"""`python -m bench http`: CPU per request of the provider's HTTP client, aiohttp against ours.

The agent's three requests to SignalWire per call (the MFA send and two
checks) are made against the fake SignalWire API (bench/fake_provider.py, in
a process of its own, delay 0) by each client in turn, from this process, in
rounds that alternate the clients: ``aiohttp`` is a session set up as
``SignalWireRest`` had it before engine/http1.py (a pooled, keep-alive
``TCPConnector``, a total ``ClientTimeout``, the same headers and JSON), and
``http1`` is engine/http1.py's ``HttpClient``. Each round runs ``--workers``
closed-loop callers for ``--duration`` seconds after ``--warmup`` and counts
this process's CPU seconds (user + system, so the client's and the event
loop's work, never the fake's) per request. This process runs on uvloop, as
the agent does, on its own CPU when there are two.

    python -m bench http --rounds 5 --duration 4 --workers 16
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench.fake_provider import API_TOKEN, PROJECT_ID
from bench.processes import ROOT, fake_provider, pin, run_async
from engine.http1 import HttpClient, Origin, render_headers

RESULTS = ROOT / "bench" / "results"
MFA = "/api/relay/rest/mfa"
TIMEOUT = 5.0
CLIENTS = ("aiohttp", "http1")

# One call's requests: POST a send, then POST two checks of its id. Returns how many were made.
Call = Callable[[int], Awaitable[int]]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench http", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--workers", type=int, default=16, help="closed-loop callers (default 16)")
    add("--warmup", type=float, default=1.0, help="seconds before a round is recorded (default 1)")
    add("--duration", type=float, default=4.0, help="seconds recorded per round (default 4)")
    add("--rounds", type=int, default=5, help="rounds per client, alternating (default 5)")
    add("--no-pin", action="store_true", help="do not pin this process and the fake to separate CPUs")
    add("--output", type=Path, default=None, help="results folder (default bench/results/http-<time>)")
    return parser.parse_args(argv)


def _auth() -> tuple[str, str]:
    credentials = base64.b64encode(f"{PROJECT_ID}:{API_TOKEN}".encode()).decode("ascii")
    return f"Basic {credentials}", "application/json"


def _send_body(caller: int, sequence: int) -> dict[str, Any]:
    return {"to": f"+1555{caller:03d}{sequence % 10000:04d}", "message": "Your code is", "token_length": 6}


CHECK = {"token": "000000"}


def aiohttp_calls(base_url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    """A call's requests over an aiohttp session, the way SignalWireRest made them before."""
    connector = aiohttp.TCPConnector(limit=1000, keepalive_timeout=30.0, ttl_dns_cache=300)
    session = aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT), raise_for_status=False
    )
    authorization, accept = _auth()
    headers = {"Authorization": authorization, "Accept": accept}
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)

    async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with session.request(
            "POST", base_url + path, headers=headers, timeout=timeout, allow_redirects=False, json=body
        ) as response:
            response.headers.get("Retry-After")
            raw = await response.read()
        answer: dict[str, Any] = json.loads(raw)
        return answer

    return _call_over(post), session.close


def _call_over(post: Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]) -> Call:
    """A call's three requests (a send and two checks), each through ``post``."""
    calls = 0

    async def call(caller: int) -> int:
        nonlocal calls
        calls += 1
        sent = await post(f"{MFA}/sms", _send_body(caller, calls))
        for _ in range(2):
            await post(f"{MFA}/{sent['id']}/verify", CHECK)
        return 3

    return call


def http1_calls(port: int) -> tuple[Call, Callable[[], Awaitable[None]]]:
    """A call's requests over engine/http1.py's client, as SignalWireRest makes them now."""
    http = HttpClient()
    origin = Origin("http", "127.0.0.1", port)
    authorization, accept = _auth()
    headers = render_headers({"Authorization": authorization, "Accept": accept})

    async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        encoded = json.dumps(body, separators=(",", ":")).encode()
        response = await http.request(
            origin,
            "POST",
            path,
            headers=headers,
            body=encoded,
            content_type="application/json",
            time_limit=TIMEOUT,
        )
        response.header("Retry-After")
        answer: dict[str, Any] = json.loads(response.body)
        return answer

    return _call_over(post), http.close


async def one_round(call: Call, workers: int, warmup: float, duration: float) -> dict[str, float]:
    """Closed-loop callers; the requests and CPU seconds of the recorded window."""
    requests = 0
    recording = False
    stop = False

    async def caller(index: int) -> None:
        nonlocal requests
        while not stop:
            made = await call(index)
            if recording:
                requests += made

    tasks = [asyncio.create_task(caller(index)) for index in range(workers)]
    await asyncio.sleep(warmup)
    recording = True
    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.sleep(duration)
    recording = False
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    stop = True
    await asyncio.gather(*tasks)
    return {"requests": requests, "cpu_s": cpu, "wall_s": wall}


async def measure(args: argparse.Namespace, port: int) -> dict[str, list[dict[str, float]]]:
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in CLIENTS}
    for index in range(args.rounds):
        order = CLIENTS if index % 2 == 0 else CLIENTS[::-1]
        for name in order:
            base_url = f"http://127.0.0.1:{port}"
            call, close = aiohttp_calls(base_url) if name == "aiohttp" else http1_calls(port)
            try:
                result = await one_round(call, args.workers, args.warmup, args.duration)
            finally:
                await close()
            result["cpu_us_per_request"] = result["cpu_s"] / max(1, result["requests"]) * 1e6
            result["requests_per_s"] = result["requests"] / result["wall_s"]
            rounds[name].append(result)
            _say(
                f"round {index + 1} {name:7}: {result['cpu_us_per_request']:6.1f} us CPU/request, "
                f"{result['requests_per_s']:7.0f} requests/s"
            )
    return rounds


def report(rounds: dict[str, list[dict[str, float]]]) -> str:
    lines = ["client   CPU us/request (median, min-max)   requests/s (median)"]
    medians = {}
    for name in CLIENTS:
        per_request = [result["cpu_us_per_request"] for result in rounds[name]]
        rates = [result["requests_per_s"] for result in rounds[name]]
        medians[name] = statistics.median(per_request)
        lines.append(
            f"{name:8} {medians[name]:7.1f} ({min(per_request):.1f}-{max(per_request):.1f})"
            f"{'':17}{statistics.median(rates):8.0f}"
        )
    ratios = [
        ours["cpu_us_per_request"] / theirs["cpu_us_per_request"]
        for ours, theirs in zip(rounds["http1"], rounds["aiohttp"], strict=True)
    ]
    lines.append(
        f"http1 / aiohttp, CPU per request: median of the rounds' ratios {statistics.median(ratios):.2f} "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f})"
    )
    return "\n".join(lines)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = args.output or RESULTS / time.strftime("http-%Y%m%d-%H%M%S")
    output.mkdir(parents=True, exist_ok=True)
    cpus = sorted(os.sched_getaffinity(0))
    pinned = not args.no_pin and len(cpus) >= 2
    with tempfile.TemporaryDirectory(prefix="bench-http-") as folder:
        fake, port, _ = fake_provider(Path(folder), 0.0, cpus[1:] if pinned else None)
        fake.start()
        try:
            pin(os.getpid(), cpus[:1] if pinned else None)
            rounds = run_async(measure(args, port))
        finally:
            fake.stop()
    layout = f"client on CPU {cpus[0]}, fake on {cpus[1:]}" if pinned else "not pinned"
    results = {"layout": layout, "workers": args.workers, "duration_s": args.duration, "rounds": rounds}
    (output / "results.json").write_text(json.dumps(results, indent=2))
    print(f"{layout}; {args.workers} callers, {args.rounds} rounds of {args.duration:g} s per client")
    print(report(rounds))
    _say(f"results in {output}/results.json")
    return 0

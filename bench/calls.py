"""The load generator: simulated calls, played as the SignalWire platform plays them.

One call = fetch the SWML (POST / with the call's id, Basic auth), take each
function's ``web_hook_url`` (credentials and per-call ``__token`` in it), then
``send_mfa``, ``verify_mfa`` with a wrong code, and ``verify_mfa`` with the
right one (read from the fake provider), carrying ``set_meta_data`` forward.
That is `tests.platform.FakePlatform`, used as it is. The bare agent gets the
same request shapes against its one no-op tool.

Two drivers: a closed loop (N workers playing calls back to back, for
capacity) and an open loop (calls arriving at a fixed rate, whatever the
agent's speed, with a caller's pauses between steps). Every request is timed
from just before it is sent to the end of its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import phonenumbers

from tests.platform import FakePlatform

# What each step of a call is reported as: (step, function it counts for).
SWML = "swml"
SEND = "send_mfa"
VERIFY_WRONG = "verify_mfa (wrong code)"
VERIFY_RIGHT = "verify_mfa (right code)"
VERIFY = "verify_mfa"
FUNCTION_STEPS = (SEND, VERIFY_WRONG, VERIFY_RIGHT)
REQUEST_TIMEOUT = 30.0


@dataclass(frozen=True)
class Target:
    """An agent under test and how to play a call against it."""

    name: str
    base_url: str
    auth: aiohttp.BasicAuth
    send_function: str
    verify_function: str
    control_url: str | None = None  # the fake provider's control port; None: a fixed code

    @property
    def reads_codes(self) -> bool:
        return self.control_url is not None


def phone_numbers(count: int, seed: int = 7) -> list[str]:
    """``count`` distinct valid US numbers (E.164), the same for every run with ``seed``.

    Each simulated call has its own number, so no per-number limit or
    per-number code lookup is shared by two calls in flight.
    """
    rng = random.Random(seed)
    numbers: set[str] = set()
    while len(numbers) < count:
        candidate = f"+1{rng.randint(201, 989)}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"
        parsed = phonenumbers.parse(candidate)
        if phonenumbers.is_valid_number(parsed) and phonenumbers.number_type(parsed) in (
            phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE,
            phonenumbers.PhoneNumberType.MOBILE,
            phonenumbers.PhoneNumberType.FIXED_LINE,
        ):
            numbers.add(candidate)
    return sorted(numbers)


class NumberPool:
    """Hands out numbers round-robin: far more numbers than calls can be in flight."""

    def __init__(self, numbers: list[str]) -> None:
        self._numbers = numbers
        self._next = 0

    def take(self) -> str:
        number = self._numbers[self._next % len(self._numbers)]
        self._next += 1
        return number


SLOW_SECONDS = 2.5  # the slow-provider phase's bound


@dataclass
class Recorder:
    """Latencies by step, and failures by step and kind, within a recording window."""

    samples: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    failures: Counter[tuple[str, str]] = field(default_factory=Counter)
    start: float | None = None  # monotonic; None: record everything
    end: float | None = None
    response_bytes: dict[str, int] = field(default_factory=dict)
    # Requests slower than SLOW_SECONDS: (seconds since the recorder began, step, seconds taken),
    # so a report can tell one stall (late requests bunched in time) from a spread.
    slow: list[tuple[float, str, float]] = field(default_factory=list)
    began: float = field(default_factory=time.monotonic)

    def counts(self, finished: float) -> bool:
        if self.start is None:
            return True
        return finished >= self.start and (self.end is None or finished <= self.end)

    def add(self, step: str, seconds: float, finished: float) -> None:
        if self.counts(finished):
            self.samples[step].append(seconds)
            if seconds > SLOW_SECONDS:
                self.slow.append((round(finished - seconds - self.began, 3), step, round(seconds, 3)))

    def fail(self, step: str, kind: str) -> None:
        if self.start is None or time.monotonic() >= self.start:
            self.failures[(step, kind)] += 1


class CallFailed(Exception):
    """A step answered something other than the expected outcome."""


def _loopback(url: str) -> str:
    # The SDK writes "localhost" into web_hook_url; the agent listens on 127.0.0.1 only,
    # and a resolver that tries ::1 first would add a failed connect to every new connection.
    return url.replace("@localhost:", "@127.0.0.1:", 1)


async def _timed(recorder: Recorder, step: str, coroutine: Awaitable[Any]) -> Any:
    started = time.monotonic()
    try:
        result = await coroutine
    except TimeoutError:
        recorder.fail(step, "timeout")
        raise CallFailed(step) from None
    except aiohttp.ClientError as error:
        recorder.fail(step, type(error).__name__)
        raise CallFailed(step) from None
    except AssertionError:  # FakePlatform: the platform insists on HTTP 200
        recorder.fail(step, "not_200")
        raise CallFailed(step) from None
    finished = time.monotonic()
    recorder.add(step, finished - started, finished)
    return result


def _expect(recorder: Recorder, step: str, ok: bool) -> None:
    if not ok:
        recorder.fail(step, "unexpected_answer")
        raise CallFailed(step)


def _actions(result: dict[str, Any], name: str) -> list[Any]:
    return [action[name] for action in result.get("action", []) if name in action]


async def _code_for(session: aiohttp.ClientSession, target: Target, number: str) -> str:
    if target.control_url is None:
        return "123456"
    async with session.get(f"{target.control_url}/code", params={"to": number}) as answer:
        body = await answer.json()
        if answer.status != 200:
            raise CallFailed("code")
        return str(body["code"])


def _wrong(code: str) -> str:
    return code[:-1] + ("1" if code[-1] != "1" else "2")


async def play_call(
    session: aiohttp.ClientSession,
    target: Target,
    number: str,
    recorder: Recorder,
    pauses: Iterator[float] | None = None,
) -> bool:
    """One call from SWML to verified; True when every step gave the expected answer."""
    platform = FakePlatform(session, target.base_url, target.auth, caller_id_num=number)

    async def pause() -> None:
        if pauses is not None:
            await asyncio.sleep(next(pauses))

    try:
        await _timed(recorder, SWML, platform.start_call())
        platform.urls = {name: _loopback(url) for name, url in platform.urls.items()}

        await pause()
        sent = await _timed(recorder, SEND, platform.call(target.send_function, channel="sms"))
        recorder.response_bytes.setdefault(SEND, len(str(sent)))
        if target.reads_codes:
            _expect(recorder, SEND, any("mfa" in data for data in _actions(sent, "set_meta_data")))
        code = await _code_for(session, target, number)

        await pause()
        wrong = await _timed(
            recorder, VERIFY_WRONG, platform.call(target.verify_function, token=_wrong(code))
        )
        if target.reads_codes:
            _expect(recorder, VERIFY_WRONG, "not correct" in wrong.get("response", ""))

        await pause()
        right = await _timed(recorder, VERIFY_RIGHT, platform.call(target.verify_function, token=code))
        if target.reads_codes:
            verified = any(data.get("mfa_verified") for data in _actions(right, "set_global_data"))
            _expect(recorder, VERIFY_RIGHT, verified)
        return True
    except CallFailed:
        return False


def new_session(connections: int = 4096) -> aiohttp.ClientSession:
    """One pooled client session for the whole run: keep-alive, no per-request set-up.

    Idle connections are dropped before uvicorn's 5 s keep-alive would drop them,
    so a request never goes out on a connection the server is closing.
    """
    connector = aiohttp.TCPConnector(limit=connections, keepalive_timeout=4.0, ttl_dns_cache=None)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
        skip_auto_headers=("User-Agent",),
    )


@dataclass
class LoopResult:
    """What one driver measured: the recorder, the window, and the calls played."""

    recorder: Recorder
    seconds: float
    calls_started: int
    calls_ok: int
    calls_failed: int
    max_start_lag: float = 0.0
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # used within the window, by process


CpuProbe = Callable[[], dict[str, float]]  # CPU seconds used so far, by process or thread


def _used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0.0) for name in after}


async def closed_loop(
    session: aiohttp.ClientSession,
    target: Target,
    numbers: NumberPool,
    *,
    workers: int,
    warmup: float,
    duration: float,
    probe: CpuProbe | None = None,
) -> LoopResult:
    """``workers`` callers playing calls back to back, no pauses; recorded after ``warmup``."""
    recorder = Recorder(start=float("inf"))
    stop = asyncio.Event()
    played = Counter[str]()

    async def worker() -> None:
        while not stop.is_set():
            ok = await play_call(session, target, numbers.take(), recorder)
            played["ok" if ok else "failed"] += 1

    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    await asyncio.sleep(warmup)
    played.clear()
    cpu_before = probe() if probe else {}
    recorder.start = time.monotonic()
    await asyncio.sleep(duration)
    recorder.end = time.monotonic()
    cpu = _used(cpu_before, probe()) if probe else {}
    stop.set()
    await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT * 4)
    for task in tasks:
        task.cancel()
    return LoopResult(
        recorder,
        recorder.end - recorder.start,
        calls_started=played["ok"] + played["failed"],
        calls_ok=played["ok"],
        calls_failed=played["failed"],
        cpu_seconds=cpu,
    )


async def open_loop(
    session: aiohttp.ClientSession,
    target: Target,
    numbers: NumberPool,
    *,
    rate: float,
    duration: float,
    pause: tuple[float, float],
    seed: int,
    probe: CpuProbe | None = None,
) -> LoopResult:
    """Calls arriving every ``1/rate`` s for ``duration`` s, each pausing ``pause`` s between steps.

    The pauses come from a seeded generator per call, so every agent sees the
    same calls at the same moments. A call starts on schedule whether or not
    earlier ones were answered (no coordinated omission); ``max_start_lag``
    says how late the generator itself was.
    """
    recorder = Recorder()
    count = max(1, round(rate * duration))
    loop = asyncio.get_running_loop()
    began = loop.time() + 0.2
    tasks: list[asyncio.Task[bool]] = []
    lag = 0.0
    cpu_before = probe() if probe else {}
    for index in range(count):
        due = began + index / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        lag = max(lag, loop.time() - due)
        rng = random.Random(seed * 1_000_003 + index)
        pauses = iter([rng.uniform(*pause) for _ in range(3)])
        tasks.append(asyncio.create_task(play_call(session, target, numbers.take(), recorder, pauses)))
    results = await asyncio.gather(*tasks)
    cpu = _used(cpu_before, probe()) if probe else {}
    return LoopResult(
        recorder,
        loop.time() - began,
        calls_started=count,
        calls_ok=sum(results),
        calls_failed=count - sum(results),
        max_start_lag=lag,
        cpu_seconds=cpu,
    )


# -- one kind of request at a time --------------------------------------------------------------

# The kinds `kind_loop` plays, each timed as its own step.
KIND_SWML = "SWML fetch"
KIND_REFUSED = "SWAIG request, token refused"
KIND_NOOP = "SWAIG request, no-op tool"
KINDS = (KIND_SWML, KIND_REFUSED, KIND_NOOP)
TOKEN_REFUSED = "invalid or expired"  # noqa: S105 - what the SDK says refusing a function token


async def _one_kind(
    session: aiohttp.ClientSession, target: Target, kind: str, number: str, recorder: Recorder
) -> None:
    """Requests of one kind, back to back, on one simulated call (until cancelled)."""
    platform = FakePlatform(session, target.base_url, target.auth, caller_id_num=number)
    await platform.start_call()
    urls = {name: _loopback(url) for name, url in platform.urls.items()}
    refused = urls[target.send_function].split("__token=")[0] + "__token=bm90LWEtdG9rZW4%3D"
    while True:
        if kind == KIND_SWML:
            platform.call_id = str(uuid.uuid4())
            answer = await _timed(recorder, kind, platform.fetch_swml(f"{target.base_url}/", target.auth))
            _expect(recorder, kind, "sections" in answer)
            continue
        payload = platform.payload(target.send_function, {"channel": "sms"})
        url = refused if kind == KIND_REFUSED else urls[target.send_function]
        result = await _timed(recorder, kind, _post_json(session, url, payload))
        _expect(recorder, kind, (TOKEN_REFUSED in result.get("response", "")) == (kind == KIND_REFUSED))


async def _post_json(session: aiohttp.ClientSession, url: str, payload: dict[str, Any]) -> dict[str, Any]:
    async with session.post(url, json=payload) as answer:
        assert answer.status == 200
        result: dict[str, Any] = await answer.json(content_type=None)
    return result


async def kind_loop(
    session: aiohttp.ClientSession,
    target: Target,
    kind: str,
    numbers: NumberPool,
    *,
    workers: int,
    warmup: float,
    duration: float,
    probe: CpuProbe,
) -> tuple[int, float, dict[str, float], int]:
    """``workers`` clients sending one kind of request back to back: (requests answered in the
    window, its seconds, CPU seconds used in it by process, failures)."""
    recorder = Recorder(start=float("inf"))

    async def worker() -> None:
        while True:
            with contextlib.suppress(CallFailed):
                await _one_kind(session, target, kind, numbers.take(), recorder)

    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    await asyncio.sleep(warmup)
    before = probe()
    recorder.start = time.monotonic()
    await asyncio.sleep(duration)
    recorder.end = time.monotonic()
    used = _used(before, probe())
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    failed = sum(count for (step, _), count in recorder.failures.items() if step == kind)
    return len(recorder.samples.get(kind, [])), recorder.end - recorder.start, used, failed

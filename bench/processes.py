"""The processes of a benchmark run: the two agents, the fake provider, a throw-away Redis.

Each runs as its own OS process, started with a clean environment (no
``MFA_*``, ``SIGNALWIRE_*`` or ``SWML_*`` from the shell, no ``.env``: the
working directory is a scratch folder), and can be pinned to a set of CPUs.
CPU time is read from ``/proc/<pid>/stat`` (all threads), so each phase can
report how many cores each process used.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")

USER = "bench"
PASSWORD = secrets.token_urlsafe(18)
SWAIG_SECRET = secrets.token_hex(32)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed (lighter for the load generator), else asyncio."""
    try:
        import uvloop
    except ImportError:
        import asyncio

        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads included."""
    return cpu_seconds_of(Path(f"/proc/{pid}/stat"))


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds by thread: the main thread (the event loop) and the others by name."""
    seconds: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            # Python 3.11 does not name its threads for the OS: the others are the SQLite store's, executors'.
            name = "main (event loop)" if task.name == str(pid) else "other threads"
            used = cpu_seconds_of(task / "stat")
        except OSError:  # the thread ended meanwhile
            continue
        seconds[name] = seconds.get(name, 0.0) + used
    return seconds


def cpu_seconds_of(stat_path: Path) -> float:
    fields = stat_path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def pin(pid: int, cpus: Iterable[int] | None) -> None:
    if cpus is not None:
        os.sched_setaffinity(pid, set(cpus))


class Service:
    """One process of the run, with its log file, readiness URL and CPU accounting."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log_path: Path,
        ready_url: str,
        cpus: Iterable[int] | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.cwd = cwd
        self.log_path = log_path
        self.ready_url = ready_url
        self.cpus = list(cpus) if cpus is not None else None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, within: float = 30.0) -> None:
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                self.argv, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT
            )
        finally:
            log.close()
        pin(self.process.pid, self.cpus)
        deadline = time.monotonic() + within
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.ready_url, timeout=1) as answer:  # noqa: S310 - loopback
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name} did not start:\n{self.log_tail()}")
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def thread_cpu_seconds(self) -> dict[str, float]:
        return thread_cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def clean_env(**extra: str) -> dict[str, str]:
    """The shell's environment without anything that configures an agent, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MFA_", "SIGNALWIRE_", "SWML_"))}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def fake_provider(work: Path, delay: float, cpus: Iterable[int] | None) -> tuple[Service, int, int]:
    """The fake SignalWire API; returns the service, its API port and its control port."""
    port, control = free_port(), free_port()
    service = Service(
        "fake provider",
        [
            PYTHON,
            "-m",
            "bench.fake_provider",
            "--port",
            str(port),
            "--control-port",
            str(control),
            "--delay",
            str(delay),
        ],
        env=clean_env(),
        cwd=ROOT,
        log_path=work / "fake_provider.log",
        ready_url=f"http://127.0.0.1:{control}/stats",
        cpus=cpus,
    )
    return service, port, control


def our_agent(
    work: Path,
    fake_port: int,
    redis_url: str | None,
    cpus: Iterable[int] | None,
    log_level: str = "INFO",
    *,
    name: str = "ours",
    root: Path = ROOT,
) -> Service:
    """`python agent.py` exactly as deployed, talking to the fake, with the limits out of the way.

    Its store is a fresh SQLite file, or keys under a prefix of its own in ``redis_url``.
    ``root`` may be another work tree (a patched copy) to compare with this one.
    """
    port = free_port()
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    if redis_url is None:
        store_url = f"sqlite:///{folder / 'mfa.sqlite3'}"
    else:
        store_url = f"{redis_url}?prefix=bench-{name}-{secrets.token_hex(4)}:"
    env = clean_env(
        HOST="127.0.0.1",
        PORT=str(port),
        SWML_BASIC_AUTH_USER=USER,
        SWML_BASIC_AUTH_PASSWORD=PASSWORD,
        SIGNALWIRE_SWAIG_SECRET=SWAIG_SECRET,
        SIGNALWIRE_PROJECT_ID="test-project",
        SIGNALWIRE_API_TOKEN="test-token",  # noqa: S106 - the fake's own credential
        SIGNALWIRE_SPACE=f"127.0.0.1:{fake_port}",
        MFA_PROVIDER="signalwire",
        MFA_STORE=store_url,
        MFA_OUTBOX=str(folder / "outbox.jsonl"),
        # Rate limits would throttle the load: every simulated call has its own number.
        MFA_SENDS_PER_NUMBER_PER_HOUR="1000000",
        MFA_SENDS_PER_CALL="1000000",
        MFA_MAX_FAILURES_PER_CALL="1000000",
        MFA_SENDS_PER_AGENT_PER_MINUTE="100000000",
        MFA_SENDS_PER_MINUTE="100000000",
        MFA_MAX_FAILURES_PER_NUMBER_PER_DAY="100",
        # The pumping guard stays on and does all its work (every send counted per prefix and
        # country, every approval counted); only a new country's first-hour budget is raised, as
        # the limits above are: every call goes to the US, which is new to each fresh store.
        MFA_FRAUD_NEW_COUNTRY_SENDS="100000",
        # The bare agent looks nothing up: neither does ours here (a lookup is once a day per number).
        MFA_LINE_TYPE_CHECK="off",
        # Every simulated call comes from this one address, up to thousands of connections at once.
        MFA_MAX_CONNECTIONS_PER_CLIENT="0",
        LOG_LEVEL=log_level,
        PYTHONPATH=str(root),
    )
    return Service(
        f"agent {name}",
        [PYTHON, str(root / "agent.py")],
        env=env,
        cwd=folder,  # no .env from the work tree
        log_path=work / f"{name}.log",
        ready_url=f"http://127.0.0.1:{port}/health",
        cpus=cpus,
    )


def bare_agent(work: Path, cpus: Iterable[int] | None) -> Service:
    """The baseline agent (bench/bare_agent.py), served the same way."""
    port = free_port()
    folder = work / "bare"
    folder.mkdir(parents=True, exist_ok=True)
    env = clean_env(
        HOST="127.0.0.1",
        PORT=str(port),
        SWML_BASIC_AUTH_USER=USER,
        SWML_BASIC_AUTH_PASSWORD=PASSWORD,
        SIGNALWIRE_SWAIG_SECRET=SWAIG_SECRET,
    )
    return Service(
        "bare agent",
        [PYTHON, str(ROOT / "bench" / "bare_agent.py")],
        env=env,
        cwd=folder,
        log_path=work / "bare.log",
        ready_url=f"http://127.0.0.1:{port}/health",
        cpus=cpus,
    )


def base_url(service: Service) -> str:
    return service.ready_url.rsplit("/", 1)[0]


def redis_server(work: Path, cpus: Iterable[int] | None) -> tuple[Service, str] | None:
    """A throw-away redis-server that keeps nothing on disk; None when it is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = free_port()
    service = Service(
        "redis",
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        env=clean_env(),
        cwd=work,
        log_path=work / "redis.log",
        ready_url="",
        cpus=cpus,
    )
    return service, f"redis://127.0.0.1:{port}/0"


def start_redis(service: Service, url: str, within: float = 10.0) -> None:
    """Start redis-server and wait until it answers PING."""
    import redis

    log = service.log_path.open("ab")
    try:
        service.process = subprocess.Popen(
            service.argv, env=service.env, cwd=service.cwd, stdout=log, stderr=subprocess.STDOUT
        )
    finally:
        log.close()
    pin(service.process.pid, service.cpus)
    deadline = time.monotonic() + within
    while True:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            if client.ping():
                return
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            pass
        finally:
            client.close()
        if service.process.poll() is not None or time.monotonic() > deadline:
            service.stop()
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)

"""Test harness: the agent as a real process (`python agent.py`), started, killed and restarted."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import aiohttp

from tests.platform import PASSWORD, USER, free_port

ROOT = Path(__file__).resolve().parent.parent


class AgentProcess:
    """One `python agent.py` with its own port and environment."""

    def __init__(self, env: Mapping[str, str], log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("MFA_", "SIGNALWIRE_", "SWML_"))},
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "SWML_BASIC_AUTH_USER": USER,
            "SWML_BASIC_AUTH_PASSWORD": PASSWORD,
            **env,
        }
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, within: float = 20.0) -> None:
        self._log = self.log_path.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "agent.py"),
            cwd=self.log_path.parent,
            env=self.env,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
        )
        deadline = asyncio.get_running_loop().time() + within
        async with aiohttp.ClientSession() as http:
            while True:
                if self.process.returncode is not None:
                    raise RuntimeError(f"agent exited with {self.process.returncode}:\n{self.log()}")
                try:
                    async with http.get(f"{self.base_url}/health") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"agent did not start:\n{self.log()}")
                await asyncio.sleep(0.05)

    async def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, as in a crash or an OOM kill."""
        await self._end(signal.SIGKILL)

    async def stop(self) -> None:
        """SIGTERM, as an orchestrator stops a container; SIGKILL if it does not end."""
        await self._end(signal.SIGTERM)

    async def _end(self, how: signal.Signals) -> None:
        if self.process and self.process.returncode is None:
            self.process.send_signal(how)
            with contextlib.suppress(ProcessLookupError):  # a paused one acts on SIGTERM once resumed
                self.process.send_signal(signal.SIGCONT)
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._log:
            self._log.close()
            self._log = None

    def pause(self) -> None:
        """SIGSTOP: the process stands still (no request, no timer) until `resume`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process and self.process.returncode is None:
            self.process.send_signal(signal.SIGCONT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def auth(self) -> aiohttp.BasicAuth:
        return aiohttp.BasicAuth(USER, PASSWORD)


def redis_server_binary() -> str:
    """redis-server's path; under CI=true a missing one fails the test instead of skipping it."""
    import pytest

    server = shutil.which("redis-server")
    if server is None:
        reason = "redis-server is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return server


class RedisServer:
    """A throw-away `redis-server` on a port of its own: by default it keeps nothing on disk;
    ``arguments`` (a deployment's own) and ``folder`` (its data and log) say otherwise."""

    def __init__(
        self,
        port: int,
        *,
        arguments: Sequence[str] = ("--save", "", "--appendonly", "no"),
        folder: Path | None = None,
    ) -> None:
        self.port = port
        self.arguments = tuple(arguments)
        self.folder = folder
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, within: float = 10.0) -> None:
        # Later arguments win: the port, the address and the folder are the test's.
        command = [redis_server_binary(), *self.arguments, "--port", str(self.port), "--bind", "127.0.0.1"]
        log_path = None
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            command += ["--dir", str(self.folder)]
            log_path = self.folder / "redis.log"
        with log_path.open("ab") if log_path else open(os.devnull, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + within
        while not redis_answers(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                said = log_path.read_text(errors="replace") if log_path else ""
                raise RuntimeError(f"redis-server on port {self.port} did not start\n{said}".rstrip())
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def redis_answers(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        return False
    finally:
        client.close()

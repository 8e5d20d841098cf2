"""A newcomer's first hour: help, a configuration check, readable logs, clear errors.

Each test does what a person trying the agent on a fresh clone would do:
ask for help, check a configuration, read the logs as JSON, mistype a path,
run into a limit and need to know when to try again, or start it on a Python
that is too old.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError

from config import Settings
from tests.platform import FakePlatform, free_port, serve_agent, settings_for
from tests.processes import ROOT, AgentProcess

CALLER = "+12025550143"


def run_agent(*arguments: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`python agent.py ...` with a clean environment, as a person would run it."""
    ours = ("MFA_", "SIGNALWIRE_", "SWML_", "LOG_")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    return subprocess.run(
        [sys.executable, str(ROOT / "agent.py"), *arguments],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_lists_the_settings_and_where_the_docs_are_and_starts_nothing(tmp_path: Path) -> None:
    done = run_agent("--help", cwd=tmp_path, PORT=str(free_port()))
    assert done.returncode == 0, done.stderr
    for variable in ("MFA_STORE", "MFA_SENDS_PER_MINUTE", "SWML_BASIC_AUTH_PASSWORD", "LOG_FORMAT"):
        assert variable in done.stdout
    assert "README.md" in done.stdout and "--check" in done.stdout
    assert not (tmp_path / "data").exists()  # nothing was opened, nothing served


def test_check_says_whether_the_configuration_and_the_store_are_good(tmp_path: Path) -> None:
    good = run_agent("--check", cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert "configuration: valid" in good.stdout and "answers" in good.stdout

    closed = f"redis://user:hunter22@127.0.0.1:{free_port()}/0"
    unreachable = run_agent("--check", cwd=tmp_path, MFA_STORE=closed)
    assert unreachable.returncode == 1
    assert "cannot be used" in unreachable.stderr
    assert "hunter22" not in unreachable.stderr + unreachable.stdout

    wrong = run_agent("--check", cwd=tmp_path, MFA_TOKEN_LENGTH="2")
    assert wrong.returncode == 2
    assert wrong.stderr.strip().splitlines() == [
        "configuration error: MFA_TOKEN_LENGTH: Input should be greater than or equal to 4"
    ]


def test_an_old_python_is_told_at_once_which_version_is_needed(tmp_path: Path) -> None:
    pretend = (
        "import runpy, sys; sys.version_info = (3, 9, 18, 'final', 0); sys.argv = ['agent.py', '--help'];"
        f"runpy.run_path({str(ROOT / 'agent.py')!r}, run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", pretend], capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("The agent needs Python 3.11 or newer")

    # The scripts say it before they make a virtualenv with it (a fresh clone: no .venv yet).
    clone = tmp_path / "clone"
    (clone / "scripts").mkdir(parents=True)
    (clone / "scripts" / "_env.sh").write_text((ROOT / "scripts" / "_env.sh").read_text())
    old_python = tmp_path / "python3.9"
    old_python.write_text('#!/bin/sh\ncase "$*" in *print*) echo 3.9;; *) exit 1;; esac\n')
    old_python.chmod(0o755)
    script = subprocess.run(
        ["bash", "-c", f'source "{clone}/scripts/_env.sh"'],
        env={**os.environ, "PYTHON": str(old_python)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert script.returncode == 1
    assert "needs Python 3.11 or newer" in script.stderr and "3.9" in script.stderr
    assert not (clone / ".venv").exists()


@pytest.mark.parametrize(("given", "level"), [("debug", "DEBUG"), ("Warning", "WARNING"), (" INFO ", "INFO")])
def test_log_level_is_read_in_any_case(given: str, level: str) -> None:
    assert Settings(_env_file=None, log_level=given).log_level == level  # type: ignore[call-arg]


def test_a_wrong_log_setting_is_refused() -> None:
    for wrong in ({"log_level": "loud"}, {"log_format": "xml"}):
        with pytest.raises(ValidationError):
            Settings(_env_file=None, **wrong)  # type: ignore[arg-type]


async def test_with_log_format_json_every_line_is_one_json_object(tmp_path: Path) -> None:
    env = {
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "Debug",
        "MFA_STORE": f"sqlite:///{tmp_path}/mfa.sqlite3",
        "MFA_OUTBOX": str(tmp_path / "outbox.jsonl"),
        "SWML_BASIC_AUTH_PASSWORD": "",  # a generated password is announced, as JSON too
    }
    agent = AgentProcess({k: v for k, v in env.items() if v}, tmp_path / "agent.log")
    agent.env.pop("SWML_BASIC_AUTH_PASSWORD")
    await agent.start()
    try:
        announced = next(
            json.loads(line)["message"] for line in agent.log().splitlines() if "Basic auth:" in line
        )
        user, password = announced.removeprefix("Basic auth: ").split(" ")[0].split(":", 1)
        auth = aiohttp.BasicAuth(user, password)
        async with aiohttp.ClientSession() as http:
            platform = FakePlatform(http, agent.base_url, auth, caller_id_num=CALLER)
            await platform.start_call()
            await platform.call("send_mfa")
            async with http.post(platform.urls["verify_mfa"], data=b"not json") as resp:
                assert resp.status == 200
            async with http.get(f"{agent.base_url}/no-such-page", auth=auth) as resp:
                assert resp.status == 404
    finally:
        await agent.stop()
    lines = [line for line in agent.log().splitlines() if line.strip()]
    loggers = set()
    for line in lines:
        record: dict[str, Any] = json.loads(line)  # every line, or this fails
        assert {"time", "level", "logger", "message"} <= record.keys(), line
        loggers.add(record["logger"])
    # Ours, the web server's and the SDK's lines alike.
    assert {"mfa", "uvicorn.error"} <= loggers
    assert any(name.startswith("signalwire") for name in loggers), loggers
    assert any(name.startswith(("engine", "functions", "agent")) for name in loggers), loggers


async def test_unknown_paths_answer_404_in_the_error_shape(tmp_path: Path) -> None:
    async with serve_agent(settings_for(tmp_path)) as agent, aiohttp.ClientSession() as http:
        for method, path in [
            ("GET", "/no-such-page"),
            ("POST", "/swaig/extra"),
            ("GET", "/verifications/some-id/nothing"),
            ("DELETE", "/nothing/here"),
        ]:
            async with http.request(method, agent.base_url + path, auth=agent.auth) as resp:
                assert resp.status == 404, (method, path)
                assert (await resp.json())["error"]["code"] == "not_found"
        async with http.get(agent.base_url + "/no-such-page") as resp:
            assert resp.status == 401  # credentials first: a path's existence is not told to anyone
        # What the SDK serves is still served: the SWML, with or without a trailing slash.
        for path in ("/", "//"):
            async with http.get(agent.base_url + path, auth=agent.auth) as resp:
                assert resp.status == 200 and "sections" in await resp.json(content_type=None)


async def test_a_rate_limit_says_when_to_retry_in_the_body_too(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, mfa_sends_per_number_per_hour=1)
    async with serve_agent(settings) as agent, aiohttp.ClientSession() as http:
        url = f"{agent.base_url}/verifications"
        for expected in (201, 429):
            async with http.post(url, json={"to": CALLER}, auth=agent.auth) as resp:
                assert resp.status == expected
                body = await resp.json()
        assert body["error"]["code"] == "rate_limited"
        assert body["error"]["retry_after"] == int(resp.headers["Retry-After"])
        assert 3000 < body["error"]["retry_after"] <= 3600


async def test_an_unavailable_store_says_when_to_retry(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    async with serve_agent(settings) as agent, aiohttp.ClientSession() as http:
        await agent.runtime.store.close()  # the store goes away under the running agent
        async with http.post(f"{agent.base_url}/verifications", json={"to": CALLER}, auth=agent.auth) as resp:
            assert resp.status == 503
            body = await resp.json()
        assert body["error"]["code"] == "store_unavailable"
        assert body["error"]["retry_after"] == int(resp.headers["Retry-After"]) >= 1

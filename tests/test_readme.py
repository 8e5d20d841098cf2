"""The README's commands work when pasted, and again when pasted a second time.

Each example block is run as a person would paste it, twice in a row in one
shell, in a folder laid out like a fresh clone (the project's files linked in,
its own `data/`), against a running agent started with the credentials the
README uses. Only the address changes: the agent listens on a free port, not
3000. The settings table, `.env.example` and `--help` name every setting.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path

import aiohttp
import pytest

from config import Settings
from tests.platform import free_port
from tests.processes import ROOT, AgentProcess

README = (ROOT / "README.md").read_text()
# What a clone holds that the examples use; linked, so the agent under test is this one.
PROJECT = ["agent.py", "conversation.py", "config", "engine", "functions", "api", "web", "server", "scripts"]
PROJECT += ["requirements.txt", "requirements-dev.txt", ".venv"]


def blocks_under(heading: str) -> list[str]:
    """The bash blocks of the README section that starts with ``heading``."""
    section = README.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    folder = tmp_path / "clone"
    folder.mkdir()
    for name in PROJECT:
        (folder / name).symlink_to(ROOT / name)
    return folder


def paste_twice(block: str, clone: Path, base_url: str) -> str:
    """Run ``block`` twice in one bash, in ``clone``; its output (stdout and stderr)."""
    script = block.replace("http://localhost:3000", base_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MFA_", "SIGNALWIRE_", "SWML_"))}
    done = subprocess.run(
        ["bash", "-c", f"{script}\n{script}"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert "Traceback" not in output and "none" not in output.split(), output
    return output


# The heading, the block's index in that section, and what each paste must print once.
EXAMPLES = [
    ("## Configuration", 0, "configuration: valid"),
    ("## Try the functions without a phone", 0, "The code is correct"),
    ("## Try the functions without a phone", 1, "The code is correct"),
    ("## The HTTP verification API", 0, '"valid":true'),
    ("## The HTTP verification API", 1, '"runtimeStatus":"Completed"'),
    ("## Use the functions from another agent", 1, '"function":"verify_mfa"'),
    ("### SMS pumping guard", 0, '{"holds":'),
]
# Blocks that start a server of their own and run until stopped; what they run is tested
# elsewhere: the example host agent by tests/test_includes.py.
LONG_RUNNING = {("## Use the functions from another agent", 0)}


@pytest.mark.parametrize(("heading", "index", "success"), EXAMPLES)
async def test_each_example_works_when_pasted_twice(
    clone: Path, heading: str, index: int, success: str
) -> None:
    agent = AgentProcess(
        {"SWML_BASIC_AUTH_USER": "signalwire", "SWML_BASIC_AUTH_PASSWORD": "choose-a-long-password"},
        clone / "agent.log",
    )
    await agent.start()
    try:
        block = blocks_under(heading)[index]
        output = await asyncio.to_thread(paste_twice, block, clone, agent.base_url)
    finally:
        await agent.stop()
    assert output.count(success) == 2, output


def test_every_example_block_is_tested() -> None:
    tested = {(heading, index) for heading, index, _ in EXAMPLES} | LONG_RUNNING
    for heading in {heading for heading, _ in tested}:
        assert {(heading, n) for n in range(len(blocks_under(heading)))} == {
            pair for pair in tested if pair[0] == heading
        }


async def test_start_script_serves_the_agent_and_serves_it_again(clone: Path) -> None:
    port = str(free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MFA_", "SIGNALWIRE_", "SWML_"))}
    for _ in range(2):
        process = await asyncio.create_subprocess_exec(
            "bash",
            str(clone / "scripts" / "start.sh"),
            cwd=clone,
            env={**env, "PORT": port, "HOST": "127.0.0.1"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            async with asyncio.timeout(30), aiohttp.ClientSession() as http:
                while True:
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/health") as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.1)
        finally:
            process.terminate()
            output = (await process.communicate())[0].decode()
        assert "Basic auth:" in output, output  # the generated password is shown once


def test_every_setting_is_documented() -> None:
    example = (ROOT / ".env.example").read_text()
    for name in Settings.model_fields:
        variable = name.upper()
        assert f"`{variable}`" in README, variable
        assert re.search(rf"^# {variable}=", example, flags=re.M), variable

"""Real processes: a crash mid-call, and two instances sharing one Redis.

The platform keeps posting to the function URLs (with their per-call tokens)
it got from the SWML when the call started, so those URLs must keep working
on a restarted process and on any instance.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from tests.platform import FakePlatform, actions, code_in_outbox_body
from tests.processes import AgentProcess

CALLER = "+12025550143"


def on_instance(url: str, other: AgentProcess) -> str:
    """The same function URL (credentials, path and token) on another instance."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{other.port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def test_a_call_in_progress_survives_a_crash(tmp_path: Path) -> None:
    env = {"MFA_STORE": f"sqlite:///{tmp_path}/mfa.sqlite3", "MFA_OUTBOX": str(tmp_path / "outbox.jsonl")}
    first = AgentProcess(env, tmp_path / "agent.log")
    await first.start()
    try:
        async with aiohttp.ClientSession() as http:
            platform = FakePlatform(http, first.base_url, first.auth, caller_id_num=CALLER)
            await platform.start_call()
            sent = await platform.call("send_mfa")
            assert "ending in 0143" in sent["response"], first.log()
            await first.kill()

            second = AgentProcess(env, tmp_path / "agent.log", port=first.port)
            await second.start()
            try:
                # Same URLs and tokens as before the crash; the code from the first process.
                messages = read_outbox_of(tmp_path)
                verified = await platform.call("verify_mfa", token=code_in_outbox_body(messages[-1]["body"]))
                assert actions(verified, "set_meta_data") == [{"verified": True}], second.log()
                assert len(read_outbox_of(tmp_path)) == 1  # nothing was sent twice
            finally:
                await second.stop()
    finally:
        await first.kill()


def read_outbox_of(folder: Path) -> list[dict[str, str]]:
    path = folder / "outbox.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_two_instances_on_one_redis_serve_one_call(tmp_path: Path, app_redis_url: str) -> None:
    env = {"MFA_STORE": app_redis_url, "MFA_OUTBOX": str(tmp_path / "outbox.jsonl")}
    one = AgentProcess(env, tmp_path / "one.log")
    two = AgentProcess(env, tmp_path / "two.log")
    await asyncio.gather(one.start(), two.start())
    try:
        async with aiohttp.ClientSession() as http:
            platform = FakePlatform(http, one.base_url, one.auth, caller_id_num=CALLER)
            await platform.start_call()
            await platform.call("send_mfa")
            # The load balancer sends the next request to the other instance.
            platform.urls["verify_mfa"] = on_instance(platform.urls["verify_mfa"], two)
            code = code_in_outbox_body(read_outbox_of(tmp_path)[-1]["body"])
            verified = await platform.call("verify_mfa", token=code)
            assert actions(verified, "set_meta_data") == [{"verified": True}], two.log()

            # A repeated request that reaches both instances at once sends one message.
            other = FakePlatform(http, one.base_url, one.auth, caller_id_num="+12025550188")
            await other.start_call()
            payload = other.payload("send_mfa", {})
            url_two = on_instance(other.urls["send_mfa"], two)
            answers = await asyncio.gather(
                *(
                    http.post(url, json=payload)
                    for url in (other.urls["send_mfa"], url_two, other.urls["send_mfa"], url_two)
                )
            )
            bodies = [await answer.json() for answer in answers]
            assert all(answer.status == 200 for answer in answers)
            assert all(body == bodies[0] for body in bodies), bodies
            sent_to_other = [m for m in read_outbox_of(tmp_path) if m["to"] == "+12025550188"]
            assert len(sent_to_other) == 1
    finally:
        await asyncio.gather(one.stop(), two.stop())

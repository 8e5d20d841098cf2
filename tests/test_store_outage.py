"""The store goes away and comes back: clear answers, readiness red, recovery without a restart."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.platform import FakePlatform, RunningAgent, free_port, serve_agent, settings_for
from tests.processes import RedisServer

CALLER = "+12025550143"


async def ready(http: aiohttp.ClientSession, agent: RunningAgent) -> int:
    async with http.get(f"{agent.base_url}/ready", auth=agent.auth) as resp:
        return resp.status


async def wait_ready(http: aiohttp.ClientSession, agent: RunningAgent, status: int) -> None:
    # Probing /ready until it turns is exactly what an orchestrator does; bounded by a deadline.
    async with asyncio.timeout(10):
        while await ready(http, agent) != status:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_a_redis_outage_is_said_plainly_and_recovered_from(tmp_path: Any) -> None:
    redis = RedisServer(free_port())
    redis.start()
    try:
        settings = settings_for(tmp_path, mfa_store=redis.url)
        async with serve_agent(settings) as agent, aiohttp.ClientSession() as http:
            platform = FakePlatform(http, agent.base_url, agent.auth, caller_id_num=CALLER)
            await platform.start_call()
            assert await ready(http, agent) == 200

            redis.stop()
            await wait_ready(http, agent, 503)
            async with asyncio.timeout(10):  # answered within the platform's patience
                down = await platform.call("send_mfa")
            assert "not answering right now" in down["response"]

            redis.start()
            await wait_ready(http, agent, 200)
            back = await platform.call("send_mfa", channel="sms")
            assert "ending in 0143" in back["response"]
    finally:
        redis.stop()

"""A function token is good for the call it was issued for, and for no other.

The platform fetches the SWML once per call and gets each function's URL with
a token signed for that call's id; every request it then posts carries the
same call id. A request that names another call is not the platform's: it
must not run, or a token from one call would buy fresh per-call limits for
as many made-up calls as anyone cares to name.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import aiohttp

from tests.platform import FakePlatform, read_outbox, serve_agent, settings_for

CALLER = "+12025550143"
REFUSED = "the security token for this function is invalid or expired"


async def test_a_token_is_refused_for_any_call_but_its_own(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    async with serve_agent(settings) as agent, aiohttp.ClientSession() as http:
        call_a = FakePlatform(http, agent.base_url, agent.auth, caller_id_num=CALLER)
        await call_a.start_call()

        # Call A's URL and token, another call's id, and A named as the conversation.
        forged = call_a.payload("send_mfa", {})
        forged["call_id"] = str(uuid.uuid4())
        forged["conversation_id"] = call_a.call_id
        refused = await call_a.post("send_mfa", forged)

        assert REFUSED in refused["response"]
        assert "action" not in refused or refused["action"] == []
        assert read_outbox(settings) == []

        honest = await call_a.call("send_mfa")
        assert "ending in 0143" in honest["response"]
        assert len(read_outbox(settings)) == 1

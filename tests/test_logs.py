"""No code, API token, password or full phone number in any log line, even at debug."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import pytest

from tests.fakes.signalwire_api import make_fake_signalwire
from tests.platform import PASSWORD, FakePlatform, serve_agent, signalwire_settings

CALLER = "+12025550143"
API_TOKEN = "PT-api-token-4b9d0c1e7f"


async def test_every_flow_at_debug_logs_no_secret(
    aiohttp_server: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    fake = make_fake_signalwire(api_token=API_TOKEN)
    server = await aiohttp_server(fake.app)
    settings = signalwire_settings(
        tmp_path,
        server.port,
        signalwire_api_token=API_TOKEN,
        log_level="DEBUG",
        mfa_destinations="any",
    )
    codes: list[str] = []
    async with serve_agent(settings) as agent, aiohttp.ClientSession() as http:
        platform = FakePlatform(http, agent.base_url, agent.auth, caller_id_num=CALLER)
        await platform.start_call()
        await platform.call("send_mfa")
        codes.append(fake.code_for(fake.sent[-1]["id"]))
        await platform.call("verify_mfa", token="000000" if codes[-1] != "000000" else "111111")
        await platform.call("verify_mfa", token=codes[-1])
        refused = FakePlatform(http, agent.base_url, agent.auth, caller_id_num=CALLER)
        await refused.start_call()
        await refused.call("send_mfa", phone_number="+19005550123")  # premium-rate: refused
        fake.fail_next("422", path_prefix="/api/relay/rest/mfa")  # its refusal quotes a number
        await refused.call("send_mfa", phone_number="+14155550123")
        fake.fail_next("500", path_prefix="/api/relay/rest/mfa")
        await refused.call("send_mfa", phone_number="+14155550124")
        async with http.get(f"{agent.base_url}/", auth=aiohttp.BasicAuth("tester", "wrong-password")):
            pass

    out, err = capfd.readouterr()
    # The fake SignalWire's own access log is SignalWire's side (a lookup's path holds the
    # number there, as it does at SignalWire); every line of ours is checked.
    ours = [caplog.handler.format(record) for record in caplog.records if record.name != "aiohttp.access"]
    logged = "\n".join([*ours, out, err])
    assert "verify_mfa" in logged or "swaig" in logged  # debug logging really ran
    forbidden = [
        API_TOKEN,
        PASSWORD,
        "wrong-password",
        CALLER,
        CALLER[1:],
        "2025550143",
        "4155550123",
        "4155550124",
        "9005550123",
        "5550001234",
        *codes,
    ]
    leaked = [secret for secret in forbidden if secret in logged]
    assert leaked == [], leaked

"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright.

No browser is downloaded: Playwright's Python package drives the system's
`/usr/bin/chromium` (`apt-get install chromium`; scripts/test.sh installs it).
Under CI=true a missing browser fails the suite; elsewhere the test is skipped.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engine.models import Event
from tests.platform import PASSWORD, USER, FakePlatform, last_code, serve_agent, settings_for, user_events

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 10_000


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required under CI=true)")
    pytest.skip(reason)


@pytest.fixture
def chromium() -> str:
    """The system Chromium's path, once Playwright and the browser are both there."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        _missing("the playwright package is not installed (pip install -r requirements-dev.txt)")
    if not Path(CHROMIUM).exists():
        _missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Any]:
    """Headless system Chromium under Playwright."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()


async def test_the_dashboard_shows_a_verification_go_from_sent_to_verified_across_a_reconnect(
    tmp_path: Path, browser: Any
) -> None:
    from playwright.async_api import expect

    settings = settings_for(tmp_path)
    context = await browser.new_context(http_credentials={"username": USER, "password": PASSWORD})
    page = await context.new_page()
    connection = page.locator("#connection")
    async with aiohttp.ClientSession() as http:
        async with serve_agent(settings) as agent:
            await page.goto(f"{agent.base_url}/dashboard?agent_id=mfa")
            await expect(page.locator("#agent-id")).to_have_value("mfa")
            await expect(connection).to_have_attribute("data-state", "live", timeout=WAIT_MS)
            await expect(connection).to_contain_text("Live")

            platform = FakePlatform(http, agent.base_url, agent.auth, caller_id_num="+12025550143")
            await platform.start_call()
            sent = user_events(await platform.call("send_mfa"))[0]
            row = page.locator(f'tr[data-verification-id="{sent["verification_id"]}"]')
            await expect(row).to_have_attribute("data-status", "sent", timeout=WAIT_MS)
            await expect(row.locator(".status")).to_have_text("Sent")
            await expect(row.locator(".to")).to_have_text("***0143")
            await expect(row.locator(".channel")).to_have_text("sms")
            await expect(row.locator(".attempts")).to_have_text("3")
            await expect(page.locator("#count-sent")).to_have_text("1")

            # Whatever an event carries is shown as text, never run as markup.
            hostile = "<img src=x onerror=\"document.body.dataset.pwned='1'\">"
            await agent.runtime.publisher.publish(
                Event(type="mfa.send_failed", origin="call", agent_id="mfa", reason=hostile)
            )
            await expect(page.locator("td.reason", has_text="onerror")).to_have_text(hostile, timeout=WAIT_MS)
            assert await page.locator("#rows img").count() == 0
            assert await page.evaluate("document.body.dataset.pwned") is None
            await expect(page.locator("#count-send_failed")).to_have_text("1")

            wrong = "000000" if last_code(settings) != "000000" else "111111"
            await platform.call("verify_mfa", token=wrong)
            await expect(row.locator(".status")).to_have_text("Rejected (2 left)", timeout=WAIT_MS)

        # The agent is gone: the page says so plainly.
        await expect(connection).to_have_attribute("data-state", "reconnecting", timeout=WAIT_MS)
        await expect(page.locator("#banner")).to_contain_text("Live updates stopped")

        # It comes back on the same address and store; the page reconnects by itself.
        async with serve_agent(settings) as agent:
            await expect(connection).to_have_attribute("data-state", "live", timeout=WAIT_MS)
            await expect(page.locator("#banner")).to_be_hidden()
            await platform.call("verify_mfa", token=last_code(settings))
            await expect(row).to_have_attribute("data-status", "verified", timeout=WAIT_MS)
            await expect(row.locator(".status")).to_have_text("Verified")
            await expect(page.locator("#count-verified")).to_have_text("1")
            await expect(page.locator("#count-sent")).to_have_text("0")
            await expect(page.locator("#count-rejected")).to_have_text("0")
            assert await page.locator("#rows tr").count() == 2  # the verification and the failed send
    await context.close()

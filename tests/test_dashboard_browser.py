"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright.

No browser is downloaded: Playwright's Python package drives the system's
`/usr/bin/chromium` (`apt-get install chromium`; scripts/test.sh installs it).
Under CI=true a missing browser fails the suite; elsewhere the test is skipped.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from engine.models import Event
from tests.platform import (
    PASSWORD,
    USER,
    FakePlatform,
    RunningAgent,
    last_code,
    serve_agent,
    settings_for,
    user_events,
)

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
# A phone's first screen: 390 px wide, 664 px of it left below the browser's own bars.
PHONE = (390, 664)
# A zone with a half-hour offset and no daylight saving: local times differ visibly from UTC.
TIME_ZONE = "Asia/Kolkata"
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Every reason code the engine puts on an event: each must read as words, not as the code.
ENGINE_REASONS = (
    # the number (engine/phone.py)
    "invalid",
    "region_not_allowed",
    "premium_rate",
    "shared_cost",
    "non_geographic",
    "not_a_phone",
    # a limit (engine/limits.py)
    "call_locked",
    "sends_per_call",
    "sends_per_number_per_hour",
    "sends_per_agent_per_minute",
    "sends_per_minute",
    "failures_per_number_per_day",
    # SignalWire or the circuit breaker (an upstream error's kind)
    "server_error",
    "rate_limited",
    "bad_response",
    "connection",
    "timeout",
    "unauthorized",
    "refused",
    "circuit_open",
    # why a code was locked or expired
    "max_attempts",
    "call_failures",
    "number_failures",
    "provider",
    # a new code by a call after a text that did not arrive (engine/follow_up.py)
    "fallback",
    # the SMS pumping guard (engine/fraud.py)
    "fraud_suspected",
    "new_country_budget",
    "fraud_blocked",
)


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


async def open_dashboard(browser: Any, agent: RunningAgent, agent_id: str, width: int, height: int) -> Any:
    """A page watching ``agent_id`` at that viewport, live; its context closes with the browser."""
    from playwright.async_api import expect

    context = await browser.new_context(
        http_credentials={"username": USER, "password": PASSWORD},
        viewport={"width": width, "height": height},
        timezone_id=TIME_ZONE,
    )
    page = await context.new_page()
    await page.goto(f"{agent.base_url}/dashboard?agent_id={agent_id}")
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    return page


def shown_time(at: str) -> str:
    """How the page writes ``at`` in TIME_ZONE: "26 Nov 19:35:12", with the year only if not this one."""
    local = datetime.fromisoformat(at).astimezone(ZoneInfo(TIME_ZONE))
    year = "" if local.year == datetime.now(ZoneInfo(TIME_ZONE)).year else f" {local.year}"
    return f"{local.day} {MONTHS[local.month - 1]}{year} {local:%H:%M:%S}"


async def test_the_dashboard_shows_reasons_in_words_dates_whole_ids_and_the_origin(
    tmp_path: Path, browser: Any
) -> None:
    from playwright.async_api import expect

    settings = settings_for(tmp_path)
    async with aiohttp.ClientSession() as http, serve_agent(settings) as agent:
        page = await open_dashboard(browser, agent, "mfa", 1280, 800)

        # A verification on a call: its origin, its whole ids, its time with the date.
        platform = FakePlatform(http, agent.base_url, agent.auth, caller_id_num="+12025550143")
        await platform.start_call()
        sent = user_events(await platform.call("send_mfa"))[0]
        on_call = page.locator(f'tr[data-verification-id="{sent["verification_id"]}"]')
        await expect(on_call.locator(".origin")).to_have_text("Call", timeout=WAIT_MS)
        await expect(on_call.locator("code.call")).to_have_text(platform.call_id)
        await expect(on_call.locator("code.verification")).to_have_text(sent["verification_id"])
        last = on_call.locator("time.last")
        await expect(last).to_have_text(shown_time(sent["at"]))
        await expect(last).to_have_attribute("datetime", sent["at"])
        await expect(last).to_have_attribute("title", sent["at"])

        # One from the HTTP API: no call, and three wrong codes lock it.
        auth = aiohttp.BasicAuth(USER, PASSWORD)
        url = f"{agent.base_url}/verifications"
        async with http.post(url, json={"to": "+12025550161"}, auth=auth) as response:
            assert response.status == 201
            started = await response.json()
        by_api = page.locator(f'tr[data-verification-id="{started["id"]}"]')
        await expect(by_api.locator(".origin")).to_have_text("API", timeout=WAIT_MS)
        assert await by_api.locator("code.call").count() == 0
        wrong = "000000" if last_code(settings) != "000000" else "111111"
        for _ in range(3):
            async with http.post(f"{url}/{started['id']}/check", json={"code": wrong}, auth=auth) as response:
                assert response.status == 200
        await expect(by_api).to_have_attribute("data-status", "locked", timeout=WAIT_MS)
        await expect(by_api.locator(".reason")).to_have_text("Too many wrong codes for this code")
        await expect(by_api.locator(".reason")).to_have_attribute("data-reason", "max_attempts")

        # A number the engine refuses: a failed send of its own, in words.
        async with http.post(url, json={"to": "+1 900 555 0123"}, auth=auth) as response:
            assert response.status == 422
        refused = page.locator('td.reason[data-reason="premium_rate"]')
        await expect(refused).to_have_text("Premium-rate number", timeout=WAIT_MS)

        # Every reason the engine gives reads as words; one the page does not know is shown as it came.
        publish = agent.runtime.publisher.publish
        for reason in ENGINE_REASONS:
            await publish(Event(type="mfa.send_failed", origin="workflow", agent_id="mfa", reason=reason))
        await publish(Event(type="mfa.send_failed", origin="workflow", agent_id="mfa", reason="brand_new"))
        unknown = page.locator('td.reason[data-reason="brand_new"]')
        await expect(unknown).to_have_text("brand_new", timeout=WAIT_MS)
        await expect(unknown).to_have_class("reason unknown")
        for reason in ENGINE_REASONS:
            cell = page.locator(f'td.reason[data-reason="{reason}"]').first
            await expect(cell).not_to_have_class("reason unknown")
            assert (await cell.text_content() or "").strip() not in ("", reason), reason
        await expect(page.locator('td.origin[data-origin="workflow"]').first).to_have_text("Walkthrough")
        assert await page.evaluate("document.documentElement.scrollWidth <= innerWidth")


async def test_an_agent_id_without_events_says_so_and_offers_the_ones_with_events(
    tmp_path: Path, browser: Any
) -> None:
    from playwright.async_api import expect

    async with aiohttp.ClientSession() as http, serve_agent(settings_for(tmp_path)) as agent:
        platform = FakePlatform(http, agent.base_url, agent.auth, caller_id_num="+12025550143")
        await platform.start_call()
        sent = user_events(await platform.call("send_mfa"))[0]

        page = await open_dashboard(browser, agent, "mfaa", 1280, 800)
        empty = page.locator("#empty")
        await expect(empty).to_have_attribute("data-hint", "unknown-agent", timeout=WAIT_MS)
        await expect(empty).to_contain_text("No events for agent “mfaa” yet.")
        await expect(empty).to_contain_text("check the agent ID")
        suggestion = empty.locator('button[data-agent-id="mfa"]')
        await expect(suggestion).to_have_text("mfa")

        await suggestion.click()
        await expect(page.locator("#agent-id")).to_have_value("mfa")
        await expect(page.locator(f'tr[data-verification-id="{sent["verification_id"]}"]')).to_be_visible(
            timeout=WAIT_MS
        )
        await expect(empty).to_be_hidden()


async def test_on_a_phone_the_page_fits_the_width_and_the_first_screen_shows_a_verification(
    tmp_path: Path, browser: Any
) -> None:
    from playwright.async_api import expect

    async with aiohttp.ClientSession() as http, serve_agent(settings_for(tmp_path)) as agent:
        width, height = PHONE
        page = await open_dashboard(browser, agent, "mfa", width, height)
        await expect(page.locator("#empty")).to_be_visible()
        assert await page.evaluate("document.documentElement.scrollWidth <= innerWidth")

        platform = FakePlatform(http, agent.base_url, agent.auth, caller_id_num="+12025550143")
        await platform.start_call()
        sent = user_events(await platform.call("send_mfa"))[0]
        row = page.locator(f'tr[data-verification-id="{sent["verification_id"]}"]')
        await expect(row.locator(".status")).to_have_text("Sent", timeout=WAIT_MS)

        assert await page.evaluate("document.documentElement.scrollWidth <= innerWidth")
        # The whole row, on the first screen, as wide as the screen at most (a card, not a wide table row).
        box = await row.bounding_box()
        assert box is not None, "the row has no box"
        assert box["y"] >= 0 and box["y"] + box["height"] <= height, box
        assert box["x"] >= 0 and box["x"] + box["width"] <= width, box
        # The ids are whole and inside the screen, not cut or scrolled off to the side.
        for code, value in (("call", platform.call_id), ("verification", sent["verification_id"])):
            await expect(row.locator(f"code.{code}")).to_have_text(value)
            id_box = await row.locator(f"code.{code}").bounding_box()
            assert id_box is not None and id_box["x"] + id_box["width"] <= width, (code, id_box)
        for shown in (".to", ".channel", ".origin", "time.last"):
            await expect(row.locator(shown)).to_be_visible()


def on_call(type_: str, verification_id: str, **fields: Any) -> Event:
    """An event of a verification on a call to ***0143, as the engine raises them."""
    base = {"origin": "call", "agent_id": "mfa", "to": "***0143", "attempts_left": 3, "channel": "sms"}
    return Event.model_validate({**base, "type": type_, "verification_id": verification_id, **fields})


async def test_each_texts_delivery_shows_beside_its_channel_on_a_wide_screen_and_a_phone(
    tmp_path: Path, browser: Any
) -> None:
    from playwright.async_api import expect

    async with serve_agent(settings_for(tmp_path)) as agent:
        publish = agent.runtime.publisher.publish
        shots = tmp_path / "screens"
        shots.mkdir()
        for width, height in ((1280, 800), PHONE):
            page = await open_dashboard(browser, agent, "mfa", width, height)
            arrived_id, lost_id, unseen_id = (f"{name}-{width}" for name in ("arrived", "lost", "unseen"))
            for verification_id in (arrived_id, lost_id):
                await publish(on_call("mfa.sent", verification_id))
            arrived = page.locator(f'tr[data-verification-id="{arrived_id}"]')
            lost = page.locator(f'tr[data-verification-id="{lost_id}"]')
            await expect(arrived.locator(".channel")).to_have_text("sms", timeout=WAIT_MS)
            assert await arrived.locator(".delivery").count() == 0  # nothing reported yet: nothing said

            await publish(on_call("mfa.delivered", arrived_id))
            await expect(arrived.locator(".delivery")).to_have_text("Text delivered", timeout=WAIT_MS)
            await expect(arrived.locator(".delivery")).to_have_attribute("data-delivery", "delivered")
            await expect(arrived.locator(".status")).to_have_text("Sent")  # the status is the code's

            await publish(on_call("mfa.undelivered", lost_id, reason="undelivered", error_code="30003"))
            await publish(on_call("mfa.sent", lost_id, channel="call", reason="fallback"))
            delivery = lost.locator(".delivery")
            await expect(delivery).to_have_text("Text not delivered (carrier error 30003)", timeout=WAIT_MS)
            await expect(lost.locator(".channel")).to_have_text("call")
            await expect(lost.locator(".reason")).to_have_text(
                "The text did not arrive in time: a new code went by a call"
            )
            shown = "element => getComputedStyle(element).color"
            assert await delivery.evaluate(shown) != await arrived.locator(".delivery").evaluate(shown)

            # A failed text, reported for a verification the page never saw sent.
            await publish(
                on_call("mfa.undelivered", unseen_id, reason="failed", error_code="30006", status="pending")
            )
            unseen = page.locator(f'tr[data-verification-id="{unseen_id}"]')
            await expect(unseen.locator(".delivery")).to_have_text(
                "Text not sent (carrier error 30006)", timeout=WAIT_MS
            )
            await expect(unseen.locator(".status")).to_have_text("Sent")

            assert await page.evaluate("document.documentElement.scrollWidth <= innerWidth")
            if (width, height) == PHONE:
                box = await lost.bounding_box()
                assert box is not None and box["x"] + box["width"] <= width, box
                # The longest delivery words wrap beside the attempts, never under them.
                words, attempts = (
                    await delivery.bounding_box(),
                    await lost.locator(".attempts").bounding_box(),
                )
                assert words is not None and attempts is not None
                assert (
                    words["x"] + words["width"] <= attempts["x"]
                    or words["y"] >= attempts["y"] + attempts["height"]
                )
            await page.screenshot(path=str(shots / f"delivery-{width}.png"), full_page=True)
            await page.close()


# -- the SMS pumping guard's panel: held prefixes beside the live table ---------------------------

SCREENSHOTS = os.environ.get("DASHBOARD_SCREENSHOTS")  # a folder to keep the pictures in, to look at


async def trip_a_hold(http: aiohttp.ClientSession, agent: RunningAgent, sends: int) -> None:
    """Unconverted codes to one prefix (+1 312 5...) until the guard holds it."""
    url = f"{agent.base_url}/verifications"
    for n in range(sends + 1):
        async with http.post(url, json={"to": f"+1312555{n:04d}"}, auth=agent.auth) as response:
            assert response.status == (201 if n < sends else 429)


@pytest.mark.parametrize("viewport", [(1280, 800), PHONE], ids=["1280px", "390px"])
async def test_a_prefix_the_guard_holds_shows_at_once_as_pictures_with_numbers_beside_them(
    tmp_path: Path, browser: Any, viewport: tuple[int, int]
) -> None:
    from playwright.async_api import expect

    settings = settings_for(tmp_path, mfa_fraud_min_sends=3)
    async with aiohttp.ClientSession() as http, serve_agent(settings) as agent:
        width, height = viewport
        page = await open_dashboard(browser, agent, "mfa", width, height)
        panel = page.locator("#holds")
        await expect(panel).to_be_hidden()  # nothing held: no panel

        await trip_a_hold(http, agent, 3)

        # The event brings it in without waiting for the next refresh.
        hold = panel.locator('li.hold[data-prefix="+13125"]')
        await expect(hold).to_be_visible(timeout=WAIT_MS)
        await expect(hold.locator(".prefix")).to_have_text("+13125")
        await expect(hold.locator(".country")).to_have_text("United States")
        await expect(hold.locator(".region")).to_have_text("US")
        await expect(hold.locator(".entered .words")).to_have_text("0 of 3 codes entered")
        await expect(hold.locator(".left .words")).to_contain_text("1 h left")
        entered = await hold.locator(".entered .fill").bounding_box()
        left, track = (
            await hold.locator(".left .fill").bounding_box(),
            await hold.locator(".left .hold-bar").bounding_box(),
        )
        assert entered is not None and entered["width"] == 0  # none of them entered
        assert (
            left is not None and track is not None and left["width"] == pytest.approx(track["width"], abs=2)
        )
        # The refused send's row reads in words.
        reason = page.locator('td.reason[data-reason="fraud_suspected"]')
        await expect(reason).to_have_text("Number's range is held: too few codes entered there")

        assert await page.evaluate("document.documentElement.scrollWidth <= innerWidth")
        box = await hold.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, box
        if SCREENSHOTS:
            await page.screenshot(path=f"{SCREENSHOTS}/holds-{width}.png", full_page=True)

        # Released through the API: gone from the panel on the next read.
        async with http.delete(f"{agent.base_url}/fraud/holds/%2B13125", auth=agent.auth) as response:
            assert response.status == 200
        await page.reload()
        await expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        await expect(panel).to_be_hidden()

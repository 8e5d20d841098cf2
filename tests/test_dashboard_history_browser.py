"""The dashboard's last hour and history in a real browser (Debian's Chromium under
Playwright, as in tests/test_dashboard_browser.py), at 1280 px and on a 390 px phone.

The agent's store is seeded with a known last hour (sends a few minutes apart, each ended
a known way), so the chart, the figures beside it and the history's pages have known
answers; then a code sent through the API shows up without a reload.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engine.models import Status, Verification
from engine.stores import Store
from tests.platform import last_code, serve_agent, settings_for
from tests.test_dashboard_browser import PHONE, WAIT_MS, browser, chromium, open_dashboard

__all__ = ["browser", "chromium"]  # the fixtures this module uses, imported from there

COUNTRIES = {"US": "+1202555", "GB": "+447400", "FR": "+336123"}
# (minutes ago, country, how it ended, seconds to end): 12 sent in the last hour.
SEEDED = [
    (55, "US", Status.APPROVED, 12),
    (50, "US", Status.APPROVED, 22),
    (45, "GB", Status.APPROVED, 28),
    (40, "GB", Status.EXPIRED, 600),
    (35, "US", Status.APPROVED, 44),
    (30, "FR", Status.MAX_ATTEMPTS_REACHED, 40),
    (25, "US", Status.APPROVED, 70),
    (20, "US", Status.CANCELED, 30),
    (15, "GB", Status.APPROVED, 8),
    (10, "US", Status.APPROVED, 15),
    (5, "FR", Status.PENDING, 0),
    (5, "US", Status.APPROVED, 25),
]


async def seed(store: Store, agent_id: str = "mfa") -> list[Verification]:
    now = time.time()
    made = []
    for index, (minutes_ago, country, ending, seconds) in enumerate(SEEDED):
        created = now - minutes_ago * 60 - index  # distinct times, newest last
        verification = Verification(
            id=str(uuid.uuid4()),
            to=f"{COUNTRIES[country]}{index:06d}",
            channel="sms",
            max_attempts=3,
            created_at=created,
            expires_at=created + 600,
            updated_at=created,
            agent_id=agent_id,
            country=country,
            provider="local",
            origin="api",
        )
        await store.create_verification(verification)
        if ending is not Status.PENDING:
            await store.transition(verification.id, ending, created + seconds)
        made.append(verification)
    return made


async def fits_the_width(page: Any) -> bool:
    return bool(await page.evaluate("document.documentElement.scrollWidth <= innerWidth"))


async def test_the_last_hour_is_drawn_with_its_figures_and_follows_new_codes(
    tmp_path: Path, browser: Any
) -> None:
    from playwright.async_api import expect

    async with aiohttp.ClientSession() as http, serve_agent(settings_for(tmp_path)) as agent:
        await seed(agent.runtime.store)
        await seed(agent.runtime.store, agent_id="other-agent")  # never counted here
        page = await open_dashboard(browser, agent, "mfa", 1280, 900)
        panel = page.locator("#last-hour")
        await expect(panel).to_have_attribute("data-state", "loaded", timeout=WAIT_MS)

        # The picture: a bar per minute, each as tall as its codes, coloured by outcome.
        bars = page.locator("#last-hour-chart g.bar")
        assert await bars.count() == 60
        assert sum([int(await bar.get_attribute("data-sent") or 0) for bar in await bars.all()]) == 12
        assert await page.locator('#last-hour-chart rect.segment[data-outcome="approved"]').count() >= 7
        for outcome in ("expired", "max_attempts_reached", "canceled", "pending"):
            assert await page.locator(f'#last-hour-chart rect.segment[data-outcome="{outcome}"]').count() == 1
        busy = page.locator("#last-hour-chart g.bar:not([data-sent='0'])").first
        await expect(busy.locator("title")).to_contain_text("1 sent (1 verified)")

        # The figures beside it. Approvals took 8, 12, 15, 22, 25, 28, 44, 70 s: the median
        # (the 4th, 22 s) is in the bin (20, 25], the 95th percentile (70 s) in (60, 75].
        await expect(page.locator("#figure-sent")).to_have_text("12")
        await expect(page.locator("#figure-conversion")).to_have_text("67%")
        await expect(page.locator("#figure-approved")).to_have_text("8 of 12 codes sent")
        await expect(page.locator("#figure-median")).to_have_text("≤ 25 s")
        await expect(page.locator("#figure-p95")).to_have_text("median; 95% ≤ 75 s")
        countries = page.locator("#figure-countries li")
        await expect(countries).to_have_count(3)
        await expect(countries.nth(0)).to_have_attribute("data-country", "US")
        await expect(countries.nth(0).locator(".bar-figure")).to_have_text("86% of 7")

        # A code sent now shows up by itself (the live event makes the chart ask again).
        async with http.post(
            f"{agent.base_url}/verifications", json={"to": "+12025550143"}, auth=agent.auth
        ) as sent:
            assert sent.status == 201
            started = await sent.json()
        await expect(page.locator("#figure-sent")).to_have_text("13", timeout=WAIT_MS)
        async with http.post(
            f"{agent.base_url}/verifications/{started['id']}/check",
            json={"code": last_code(agent.settings)},
            auth=agent.auth,
        ) as checked:
            assert checked.status == 200
        await expect(page.locator("#figure-approved")).to_have_text("9 of 13 codes sent", timeout=WAIT_MS)
        assert await fits_the_width(page)


async def test_the_history_filters_and_pages(tmp_path: Path, browser: Any) -> None:
    from playwright.async_api import expect

    async with serve_agent(settings_for(tmp_path)) as agent:
        for _ in range(3):
            await seed(agent.runtime.store)  # 36 verifications: two pages of 25
        page = await open_dashboard(browser, agent, "mfa", 1280, 900)
        rows = page.locator("#history-rows tr")
        await expect(rows).to_have_count(25, timeout=WAIT_MS)
        await expect(page.locator("#history-totals")).to_contain_text("36 sent, 67% verified")
        first = await rows.first.get_attribute("data-history-id")

        older, newer = page.locator("#history-older"), page.locator("#history-newer")
        await expect(newer).to_be_disabled()
        await older.click()
        await expect(rows).to_have_count(11, timeout=WAIT_MS)
        await expect(page.locator("#history-page")).to_have_text("Page 2")
        await expect(older).to_be_disabled()
        seen_second = {await row.get_attribute("data-history-id") for row in await rows.all()}
        assert first not in seen_second
        await newer.click()
        await expect(rows.first).to_have_attribute("data-history-id", first or "", timeout=WAIT_MS)

        # Filters: a status and a country, together.
        form = page.locator("#history-form")
        await form.locator('select[name="status"]').select_option("approved")
        await form.locator('input[name="country"]').fill("gb")
        await form.locator('button[type="submit"]').click()
        await expect(rows).to_have_count(6, timeout=WAIT_MS)  # two approved in GB, three times
        for row in await rows.all():
            await expect(row.locator(".badge")).to_have_text("Verified")
            await expect(row.locator(".channel")).to_contain_text("GB")
        await expect(page.locator("#history-totals")).to_contain_text("6 sent, 100% verified")

        # A country the server does not know: its words, not a broken page.
        await form.locator('input[name="country"]').fill("ZZ")
        await form.locator('button[type="submit"]').click()
        await expect(page.locator("#history-error")).to_contain_text("country", timeout=WAIT_MS)
        await form.locator('button[type="reset"]').click()
        await expect(page.locator("#history-error")).to_be_hidden(timeout=WAIT_MS)
        await expect(rows).to_have_count(25, timeout=WAIT_MS)

        # Another agent's history is its own: none here.
        await page.locator("#agent-id").fill("nobody")
        await page.locator("#agent-form button").click()
        await expect(page.locator("#history-empty")).to_be_visible(timeout=WAIT_MS)
        await expect(page.locator("#figure-sent")).to_have_text("0", timeout=WAIT_MS)


@pytest.mark.parametrize("store_kind", ["sqlite", "redis"])
async def test_on_a_phone_the_chart_and_the_history_fit_below_the_live_verifications(
    tmp_path: Path, browser: Any, store_kind: str, request: pytest.FixtureRequest
) -> None:
    from playwright.async_api import expect

    overrides = {"mfa_store": request.getfixturevalue("app_redis_url")} if store_kind == "redis" else {}
    async with serve_agent(settings_for(tmp_path, **overrides)) as agent:
        await seed(agent.runtime.store)
        width, height = PHONE
        page = await open_dashboard(browser, agent, "mfa", width, height)
        await expect(page.locator("#last-hour")).to_have_attribute("data-state", "loaded", timeout=WAIT_MS)
        await expect(page.locator("#history-rows tr")).to_have_count(12, timeout=WAIT_MS)
        assert await fits_the_width(page)
        for part in ("#last-hour-chart", "#figure-conversion", "#history-form", "#history-rows tr >> nth=0"):
            box = await page.locator(part).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, (part, box)
        # The live verifications come first on a phone, the chart and the history below them.
        live = await page.locator("section.table-wrap").first.bounding_box()
        chart = await page.locator("#last-hour").bounding_box()
        assert live is not None and chart is not None and live["y"] < chart["y"]
        card = page.locator("#history-rows tr").first
        for shown in (".badge", ".to", ".channel", ".origin", "code.verification", "time"):
            await expect(card.locator(shown).first).to_be_visible()

"""The SMS pumping guard (engine/fraud.py), on SQLite and on Redis.

First the store's part of the contract (`WindowStore.hit` with a guard, the
approving `transition`'s counts, `HoldStore`), then the guard as a caller
meets it: through the engine, the agent's `send_mfa`, and the HTTP API.
Times are fake clocks; nothing waits on the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import phonenumbers
import pytest

from config import Settings
from engine.errors import DestinationRefused, ProviderUnavailable
from engine.fraud import HOLD_SECONDS, FraudGuard, FraudSettings, country_windows, prefix_windows
from engine.models import Event, Status, Verification
from engine.phone import checked_destination, number_range
from engine.stores import Store
from engine.stores.guard import HELD, NEW_COUNTRY, CountryBudget, GuardCheck, GuardRefused, Hold
from engine.stores.windows import Refused, Window
from tests.platform import (
    FakeClock,
    FakePlatform,
    RunningAgent,
    last_code,
    record_events,
    serve_agent,
    settings_for,
)
from tests.test_stores import make_verification

# An hour's bucket starts here, so the counts below read the same whatever NOW is.
HOUR_START = 1_800_000_000.0 // 3600 * 3600 + 3600
NOW = HOUR_START + 60


def check_for(prefix: str = "+13125", country: str = "US", **changes: Any) -> GuardCheck:
    """A guard check with small numbers: held at 3 sends with fewer than a third approved."""
    sends, approvals = prefix_windows(prefix)
    country_sends, country_approvals = country_windows(country)
    budget = CountryBudget(country_sends, country_approvals, base=1000, per_approval=3, established_at=3)
    fields: dict[str, Any] = {
        "prefix": prefix,
        "country": country,
        "sends": sends,
        "approvals": approvals,
        "min_sends": 3,
        "min_conversion": 1 / 3,
        "hold_seconds": HOLD_SECONDS,
        "budget": budget,
    }
    return GuardCheck(**(fields | changes))


def verification(**changes: Any) -> Verification:
    """A pending verification to a number in the +1 3125 prefix (the store tests' shape)."""
    fields = {"to": "+13125550100", "created_at": NOW, "expires_at": NOW + 600, "updated_at": NOW}
    return make_verification(**(fields | changes))


async def approve(store: Store, windows: tuple[Window, ...], now: float) -> None:
    """An approval counted by its transition, as the engine counts it."""
    pending = verification()
    await store.create_verification(pending)
    assert await store.transition(pending.id, Status.APPROVED, now, count=windows) is not None


# == The store (WindowStore.hit with a guard, transition's counts, HoldStore) ==


async def test_a_prefix_with_enough_unconverted_sends_is_held_once_for_an_hour(store: Store) -> None:
    guard = check_for()
    for second in range(3):
        assert await store.hit([], NOW + second, guard=guard) is None

    tripped = await store.hit([], NOW + 10, guard=guard)

    hold = Hold("+13125", "US", since=NOW + 10, until=NOW + 10 + HOLD_SECONDS, sends=3, approved=0)
    assert tripped == GuardRefused(HELD, HOLD_SECONDS, hold, raised=True)
    again = await store.hit([], NOW + 20, guard=guard)
    assert again == GuardRefused(HELD, pytest.approx(HOLD_SECONDS - 10), hold, raised=False)
    assert await store.holds(NOW + 20) == [hold]
    # Another prefix keeps sending.
    assert await store.hit([], NOW + 20, guard=check_for("+12025")) is None
    # The hold ends an hour after the trip, on the caller's clock; the refused sends were not
    # counted, so the prefix is not held again at once.
    assert await store.holds(NOW + 10 + HOLD_SECONDS) == []
    assert await store.hit([], NOW + 10 + HOLD_SECONDS, guard=guard) is None


async def test_approvals_counted_by_the_approving_transition_keep_a_prefix_sending(store: Store) -> None:
    guard = check_for()
    for cycle in range(5):  # one approval in three sends: the floor itself
        await approve(store, (guard.approvals,), NOW + 10 * cycle)
        for second in range(3):
            assert await store.hit([], NOW + 10 * cycle + 1 + second, guard=guard) is None
    assert await store.hit([], NOW + 60, guard=guard) is None

    # Sixteen sends, five approvals: under a third now.
    refused = await store.hit([], NOW + 61, guard=guard)
    assert isinstance(refused, GuardRefused) and refused.raised
    assert refused.hold is not None and (refused.hold.sends, refused.hold.approved) == (16, 5)


async def test_a_refused_transition_counts_nothing(store: Store) -> None:
    guard = check_for(min_sends=1, min_conversion=1.0)
    ended = verification()
    await store.create_verification(ended)
    await store.transition(ended.id, Status.EXPIRED, NOW)

    assert await store.transition(ended.id, Status.APPROVED, NOW, count=(guard.approvals,)) is None
    assert await store.hit([], NOW, guard=guard) is None
    assert isinstance(await store.hit([], NOW + 1, guard=guard), GuardRefused)


async def test_parallel_sends_raise_one_hold(store: Store) -> None:
    guard = check_for()
    for second in range(3):
        assert await store.hit([], NOW + second, guard=guard) is None

    answers = await asyncio.gather(*(store.hit([], NOW + 10, guard=guard) for _ in range(40)))

    refused = [answer for answer in answers if isinstance(answer, GuardRefused)]
    assert len(refused) == 40
    assert sum(answer.raised for answer in refused) == 1


async def test_two_instances_raise_one_hold_between_them(make_store: Callable[[], Store]) -> None:
    one, two = make_store(), make_store()
    await one.open()
    await two.open()
    try:
        guard = check_for()
        for second in range(3):
            assert await (one, two)[second % 2].hit([], NOW + second, guard=guard) is None

        answers = await asyncio.gather(*((one, two)[n % 2].hit([], NOW + 10, guard=guard) for n in range(40)))

        assert sum(isinstance(answer, GuardRefused) and answer.raised for answer in answers) == 1
        assert len(await one.holds(NOW + 11)) == len(await two.holds(NOW + 11)) == 1
    finally:
        await one.close()
        await two.close()


async def test_a_hold_outlives_a_restart_of_the_store(make_store: Callable[[], Store]) -> None:
    guard = check_for()
    first = make_store()
    await first.open()
    for second in range(4):
        await first.hit([], NOW + second, guard=guard)
    await first.close()

    again = make_store()
    await again.open()
    try:
        assert [hold.prefix for hold in await again.holds(NOW + 10)] == ["+13125"]
        refused = await again.hit([], NOW + 10, guard=guard)
        assert isinstance(refused, GuardRefused) and not refused.raised
    finally:
        await again.close()


async def test_a_full_window_refuses_before_the_guard_and_a_refusal_counts_nothing(store: Store) -> None:
    number = Window("number", 1, 3600)
    guard = check_for()
    assert await store.hit([number], NOW, guard=guard) is None
    # The number's window refuses: the guard's counts do not move.
    for second in range(5):
        assert await store.hit([number], NOW + 1 + second, guard=guard) == Refused(
            0, pytest.approx(3599 - second)
        )
    assert await store.hit([], NOW + 10, guard=guard) is None
    assert await store.hit([], NOW + 11, guard=guard) is None
    assert isinstance(await store.hit([], NOW + 12, guard=guard), GuardRefused)


async def test_a_send_taken_back_leaves_the_prefix_as_it_was(store: Store) -> None:
    guard = check_for()
    for second in range(10):
        assert await store.hit([], NOW + second, guard=guard) is None
        await store.unhit(guard.counted, NOW + second)  # the provider failed: nothing was sent

    assert await store.hit([], NOW + 20, guard=guard) is None
    assert await store.holds(NOW + 20) == []


async def test_a_new_country_has_a_budget_that_grows_with_its_approvals(store: Store) -> None:
    guard = check_for()
    budget = replace(guard.budget, base=2, per_approval=3, established_at=2)
    guard = replace(guard, budget=budget, min_sends=1000)
    assert await store.hit([], NOW, guard=guard) is None
    assert await store.hit([], NOW + 1, guard=guard) is None

    refused = await store.hit([], NOW + 2, guard=guard)
    # Two sends in this hour's bucket: the budget frees as they leave the window.
    assert isinstance(refused, GuardRefused) and refused.reason == NEW_COUNTRY and not refused.raised
    assert 0 < refused.retry_after <= 2 * 3600

    await approve(store, (budget.approvals,), NOW + 3)  # 2 + 3 x 1
    for second in range(3):
        assert await store.hit([], NOW + 4 + second, guard=guard) is None
    assert isinstance(await store.hit([], NOW + 10, guard=guard), GuardRefused)

    await approve(store, (budget.approvals,), NOW + 11)  # established: no budget any more
    for second in range(20):
        assert await store.hit([], NOW + 12 + second, guard=guard) is None


async def test_a_released_hold_ends_at_once_and_the_prefix_is_judged_afresh(store: Store) -> None:
    guard = check_for()
    for second in range(4):
        await store.hit([], NOW + second, guard=guard)
    assert len(await store.holds(NOW + 5)) == 1

    released = await store.release_hold("+13125", prefix_windows("+13125"), NOW + 5)

    assert released is not None and released.prefix == "+13125" and released.since == NOW + 3
    assert await store.holds(NOW + 5) == []
    assert await store.release_hold("+13125", prefix_windows("+13125"), NOW + 6) is None
    assert await store.release_hold("+19999", prefix_windows("+19999"), NOW + 6) is None
    # Its sends were forgotten: three more go out before it is judged again.
    for second in range(3):
        assert await store.hit([], NOW + 10 + second, guard=guard) is None
    assert isinstance(await store.hit([], NOW + 20, guard=guard), GuardRefused)


async def test_holds_are_listed_newest_first_and_only_while_in_force(store: Store) -> None:
    for offset, prefix in enumerate(("+13125", "+14155", "+16175")):
        guard = check_for(prefix)
        for second in range(4):
            await store.hit([], NOW + 100 * offset + second, guard=guard)

    listed = await store.holds(NOW + 300)

    assert [hold.prefix for hold in listed] == ["+16175", "+14155", "+13125"]
    assert [hold.prefix for hold in await store.holds(NOW + 3 + HOLD_SECONDS + 50)] == ["+16175", "+14155"]
    assert await store.release_hold("+13125", (), NOW + 3 + HOLD_SECONDS + 50) is None  # over already


# == The guard as callers meet it: the engine, the HTTP API, send_mfa ==

NORMAL = "+1202555"  # prefix +12025: people who enter their codes
PUMPED = "+1312555"  # prefix +13125: a range someone pumps


def number(range_: str, n: int) -> str:
    return f"{range_}{n:04d}"


def in_us(raw: str) -> bool:
    try:
        return checked_destination(raw, ()).region == "US"
    except DestinationRefused:
        return False


@dataclass
class Guarded:
    """An agent with a fake clock, its events, and its HTTP API."""

    agent: RunningAgent
    http: aiohttp.ClientSession
    clock: FakeClock
    events: list[Event]

    @property
    def settings(self) -> Settings:
        return self.agent.settings

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
        kwargs.setdefault("auth", self.agent.auth)
        async with self.http.request(method, self.agent.base_url + path, **kwargs) as resp:
            text = await resp.text()
            return resp.status, json.loads(text) if text else None, resp.headers

    async def send(self, to: str) -> tuple[int, Any]:
        status, body, _ = await self.request("POST", "/verifications", json={"to": to})
        return status, body

    async def send_and_verify(self, to: str) -> None:
        status, started = await self.send(to)
        assert status == 201, started
        status, checked, _ = await self.request(
            "POST", f"/verifications/{started['id']}/check", json={"code": last_code(self.settings)}
        )
        assert (status, checked["outcome"]) == (200, "approved")

    def of_type(self, type_: str) -> list[Event]:
        return [event for event in self.events if event.type == type_]

    async def metric(self, line: str) -> float:
        async with self.http.get(self.agent.base_url + "/metrics", auth=self.agent.auth) as resp:
            assert resp.status == 200
            text = await resp.text()
        for row in text.splitlines():
            if row.startswith(line + " "):
                return float(row.rsplit(" ", 1)[1])
        return 0.0


@contextlib.asynccontextmanager
async def guarded(tmp_path: Any, store_url: str, **overrides: Any) -> AsyncIterator[Guarded]:
    clock = FakeClock(NOW)
    settings = settings_for(tmp_path, mfa_store=store_url, **overrides)
    async with serve_agent(settings, clock=clock) as agent, aiohttp.ClientSession() as http:
        yield Guarded(agent, http, clock, record_events(agent.runtime))


async def test_a_pumped_prefix_is_held_while_a_converting_one_keeps_sending(
    tmp_path: Any, store_url: str
) -> None:
    # The defaults as deployed: 20 sends, 0.2 conversion, a new country's 10 sends an hour.
    async with guarded(tmp_path, store_url) as guard:
        answers = []
        for n in range(30):
            guard.clock.now += 1
            await guard.send_and_verify(number(NORMAL, n))
            answers.append(await guard.send(number(PUMPED, n)))

        assert [status for status, _ in answers] == [201] * 20 + [429] * 10
        refused = answers[20][1]["error"]
        assert refused["code"] == "fraud_suspected" and refused["retry_after"] == HOLD_SECONDS
        assert not any(char.isdigit() for char in refused["message"])  # no rule's numbers in it
        # One hold, one event, naming the prefix and not the number.
        (raised,) = guard.of_type("mfa.fraud_suspected")
        assert (raised.prefix, raised.reason, raised.origin, raised.to) == (
            "+13125",
            "fraud_suspected",
            "api",
            None,
        )
        failed = guard.of_type("mfa.send_failed")
        assert [event.reason for event in failed] == ["fraud_suspected"] * 10
        assert {event.to for event in failed} == {f"***{n:04d}" for n in range(20, 30)}
        assert len(guard.of_type("mfa.verified")) == 30
        status, listed, _ = await guard.request("GET", "/fraud/holds")
        assert status == 200
        (hold,) = listed["holds"]
        assert (hold["prefix"], hold["country"], hold["sends"], hold["approved"]) == ("+13125", "US", 20, 0)
        assert hold["reason"] == "fraud_suspected"
        assert await guard.metric("mfa_fraud_holds_total") == 1
        assert await guard.metric('mfa_fraud_refused_sends_total{reason="fraud_suspected"}') == 10

        # An hour after the trip the prefix gets codes again.
        tripped = NOW + 21  # the 21st round
        guard.clock.now = tripped + HOLD_SECONDS - 1
        status, body = await guard.send(number(PUMPED, 40))
        assert (status, body["error"]["retry_after"]) == (429, 1)
        guard.clock.now = tripped + HOLD_SECONDS
        assert (await guard.send(number(PUMPED, 41)))[0] == 201
        assert (await guard.request("GET", "/fraud/holds"))[1] == {"holds": []}
        assert len(guard.of_type("mfa.fraud_suspected")) == 1


async def test_parallel_sends_on_two_instances_raise_one_hold(tmp_path: Any, store_url: str) -> None:
    overrides = {"mfa_fraud_new_country_sends": 100_000}  # this test is about the prefix alone
    async with (
        guarded(tmp_path, store_url, **overrides) as one,
        guarded(tmp_path, store_url, **overrides) as two,
    ):
        for n in range(20):
            assert (await (one, two)[n % 2].send(number(PUMPED, n)))[0] == 201

        answers = await asyncio.gather(*((one, two)[n % 2].send(number(PUMPED, 100 + n)) for n in range(30)))

        assert [status for status, _ in answers] == [429] * 30
        assert len(one.of_type("mfa.fraud_suspected")) + len(two.of_type("mfa.fraud_suspected")) == 1
        assert len(one.of_type("mfa.send_failed")) + len(two.of_type("mfa.send_failed")) == 30


async def test_a_released_hold_lets_codes_through_and_the_prefix_is_judged_afresh(
    tmp_path: Any, store_url: str
) -> None:
    async with guarded(tmp_path, store_url, mfa_fraud_min_sends=3, mfa_fraud_allow=["US"]) as guard:
        # Allowed: never held, however unconverted.
        for n in range(10):
            assert (await guard.send(number(PUMPED, n)))[0] == 201
    async with guarded(tmp_path, store_url, mfa_fraud_min_sends=3) as guard:
        for n in range(3):
            assert (await guard.send(number(PUMPED, 20 + n)))[0] == 201
        assert (await guard.send(number(PUMPED, 23)))[0] == 429

        # Only with credentials; only a prefix as the guard writes it.
        async with guard.http.get(guard.agent.base_url + "/fraud/holds") as resp:
            assert resp.status == 401
        status, body, _ = await guard.request("DELETE", "/fraud/holds/12025550143")
        assert (status, body["error"]["code"]) == (422, "invalid_request")
        status, body, _ = await guard.request("DELETE", "/fraud/holds/%2B12025")
        assert (status, body["error"]["code"]) == (404, "not_found")

        status, released, _ = await guard.request("DELETE", "/fraud/holds/%2B13125")

        assert status == 200 and released["prefix"] == "+13125" and released["sends"] == 3
        assert (await guard.request("GET", "/fraud/holds"))[1] == {"holds": []}
        for n in range(3):
            assert (await guard.send(number(PUMPED, 30 + n)))[0] == 201
        assert (await guard.send(number(PUMPED, 33)))[0] == 429
        assert len(guard.of_type("mfa.fraud_suspected")) == 2


async def test_a_new_countrys_budget_grows_with_its_approvals_until_it_is_established(
    tmp_path: Any, store_url: str
) -> None:
    async with guarded(tmp_path, store_url, mfa_fraud_min_sends=3) as guard:
        # Each number in a prefix of its own (and in the US, not Canada), so the prefix rule stays out.
        numbers = iter(number for number in (f"+1{area}5550100" for area in range(201, 990)) if in_us(number))
        sent = []
        for _ in range(10):
            status, started = await guard.send(next(numbers))
            assert status == 201
            sent.append((started["id"], last_code(guard.settings)))
        status, body = await guard.send(next(numbers))
        assert (status, body["error"]["code"]) == (429, "new_country_budget")
        assert 1 <= body["error"]["retry_after"] <= 2 * 3600
        assert guard.of_type("mfa.send_failed")[-1].reason == "new_country_budget"
        assert guard.of_type("mfa.fraud_suspected") == []

        # One approval: five more (1 / MFA_FRAUD_MIN_CONVERSION).
        verification_id, code = sent[0]
        await guard.request("POST", f"/verifications/{verification_id}/check", json={"code": code})
        for _ in range(5):
            assert (await guard.send(next(numbers)))[0] == 201
        assert (await guard.send(next(numbers)))[0] == 429

        # MFA_FRAUD_MIN_SENDS approvals: established, no budget any more.
        for verification_id, code in sent[1:3]:
            await guard.request("POST", f"/verifications/{verification_id}/check", json={"code": code})
        for _ in range(30):
            assert (await guard.send(next(numbers)))[0] == 201
        # Another country is new all the same.
        in_france = [f"+336{n}345678" for n in range(10, 22)]
        assert {checked_destination(raw, ()).region for raw in in_france} == {"FR"}
        for raw in in_france[:10]:
            assert (await guard.send(raw))[0] == 201
        assert (await guard.send(in_france[10]))[1]["error"]["code"] == "new_country_budget"
        assert await guard.metric('mfa_fraud_refused_sends_total{reason="new_country_budget"}') == 3


async def test_blocked_destinations_never_get_a_code_even_with_the_guard_off(
    tmp_path: Any, store_url: str
) -> None:
    async with guarded(
        tmp_path,
        store_url,
        mfa_fraud_guard=False,
        mfa_fraud_block=["GB", "+13125"],
        mfa_fraud_allow=["+447400"],
    ) as guard:
        status, body = await guard.send("+447500123456")
        assert (status, body["error"]["code"]) == (422, "destination_refused")
        assert (await guard.send(number(PUMPED, 1)))[0] == 422
        assert [event.reason for event in guard.of_type("mfa.send_failed")] == ["fraud_blocked"] * 2
        # The more specific entry wins: an allowed prefix inside a blocked country.
        assert (await guard.send("+447400123456"))[0] == 201
        # Off: no hold, no budget, however many unconverted codes.
        for n in range(40):
            assert (await guard.send(number(NORMAL, n)))[0] == 201
        assert guard.of_type("mfa.fraud_suspected") == []
        assert await guard.metric('mfa_fraud_refused_sends_total{reason="fraud_blocked"}') == 2


async def test_sends_that_fail_upstream_never_make_a_prefix_look_unconverted(
    tmp_path: Any, store_url: str
) -> None:
    async with guarded(tmp_path, store_url, mfa_fraud_min_sends=3, mfa_fraud_new_country_sends=3) as guard:
        engine = guard.agent.runtime.engine
        working = engine.provider

        class Down:
            name = working.name

            async def send(self, request: Any) -> Any:
                raise ProviderUnavailable("down", "server_error")

        engine.provider = Down()  # type: ignore[assignment]
        for n in range(10):
            assert (await guard.send(number(PUMPED, n)))[0] == 503
        engine.provider = working
        guard.clock.now += 60  # past the circuit breaker's cooldown
        for n in range(3):
            assert (await guard.send(number(PUMPED, 10 + n)))[0] == 201
        assert guard.of_type("mfa.fraud_suspected") == []


async def test_send_mfa_tells_the_model_plainly_and_without_the_rules_numbers(
    tmp_path: Any, store_url: str
) -> None:
    async with guarded(tmp_path, store_url, mfa_fraud_min_sends=3) as guard:
        for n in range(3):
            assert (await guard.send(number(PUMPED, n)))[0] == 201
        platform = FakePlatform(
            guard.http, guard.agent.base_url, guard.agent.auth, caller_id_num=number(PUMPED, 7)
        )
        await platform.start_call()

        answer = await platform.call("send_mfa")

        assert answer["response"].startswith("Nothing was sent: codes to this number are paused")
        assert not any(char.isdigit() for char in answer["response"])
        assert "set_meta_data" not in json.dumps(answer.get("action", []))
        (raised,) = guard.of_type("mfa.fraud_suspected")
        assert (raised.origin, raised.call_id) == ("call", platform.call_id)


def test_a_prefix_is_the_calling_code_and_four_digits_and_never_completes_a_masked_number() -> None:
    for raw, prefix, region in (
        ("+12025550143", "+12025", "US"),
        ("+447400123456", "+447400", "GB"),
        ("+33612345678", "+33612", "FR"),  # nine national digits: three
        ("+4520123456", "+4520", "DK"),  # eight: two
        ("+6834002", "+683", "NU"),  # four: the calling code alone
    ):
        destination = checked_destination(raw, ())
        assert (destination.prefix, destination.region) == (prefix, region)
        national = len(raw) - len(str(phonenumbers.parse(raw).country_code)) - 1
        assert len(prefix) - 1 - len(str(phonenumbers.parse(raw).country_code)) <= max(0, national - 6)


def test_the_most_specific_list_entry_decides() -> None:
    guard = FraudGuard(
        None,  # type: ignore[arg-type]  # check() never reaches the store
        FraudSettings(allow=("GB", "+1312"), block=("+44", "+13125", "US")),
    )
    assert guard.check(checked_destination("+447400123456", ())) is None  # GB over +44
    with pytest.raises(DestinationRefused) as blocked:
        guard.check(checked_destination("+447797123456", ()))  # Jersey: +44, not GB
    assert blocked.value.reason == "fraud_blocked"
    with pytest.raises(DestinationRefused):
        guard.check(checked_destination("+13125550100", ()))  # +13125 over +1312
    assert guard.check(checked_destination("+13124550100", ())) is None  # +1312 over US
    with pytest.raises(DestinationRefused):
        guard.check(checked_destination("+12025550143", ()))
    checked = FraudGuard(None, FraudSettings()).check(checked_destination("+33612345678", ()))  # type: ignore[arg-type]
    assert checked is not None and (checked.prefix, checked.country) == ("+33612", "FR")


def test_a_numbers_range_from_its_kept_region_is_the_range_parsing_it_gives() -> None:
    checked = 0
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            try:
                destination = checked_destination(
                    phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164), ()
                )
            except DestinationRefused:
                continue
            assert number_range(destination.e164) == (destination.region, destination.prefix)
            assert number_range(destination.e164, destination.region) == (
                destination.region,
                destination.prefix,
            )
            checked += 1
    assert checked > 300  # mobile and fixed lines of most of the world's regions

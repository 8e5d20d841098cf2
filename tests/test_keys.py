"""Server keys: every instance uses the same ones, also after the store lost them.

The function-token secret and the code key are created once and kept in the
store. When Redis restarts empty, running instances still hold the old keys
and a new instance would make new ones: a right code sent on one would be
"not correct" on another, and function tokens refused across them. Instead,
each instance puts its keys back where none is left (the first writer wins)
and adopts what the store holds, every second, so the fleet agrees again
within seconds, without restarts.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from uuid import uuid4

import aiohttp
import pytest
import redis.asyncio

from engine.keys import CODE_KEY, GRACE_SECONDS, LIMITS_KEY, SWAIG_KEY, KeyRing
from engine.stores import RedisStore
from tests.platform import FakeClock, FakePlatform, actions, code_in_outbox_body, free_port
from tests.processes import AgentProcess, RedisServer
from tests.test_durability import on_instance

REFUSED = "the security token for this function is invalid or expired"
KEY_NAMES = (SWAIG_KEY, CODE_KEY, LIMITS_KEY)
AGREEMENT_DEADLINE = 15.0

# == The key ring against a store that loses its keys (Redis, under a prefix of this test's own) ==


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    prefix = f"test:{uuid4().hex}:"
    yield prefix
    await lose_everything(redis_url, prefix)


async def lose_everything(url: str, prefix: str) -> None:
    """What a Redis restarted without persistence does to the keys under ``prefix``."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def instance_store(redis_url: str, redis_prefix: str) -> AsyncIterator[Callable[[], RedisStore]]:
    """Opened stores on one Redis prefix: one per instance, as separate processes would have."""
    opened: list[RedisStore] = []

    def open_one() -> RedisStore:
        store = RedisStore(redis_url, prefix=redis_prefix)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


async def synced(ring: KeyRing, store: RedisStore) -> KeyRing:
    await store.open()
    await ring.sync(store)
    return ring


def key_set(ring: KeyRing) -> tuple[str, bytes, bytes]:
    return ring.swaig_secret, ring.code_key, ring.limits_key


async def test_the_first_instance_to_notice_a_lost_key_puts_its_own_back(
    instance_store: Callable[[], RedisStore], redis_url: str, redis_prefix: str
) -> None:
    one, two = KeyRing(), KeyRing()
    store_one, store_two = instance_store(), instance_store()
    await synced(one, store_one)
    await synced(two, store_two)
    before = key_set(one)
    assert key_set(two) == before

    await lose_everything(redis_url, redis_prefix)
    await one.sync(store_one)  # puts its keys back
    newcomer = await synced(KeyRing(), instance_store())  # adopts them
    await two.sync(store_two)

    assert key_set(one) == key_set(two) == key_set(newcomer) == before


async def test_an_instance_adopts_the_keys_another_put_back_first(
    instance_store: Callable[[], RedisStore], redis_url: str, redis_prefix: str
) -> None:
    clock = FakeClock(0.0)
    one = KeyRing(clock=clock)
    signer: list[str] = []
    one.on_change(lambda keys: signer.append(keys.swaig_secret))
    store_one = instance_store()
    await synced(one, store_one)
    old_swaig, old_code, _ = key_set(one)
    assert signer == [old_swaig]

    await lose_everything(redis_url, redis_prefix)
    newcomer = await synced(KeyRing(), instance_store())  # first to write into the emptied store
    await one.sync(store_one)

    assert key_set(one) == key_set(newcomer)
    assert one.swaig_secret != old_swaig
    assert signer == [old_swaig, one.swaig_secret]
    # What the instance used before stays accepted for a while, then no more.
    assert one.previous_swaig_secrets() == (old_swaig,)
    assert one.code_keys() == (one.code_key, old_code)
    clock.now += GRACE_SECONDS
    assert one.previous_swaig_secrets() == ()
    assert one.code_keys() == (one.code_key,)


async def test_configured_keys_always_win_and_are_never_stored(
    instance_store: Callable[[], RedisStore], redis_url: str, redis_prefix: str
) -> None:
    stored = await synced(KeyRing(), instance_store())
    swaig, code = "configured-swaig-secret", b"configured-code-key"
    configured = await synced(KeyRing(swaig_secret=swaig, code_key=code), instance_store())

    assert configured.stored_names == ()
    assert configured.swaig_secret == swaig
    assert configured.code_key == code
    assert configured.limits_key == hmac.new(code, LIMITS_KEY.encode(), hashlib.sha256).digest()
    assert configured.previous_swaig_secrets() == ()
    # The store still holds what it held: a configured key is never written, nor replaced.
    assert key_set(await synced(KeyRing(), instance_store())) == key_set(stored)

    # With MFA_CODE_KEY set, no code or limits key is kept in the store at all.
    await lose_everything(redis_url, redis_prefix)
    await synced(KeyRing(code_key=code), instance_store())
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        names = [f"{redis_prefix}secret:{name}" for name in KEY_NAMES]
        assert [bool(await client.exists(name)) for name in names] == [True, False, False]
    finally:
        await client.aclose()


# == The fleet: real processes on a throw-away redis-server that restarts empty ==


async def tokens_refused(
    http: aiohttp.ClientSession, fetched_on: AgentProcess, posted_to: AgentProcess
) -> bool:
    """Whether a function URL from SWML fetched on one instance is refused by another.

    verify_mfa on a call that has sent no code changes nothing, whoever answers.
    """
    platform = FakePlatform(http, fetched_on.base_url, fetched_on.auth)
    await platform.start_call()
    platform.urls["verify_mfa"] = on_instance(platform.urls["verify_mfa"], posted_to)
    answer = await platform.post("verify_mfa", platform.payload("verify_mfa", {"token": "123456"}))
    return REFUSED in answer["response"]


async def until_tokens_agree(http: aiohttp.ClientSession, fleet: list[AgentProcess]) -> None:
    """Probe every pair of instances until each accepts the others' tokens, or fail at the deadline."""
    try:
        async with asyncio.timeout(AGREEMENT_DEADLINE):
            while True:
                pairs = itertools.permutations(fleet, 2)
                if not any([await tokens_refused(http, one, other) for one, other in pairs]):
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        logs = "\n".join(process.log()[-2000:] for process in fleet)
        pytest.fail(f"the instances still refuse each other's tokens after {AGREEMENT_DEADLINE}s:\n{logs}")


async def until_keys_stored(url: str) -> None:
    """Wait until the store holds every server key again, or fail at the deadline."""
    client = redis.asyncio.Redis.from_url(url)
    names = [f"mfa:secret:{name}" for name in KEY_NAMES]
    try:
        async with asyncio.timeout(AGREEMENT_DEADLINE):
            # Polling is all Redis offers here; bounded by the deadline.
            while await client.exists(*names) < len(names):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"no instance put its keys back into the emptied store within {AGREEMENT_DEADLINE}s")
    finally:
        await client.aclose()


def code_sent_to(outbox: Path, number: str) -> str:
    messages = [json.loads(line) for line in outbox.read_text().splitlines()]
    return code_in_outbox_body([m for m in messages if m["to"] == number][-1]["body"])


async def send_on_verify_on(
    platform: FakePlatform, sender: AgentProcess, checker: AgentProcess, outbox: Path
) -> None:
    """A code sent by one instance and read back to another, with the call's own function URLs."""
    platform.urls["send_mfa"] = on_instance(platform.urls["send_mfa"], sender)
    platform.urls["verify_mfa"] = on_instance(platform.urls["verify_mfa"], checker)
    sent = await platform.call("send_mfa")
    assert "ending in" in sent["response"], (sender.log()[-2000:], sent)
    verified = await platform.call("verify_mfa", token=code_sent_to(outbox, platform.caller_id_num))
    assert actions(verified, "set_meta_data") == [{"verified": True}], (checker.log()[-2000:], verified)


@pytest.mark.parametrize("first_back", ["running", "newcomer"])
async def test_the_fleet_agrees_again_after_redis_restarts_empty(tmp_path: Path, first_back: str) -> None:
    """``running``: the running instances put their keys back before a new one starts, and it
    adopts them. ``newcomer``: the running instances stand still while Redis restarts and a new
    instance starts, so the store holds the newcomer's keys and the running ones must adopt them."""
    redis_server = RedisServer(free_port())
    redis_server.start()
    outbox = tmp_path / "outbox.jsonl"
    env = {"MFA_STORE": redis_server.url, "MFA_OUTBOX": str(outbox)}
    one, two, three = (AgentProcess(env, tmp_path / f"{name}.log") for name in ("one", "two", "three"))
    fleet = [one, two, three]
    numbers = (f"+1202555{1000 + n}" for n in itertools.count())
    try:
        await asyncio.gather(one.start(), two.start())
        async with aiohttp.ClientSession() as http:
            in_progress = FakePlatform(http, one.base_url, one.auth, caller_id_num=next(numbers))
            await in_progress.start_call()

            loop = asyncio.get_running_loop()
            if first_back == "running":
                redis_server.stop()
                redis_server.start()
                emptied = loop.time()
                await until_keys_stored(redis_server.url)
                took = loop.time() - emptied
                print(f"\nthe running instances put their keys back {took:.2f}s after the restart")
                await three.start()
                await until_tokens_agree(http, fleet)
                # The call that started before the restart goes on, on any instance.
                await send_on_verify_on(in_progress, three, two, outbox)
            else:
                one.pause()
                two.pause()
                redis_server.stop()
                redis_server.start()
                await three.start()
                resumed = loop.time()
                one.resume()
                two.resume()
                await until_tokens_agree(http, fleet)
                took = loop.time() - resumed
                print(f"\nthe running instances adopted the newcomer's keys within {took:.2f}s")
                # The call that started before the restart goes on where its tokens' key is still known.
                await send_on_verify_on(in_progress, two, one, outbox)

            for sender, checker in itertools.permutations(fleet, 2):
                platform = FakePlatform(http, checker.base_url, checker.auth, caller_id_num=next(numbers))
                await platform.start_call()
                await send_on_verify_on(platform, sender, checker, outbox)
    finally:
        await asyncio.gather(*(process.stop() for process in fleet))
        redis_server.stop()

"""Live status end to end: /websocket, fan-out across instances, webhooks, /metrics.

Each test serves the real app under uvicorn and drives calls through /swaig the
way the platform does (`FakePlatform`). Waits are on events with deadlines,
never on a sleep that hopes something happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio
from aiohttp import web
from yarl import URL

from engine.errors import StoreUnavailable
from engine.events import live, webhooks
from engine.events.live import LiveHub
from engine.events.metrics import Metrics
from engine.events.webhooks import RetryPolicy, sign
from engine.models import Event
from engine.stores import open_store
from tests.fakes.signalwire_api import make_fake_signalwire
from tests.platform import (
    USER,
    FakePlatform,
    RunningAgent,
    last_code,
    serve_agent,
    settings_for,
    signalwire_settings,
    user_events,
)

CALLER = "+12025550143"
DEADLINE = 10.0
WEBHOOK_SECRET = "webhook-secret-for-tests"


def ws_url(agent: RunningAgent) -> str:
    return agent.base_url.replace("http://", "ws://") + "/websocket"


@asynccontextmanager
async def watching(
    http: aiohttp.ClientSession, agent: RunningAgent, *agent_ids: str
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A WebSocket subscribed to ``agent_ids``, returned once every subscription is acknowledged."""
    async with http.ws_connect(ws_url(agent), auth=agent.auth) as ws:
        for agent_id in agent_ids:
            await ws.send_json({"type": "subscribe", "agent_id": agent_id})
            assert await next_frame(ws) == {"type": "subscribed", "agent_id": agent_id}
        yield ws


async def next_frame(ws: aiohttp.ClientWebSocketResponse, within: float = DEADLINE) -> dict[str, Any]:
    """The next frame, which must come ``within`` seconds (else TimeoutError)."""
    message = await ws.receive(timeout=within)
    assert message.type == aiohttp.WSMsgType.TEXT, message
    frame: dict[str, Any] = json.loads(message.data)
    return frame


async def events_until(
    ws: aiohttp.ClientWebSocketResponse, last_type: str, raw: list[str] | None = None
) -> list[dict[str, Any]]:
    """Every frame up to and including the first event of ``last_type``."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(DEADLINE):
        while True:
            message = await ws.receive()
            assert message.type == aiohttp.WSMsgType.TEXT, message
            if raw is not None:
                raw.append(message.data)
            frames.append(json.loads(message.data))
            if frames[-1]["type"] == last_type:
                return frames


def wrong_code(code: str) -> str:
    return "000000" if code != "000000" else "111111"


async def verify_on_a_call(platform: FakePlatform, settings: Any) -> tuple[list[dict[str, Any]], str]:
    """send, a wrong code, the right code: the user_events the SWAIG results carried, and the code."""
    await platform.start_call()
    results = [await platform.call("send_mfa")]
    code = last_code(settings)
    results.append(await platform.call("verify_mfa", token=wrong_code(code)))
    results.append(await platform.call("verify_mfa", token=code))
    return [event for result in results for event in user_events(result)], code


def metric(agent: RunningAgent, name: str, **labels: str) -> float:
    value = agent.runtime.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# == /websocket ==


async def test_a_subscriber_sees_a_whole_verification_in_order_and_no_secrets(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    async with (
        serve_agent(settings) as agent,
        aiohttp.ClientSession() as http,
        watching(http, agent, "mfa") as ws,
        watching(http, agent, "another-agent") as other,
    ):
        platform = FakePlatform(http, agent.base_url, agent.auth, caller_id_num=CALLER)
        raw: list[str] = []
        carried, code = await verify_on_a_call(platform, settings)
        frames = await events_until(ws, "mfa.verified", raw)

        assert [frame["type"] for frame in frames] == ["mfa.sent", "mfa.rejected", "mfa.verified"]
        # The same events as each SWAIG result's user_event.
        assert [frame["id"] for frame in frames] == [event["id"] for event in carried]
        sent, rejected, verified = frames
        assert {frame["verification_id"] for frame in frames} == {sent["verification_id"]}
        for frame in frames:
            assert frame["agent_id"] == "mfa"
            assert frame["call_id"] == platform.call_id
            assert frame["to"] == "***0143"
            assert frame["channel"] == "sms"
            assert frame["at"].endswith("Z")
        assert (sent["attempts_left"], rejected["attempts_left"], verified["attempts_left"]) == (3, 2, 1)
        assert verified["status"] == "approved"
        for text in raw:
            assert code not in text
            assert "2025550143" not in text

        # The other agent's subscriber got none of that: its first frame is its own agent's event.
        elsewhere = FakePlatform(
            http,
            agent.base_url,
            agent.auth,
            caller_id_num="+12025550199",
            swml_query="?agent_id=another-agent",
        )
        await elsewhere.start_call()
        await elsewhere.call("send_mfa")
        first = await next_frame(other)
        assert (first["type"], first["agent_id"], first["call_id"]) == (
            "mfa.sent",
            "another-agent",
            elsewhere.call_id,
        )


async def test_one_client_can_watch_several_agents(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    async with (
        serve_agent(settings) as agent,
        aiohttp.ClientSession() as http,
        watching(http, agent, "first", "second") as ws,
    ):
        for agent_id, number in (("first", "+12025550101"), ("second", "+12025550102")):
            platform = FakePlatform(
                http, agent.base_url, agent.auth, caller_id_num=number, swml_query=f"?agent_id={agent_id}"
            )
            await platform.start_call()
            await platform.call("send_mfa")
            frame = await next_frame(ws)
            assert (frame["type"], frame["agent_id"]) == ("mfa.sent", agent_id)

        await ws.send_json({"type": "unsubscribe", "agent_id": "first"})
        assert await next_frame(ws) == {"type": "unsubscribed", "agent_id": "first"}


async def test_the_websocket_refuses_a_handshake_without_the_right_credentials(tmp_path: Path) -> None:
    async with serve_agent(settings_for(tmp_path)) as agent, aiohttp.ClientSession() as http:
        for auth in (None, aiohttp.BasicAuth(USER, "wrong-password")):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(ws_url(agent), auth=auth)
            assert refused.value.status == 403


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("not json", "bad_json"),
        ('{"type": "subscribe"}', "bad_message"),
        ('{"type": "subscribe", "agent_id": "no spaces allowed"}', "bad_message"),
        ('{"type": "subscribe", "agent_id": 7}', "bad_message"),
        ('{"type": "dance", "agent_id": "mfa"}', "bad_message"),
        ("[1, 2, 3]", "bad_message"),
        ("x" * 5000, "too_long"),
    ],
)
async def test_a_bad_message_gets_an_error_frame_and_the_connection_stays_usable(
    tmp_path: Path, message: str, error: str
) -> None:
    async with (
        serve_agent(settings_for(tmp_path)) as agent,
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url(agent), auth=agent.auth) as ws,
    ):
        await ws.send_str(message)
        frame = await next_frame(ws)
        assert frame["type"] == "error" and frame["error"] == error and frame["message"]
        await ws.send_bytes(b'{"type": "subscribe", "agent_id": "mfa"}')
        assert await next_frame(ws) == {"type": "subscribed", "agent_id": "mfa"}


async def test_replay_starts_a_subscriber_from_the_agents_recent_events(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    async with serve_agent(settings) as agent, aiohttp.ClientSession() as http:
        async with watching(http, agent, "mfa") as ws:
            platform = FakePlatform(http, agent.base_url, agent.auth, caller_id_num=CALLER)
            await platform.start_call()
            await platform.call("send_mfa")
            sent = await next_frame(ws)  # the hub has it now
        async with http.ws_connect(ws_url(agent), auth=agent.auth) as late:
            await late.send_json({"type": "subscribe", "agent_id": "mfa", "replay": True})
            assert await next_frame(late) == {"type": "subscribed", "agent_id": "mfa"}
            assert (await next_frame(late))["id"] == sent["id"]


async def test_a_client_that_never_reads_is_dropped_without_slowing_anyone(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    async with serve_agent(settings) as agent, aiohttp.ClientSession() as http:
        publisher = agent.runtime.publisher
        async with watching(http, agent, "slow") as slow, watching(http, agent, "mfa"):
            # Big events fill the socket buffers, then the client's queue: it must be dropped.
            padding = "x" * 16_000
            slowest = 0.0
            async with asyncio.timeout(DEADLINE):
                while metric(agent, "mfa_websocket_dropped_clients_total") < 1:
                    started = time.monotonic()
                    await publisher.publish(
                        Event(type="mfa.send_failed", origin="call", agent_id="slow", reason=padding)
                    )
                    slowest = max(slowest, time.monotonic() - started)
                    await asyncio.sleep(0)  # let the listener deliver
            assert slowest < 0.5

            # A call goes on as usual while the other (reading-nothing) client is still connected.
            platform = FakePlatform(http, agent.base_url, agent.auth, caller_id_num=CALLER)
            await platform.start_call()
            started = time.monotonic()
            await platform.call("send_mfa")
            assert time.monotonic() - started < 2.0

            async with http.get(f"{agent.base_url}/metrics", auth=agent.auth) as response:
                text = await response.text()
            assert "mfa_websocket_dropped_clients_total 1.0" in text
            # The dropped client is gone from the open ones: the two clients here, less the slow one.
            assert metric(agent, "mfa_websocket_clients") == 1
            # When it reads at last, it finds what was sent before it fell behind, then the reason.
            async with asyncio.timeout(DEADLINE):
                while (message := await slow.receive()).type == aiohttp.WSMsgType.TEXT:
                    pass
            assert (message.type, message.data, message.extra) == (aiohttp.WSMsgType.CLOSE, 1008, "too slow")


# == two instances on Redis ==


PROBE = "probe"


async def until_fanned_out(ws: aiohttp.ClientWebSocketResponse, sender: RunningAgent) -> None:
    """Broadcast probes from ``sender`` until one reaches ``ws``.

    Redis pub/sub keeps no history, so only from then on is an event raised by
    ``sender`` sure to reach the other instance's listener.
    """
    async with asyncio.timeout(DEADLINE):
        while True:
            probe = Event(type="mfa.canceled", origin="api", agent_id="mfa", verification_id=PROBE)
            await sender.runtime.store.broadcast(probe.model_dump_json())
            with contextlib.suppress(TimeoutError):
                if (await next_frame(ws, within=0.2))["verification_id"] == PROBE:
                    return


async def next_event(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The next frame that is not a late copy of a probe."""
    while (frame := await next_frame(ws))["verification_id"] == PROBE:
        pass
    return frame


async def test_a_subscriber_on_one_instance_sees_events_raised_on_another(
    tmp_path: Path, redis_url: str, app_redis_url: str
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        serve_agent(settings_for(tmp_path / "a", mfa_store=app_redis_url)) as a,
        serve_agent(settings_for(tmp_path / "b", mfa_store=app_redis_url)) as b,
        aiohttp.ClientSession() as http,
        watching(http, a, "mfa") as ws,
    ):
        await until_fanned_out(ws, b)
        for caller in (CALLER, "+12025550144"):
            platform = FakePlatform(http, b.base_url, b.auth, caller_id_num=caller)
            await platform.start_call()
            result = await platform.call("send_mfa")
            frame = await next_event(ws)
            assert frame["type"] == "mfa.sent" and frame["call_id"] == platform.call_id
            assert frame["id"] == user_events(result)[0]["id"]

            # Redis drops every pub/sub connection: the listeners listen again by themselves.
            client = redis.asyncio.Redis.from_url(redis_url)
            try:
                await client.client_kill_filter(_type="pubsub")
            finally:
                await client.aclose()
            await until_fanned_out(ws, b)


class FlakyStore:
    """Broadcasts that fail the first listener with StoreUnavailable, as a Redis going away does."""

    def __init__(self) -> None:
        self.listens = 0
        self.queue: asyncio.Queue[str] = asyncio.Queue()

    def listen(self) -> AsyncIterator[str]:
        self.listens += 1
        return self._messages(first=self.listens == 1)

    async def _messages(self, first: bool) -> AsyncIterator[str]:
        if first:
            raise StoreUnavailable("the Redis store cannot be reached")
        while True:
            yield await self.queue.get()


async def test_the_live_listener_listens_again_after_the_store_drops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "RELISTEN_DELAYS", (0.01, 0.05))
    hub = LiveHub(Metrics())
    store, stop = FlakyStore(), asyncio.Event()
    subscriber = hub.connect()
    hub.subscribe(subscriber, "mfa")
    assert json.loads(subscriber.queue.get_nowait()) == {"type": "subscribed", "agent_id": "mfa"}
    task = asyncio.create_task(hub.run(store, stop, store.listen()))  # type: ignore[arg-type]
    event = Event(type="mfa.sent", origin="call", agent_id="mfa")
    await store.queue.put(event.model_dump_json())
    async with asyncio.timeout(DEADLINE):
        assert json.loads(await subscriber.queue.get())["id"] == event.id
    assert store.listens == 2
    stop.set()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# == webhooks ==


class Receiver:
    """A webhook endpoint that answers 500 to the first ``failures`` attempts of each event,
    and to everything while ``refusing`` is set."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.refusing = False
        self.attempts: dict[str, list[dict[str, str]]] = defaultdict(list)
        self.delivered: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.changed = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_post("/hook", self.hook)

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {name: request.headers.get(name, "") for name in _WEBHOOK_HEADERS}
        expected = hmac.new(
            WEBHOOK_SECRET.encode(), headers["X-MFA-Timestamp"].encode() + b"." + body, hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(headers["X-MFA-Signature"], f"v1={expected}"):
            self.bad_signatures += 1
        event = json.loads(body)
        assert event["id"] == headers["X-MFA-Event-Id"] and event["type"] == headers["X-MFA-Event-Type"]
        attempts = self.attempts[event["id"]]
        attempts.append(headers)
        self.changed.set()
        if self.refusing or len(attempts) <= self.failures:
            return web.Response(status=500)
        self.delivered.append(event)
        return web.Response(status=204)

    async def wait_for(self, condition: Any) -> None:
        async with asyncio.timeout(DEADLINE):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


_WEBHOOK_HEADERS = (
    "X-MFA-Event-Id",
    "X-MFA-Event-Type",
    "X-MFA-Timestamp",
    "X-MFA-Signature",
    "X-MFA-Delivery-Attempt",
    "Content-Type",
)


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = RetryPolicy(base_delay=0.05, max_delay=0.2, poll_interval=0.1, timeout=2.0, lease=1.0)
    monkeypatch.setattr(webhooks, "DEFAULT_POLICY", policy)


async def outbox_empties(agent: RunningAgent) -> None:
    """Wait until the webhook outbox is empty: nothing left that could be sent again."""
    async with asyncio.timeout(DEADLINE):
        # The store tells no one when an item goes: look again until none is left.
        while await agent.runtime.store.backlog(webhooks.QUEUE):  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def backlog(settings: Any) -> int:
    store = open_store(settings.mfa_store)
    await store.open()
    try:
        return await store.backlog(webhooks.QUEUE)
    finally:
        await store.close()


@pytest.mark.usefixtures("fast_retries")
async def test_webhooks_are_retried_until_delivered_once_each_with_a_valid_signature(
    tmp_path: Path, aiohttp_server: Any
) -> None:
    receiver = Receiver(failures=2)
    server = await aiohttp_server(receiver.app)
    settings = settings_for(
        tmp_path, mfa_webhook_urls=[str(server.make_url("/hook"))], mfa_webhook_secret=WEBHOOK_SECRET
    )
    async with serve_agent(settings) as agent, aiohttp.ClientSession() as http:
        platform = FakePlatform(http, agent.base_url, agent.auth, caller_id_num=CALLER)
        carried, code = await verify_on_a_call(platform, settings)
        await receiver.wait_for(lambda: len(receiver.delivered) == 3)
        await outbox_empties(agent)

        assert sorted(event["id"] for event in receiver.delivered) == sorted(event["id"] for event in carried)
        assert receiver.bad_signatures == 0
        for event in carried:
            assert [h["X-MFA-Delivery-Attempt"] for h in receiver.attempts[event["id"]]] == ["1", "2", "3"]
            assert receiver.attempts[event["id"]][0]["Content-Type"] == "application/json"
        assert all(code not in json.dumps(event) for event in receiver.delivered)
        assert metric(agent, "mfa_webhook_deliveries_total", outcome="delivered") == 3
        assert metric(agent, "mfa_webhook_deliveries_total", outcome="failed") == 6


@pytest.mark.usefixtures("fast_retries")
async def test_a_restart_between_webhook_retries_loses_nothing(tmp_path: Path, aiohttp_server: Any) -> None:
    receiver = Receiver(failures=2)
    receiver.refusing = True  # until the first instance is gone
    server = await aiohttp_server(receiver.app)
    settings = settings_for(
        tmp_path, mfa_webhook_urls=[str(server.make_url("/hook"))], mfa_webhook_secret=WEBHOOK_SECRET
    )
    async with serve_agent(settings) as agent, aiohttp.ClientSession() as http:
        platform = FakePlatform(http, agent.base_url, agent.auth, caller_id_num=CALLER)
        carried, _ = await verify_on_a_call(platform, settings)
        ids = [event["id"] for event in carried]
        await receiver.wait_for(lambda: all(len(receiver.attempts[i]) >= 2 for i in ids))
    assert receiver.delivered == []
    assert await backlog(settings) == 3

    receiver.refusing = False
    restarted = settings.model_copy(update={"port": settings_for(tmp_path).port})
    async with serve_agent(restarted) as agent:
        await receiver.wait_for(lambda: len(receiver.delivered) == 3)
        await outbox_empties(agent)
    assert sorted(event["id"] for event in receiver.delivered) == sorted(ids)
    assert receiver.bad_signatures == 0


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body = b'{"id":"e1","type":"mfa.sent"}'
    expected = hmac.new(b"key", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(b"key", "1700000000", body) == f"v1={expected}"


def test_retry_delays_grow_with_jitter_up_to_the_cap() -> None:
    policy = RetryPolicy(base_delay=5.0, max_delay=600.0)
    for failures, step in ((1, 5.0), (2, 10.0), (4, 40.0), (8, 600.0), (50, 600.0)):
        for _ in range(20):
            assert step / 2 <= policy.delay(failures) <= step


# == /metrics and /dashboard ==


async def test_metrics_count_sends_outcomes_and_upstream_requests(
    tmp_path: Path, aiohttp_server: Any
) -> None:
    fake = make_fake_signalwire()
    server = await aiohttp_server(fake.app)
    settings = signalwire_settings(tmp_path, server.port)
    async with serve_agent(settings) as agent, aiohttp.ClientSession() as http:
        async with http.get(f"{agent.base_url}/metrics") as refused:
            assert refused.status == 401
        platform = FakePlatform(http, agent.base_url, agent.auth, caller_id_num=CALLER)
        await platform.start_call()
        await platform.call("send_mfa")
        code = fake.code_for(fake.sent[-1]["id"])
        await platform.call("verify_mfa", token=wrong_code(code))
        await platform.call("verify_mfa", token=code)
        fake.fail_next("401", path_prefix="/api/relay/rest/mfa")
        failed = FakePlatform(http, agent.base_url, agent.auth, caller_id_num="+12025550177")
        await failed.start_call()
        await failed.call("send_mfa")

        async with (
            watching(http, agent, "mfa"),
            http.get(f"{agent.base_url}/metrics", auth=agent.auth) as response,
        ):
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = await response.text()

    lines = set(text.splitlines())
    assert 'mfa_sends_total{channel="sms",outcome="sent"} 1.0' in lines
    assert 'mfa_sends_total{channel="sms",outcome="failed"} 1.0' in lines
    assert 'mfa_send_failures_total{reason="unauthorized"} 1.0' in lines
    assert 'mfa_verifications_total{outcome="verified"} 1.0' in lines
    assert "mfa_wrong_codes_total 1.0" in lines
    assert 'mfa_upstream_request_seconds_count{endpoint="/api/relay/rest/mfa/sms"} 2.0' in lines
    assert 'mfa_upstream_request_seconds_count{endpoint="/api/relay/rest/mfa/{id}/verify"} 2.0' in lines
    assert 'mfa_upstream_errors_total{kind="unauthorized"} 1.0' in lines
    assert "mfa_websocket_clients 1.0" in lines
    assert "mfa_webhook_backlog 0.0" in lines
    assert "mfa_websocket_dropped_clients_total 0.0" in lines


async def test_the_dashboard_is_served_behind_auth_with_its_own_script_only(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, agent_id="front-desk")
    async with serve_agent(settings) as agent, aiohttp.ClientSession() as http:
        async with http.get(f"{agent.base_url}/dashboard") as refused:
            assert refused.status == 401
        async with http.get(f"{agent.base_url}/dashboard", auth=agent.auth) as page:
            assert page.status == 200
            assert page.headers["Content-Type"].startswith("text/html")
            assert "script-src 'self'" in page.headers["Content-Security-Policy"]
            html = await page.text()
        assert '<meta name="default-agent-id" content="front-desk">' in html
        assert "http://" not in html and "https://" not in html  # nothing from elsewhere
        for name, kind in (
            ("dashboard.js", "text/javascript"),
            ("dashboard.css", "text/css"),
            ("history.js", "text/javascript"),
            ("history.css", "text/css"),
        ):
            assert f"/dashboard/static/{name}" in html
            async with http.get(f"{agent.base_url}/dashboard/static/{name}", auth=agent.auth) as asset:
                assert asset.status == 200 and asset.headers["Content-Type"].startswith(kind)
                assert "innerHTML" not in await asset.text()
        for name in ("live.py", "..%2Flive.py"):
            url = URL(f"{agent.base_url}/dashboard/static/{name}", encoded=True)
            async with http.get(url, auth=agent.auth) as other:
                assert "build_routes" not in await other.text()  # only the page's assets are ever served
        async with http.get(f"{agent.base_url}/dashboard/static/dashboard.js") as refused:
            assert refused.status == 401


def test_the_hub_names_the_agents_with_recent_events_most_recent_first() -> None:
    hub = LiveHub(Metrics())
    assert hub.recent_agent_ids() == []
    for agent_id in ("first", "second", "third", "first"):
        hub.deliver(Event(type="mfa.sent", origin="call", agent_id=agent_id).model_dump_json())
    assert hub.recent_agent_ids() == ["first", "third", "second"]
    assert hub.recent_agent_ids(limit=2) == ["first", "third"]


async def test_the_dashboard_asks_which_agents_have_recent_events_behind_auth(tmp_path: Path) -> None:
    async with (
        serve_agent(settings_for(tmp_path)) as agent,
        aiohttp.ClientSession() as http,
        watching(http, agent, "front-desk") as ws,
    ):
        async with http.get(f"{agent.base_url}/dashboard/agents") as refused:
            assert refused.status == 401
        await agent.runtime.publisher.publish(Event(type="mfa.sent", origin="api", agent_id="front-desk"))
        await next_frame(ws)  # the hub has it now
        async with http.get(f"{agent.base_url}/dashboard/agents", auth=agent.auth) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("application/json")
            assert response.headers["Cache-Control"] == "no-store"
            assert await response.json() == {"agent_ids": ["front-desk"]}

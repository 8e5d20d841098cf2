"""Webhooks: every event POSTed as JSON to each `MFA_WEBHOOK_URLS` entry, signed, at least once.

Publishing only adds one item per (URL, event) to a durable outbox in the
store; a delivery loop in each instance claims due items with a lease, POSTs
them, and retries failures with exponential backoff and jitter (up to 10
minutes apart, for about a day). A restart, or a crash mid-delivery, loses
nothing: the outbox is in the store and a lease that runs out makes its item
due again.

What a receiver gets (the body is the event exactly as on `/websocket`)::

    POST <url>
    Content-Type: application/json
    User-Agent: signalwire-mfa-agent
    X-MFA-Event-Id: <the event's id; the same on every retry, so de-duplicate on it>
    X-MFA-Event-Type: <e.g. mfa.verified>
    X-MFA-Delivery-Attempt: <1, 2, ...>
    X-MFA-Timestamp: <UNIX seconds when this attempt was signed>
    X-MFA-Signature: v1=<hex HMAC-SHA256 over "<X-MFA-Timestamp>.<raw body>", keyed with MFA_WEBHOOK_SECRET>

To check one: compute ``hmac.new(secret, f"{timestamp}.".encode() + raw_body,
hashlib.sha256).hexdigest()``, compare it with the hex after ``v1=`` using
``hmac.compare_digest``, and refuse timestamps more than a few minutes old
(replays). Answer any 2xx once the event is stored; anything else, or no
answer within 10 s, is retried. Settings refuse MFA_WEBHOOK_URLS without
MFA_WEBHOOK_SECRET, so every delivery is signed. Delivery is at least
once and not necessarily in order: order by the event's ``at``.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import hmac
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from engine.events.metrics import Metrics
from engine.models import Event
from engine.outbox_worker import drain_until_stopped
from engine.stores.base import OutboxItem, OutboxStore

log = logging.getLogger(__name__)

QUEUE = "webhooks"
SIGNATURE_VERSION = "v1"
BATCH = 32  # items claimed, and delivered concurrently, per pass


@dataclass(frozen=True)
class RetryPolicy:
    """How deliveries are timed: backoff, give-up point, timeouts and polling."""

    base_delay: float = 5.0  # before the second attempt; doubles per failure
    max_delay: float = 600.0
    # 5 s doubling to 10 min, then about 7.5 min apart on average (jitter): ~200 attempts is a day.
    max_attempts: int = 200
    timeout: float = 10.0  # per POST
    poll_interval: float = 1.0  # to find items another instance or an earlier run left due
    lease: float = 60.0  # an item claimed and not settled by then (a crash) is due again

    def delay(self, failures: int) -> float:
        """Seconds before the next attempt after ``failures`` failed ones: half to all of the step."""
        step = min(self.max_delay, self.base_delay * 2.0 ** min(failures - 1, 32))
        return step * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret


# Tests swap this for a fast one; deployments keep the default.
DEFAULT_POLICY = RetryPolicy()


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-MFA-Signature`` value for a body sent at ``timestamp``."""
    digest = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def _host(url: str) -> str:
    # Logs name the host only: a webhook URL's path or query often holds a token.
    return urlsplit(url).hostname or "?"


class WebhookOutbox:
    """The webhook sink (``enqueue``) and the delivery loop (``run``) of one instance."""

    def __init__(
        self,
        store: OutboxStore,
        http: aiohttp.ClientSession,
        urls: Sequence[str],
        secret: bytes | None,
        metrics: Metrics,
        policy: RetryPolicy | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Wall-clock time, not the engine's clock: deliveries happen in the real world.
        self._store = store
        self._http = http
        self._urls = list(urls)
        self._secret = secret
        self._metrics = metrics
        self.policy = policy or DEFAULT_POLICY
        self._clock = clock
        self._wake = asyncio.Event()
        self._retries: list[float] = []  # due times of retries this instance scheduled (a heap)
        if secret is None and self._urls:
            log.warning("MFA_WEBHOOK_SECRET is not set: webhooks are sent unsigned")

    async def enqueue(self, event: Event) -> None:
        """An event sink: one outbox item per URL, then wake the delivery loop."""
        body = event.model_dump_json()
        now = self._clock()
        for url in self._urls:
            item_id = f"{event.id}:{hashlib.sha256(url.encode()).hexdigest()[:16]}"
            await self._store.enqueue(QUEUE, item_id, json.dumps({"url": url, "body": body}), now)
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver due items until ``stop``: at once when woken, else when a retry falls due."""
        await drain_until_stopped(
            stop,
            self._wake,
            self.deliver_due,
            batch=BATCH,
            poll_interval=self.policy.poll_interval,
            idle_wait=self._until_next_retry,
            name="webhooks",
        )

    def _until_next_retry(self) -> float:
        now = self._clock()
        while self._retries and self._retries[0] <= now:
            heapq.heappop(self._retries)
        wait = self.policy.poll_interval
        if self._retries:
            wait = min(wait, self._retries[0] - now)
        return max(0.0, wait)

    async def deliver_due(self) -> int:
        """One pass: claim what is due and try each once; how many items were claimed."""
        items = await self._store.claim_due(QUEUE, self._clock(), self.policy.lease, BATCH)
        outcomes = await asyncio.gather(*(self._deliver(item) for item in items), return_exceptions=True)
        # An item whose outcome could not be recorded is due again when its lease runs out.
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return len(items)

    async def _deliver(self, item: OutboxItem) -> None:
        try:
            payload = json.loads(item.payload)
            url, body = str(payload["url"]), str(payload["body"]).encode()
            event = json.loads(body)
            event_id, event_type = str(event["id"]), str(event["type"])
        except (ValueError, KeyError, TypeError):
            log.error("webhooks: dropped unreadable outbox item %s", item.id)
            await self._store.ack(QUEUE, item.id)
            return
        if url not in self._urls:
            log.info("webhooks: dropped event %s for %s, no longer configured", event_id, _host(url))
            await self._store.ack(QUEUE, item.id)
            return
        attempt = item.attempts + 1
        timestamp = str(int(self._clock()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "signalwire-mfa-agent",
            "X-MFA-Event-Id": event_id,
            "X-MFA-Event-Type": event_type,
            "X-MFA-Delivery-Attempt": str(attempt),
            "X-MFA-Timestamp": timestamp,
        }
        if self._secret is not None:
            headers["X-MFA-Signature"] = sign(self._secret, timestamp, body)
        problem = await self._post(url, body, headers)
        if problem is None:
            await self._store.ack(QUEUE, item.id)
            self._metrics.webhook_deliveries.labels("delivered").inc()
            return
        if attempt >= self.policy.max_attempts:
            self._metrics.webhook_deliveries.labels("given_up").inc()
            log.error(
                "webhooks: gave up on event %s for %s after %d attempts (last: %s)",
                event_id,
                _host(url),
                attempt,
                problem,
            )
            await self._store.ack(QUEUE, item.id)
            return
        self._metrics.webhook_deliveries.labels("failed").inc()
        due = self._clock() + self.policy.delay(attempt)
        log.info("webhooks: event %s for %s failed (%s); attempt %d", event_id, _host(url), problem, attempt)
        await self._store.retry_later(QUEUE, item.id, due)
        heapq.heappush(self._retries, due)

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> str | None:
        """POST once; None on a 2xx, else what went wrong (for the log)."""
        try:
            async with self._http.post(
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.policy.timeout),
                allow_redirects=False,
            ) as response:
                status = response.status
        except TimeoutError:
            return "timeout"
        except (aiohttp.ClientError, OSError) as exc:
            return type(exc).__name__
        return None if 200 <= status < 300 else f"HTTP {status}"

"""The loop that drains one of the store's durable outbox queues (webhooks, fallback calls).

Each consumer brings its own pass (claim what is due, handle it, say how many it
claimed); the loop runs it until stopped: at once while a full batch came back or
something woke it, after the consumer's idle wait otherwise, and with a backoff
of its own while passes fail, so neither a store outage nor a bug ends it for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from engine.errors import StoreUnavailable

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 30.0


async def drain_until_stopped(
    stop: asyncio.Event,
    wake: asyncio.Event,
    one_pass: Callable[[], Awaitable[int]],
    *,
    batch: int,
    poll_interval: float,
    idle_wait: Callable[[], float],
    name: str,
) -> None:
    """Run ``one_pass`` until ``stop``; ``wake`` set by a producer starts the next pass at once.

    After ``n`` failed passes in a row the loop waits ``poll_interval * 2**n`` (at most
    MAX_BACKOFF_SECONDS); otherwise ``idle_wait()``, unless the pass claimed a whole ``batch``.
    """
    failures = 0
    while not stop.is_set():
        wake.clear()
        try:
            claimed = await one_pass()
            failures = 0
        except StoreUnavailable as exc:
            failures += 1
            log.warning("%s: the store is unavailable (%s)", name, exc)
            claimed = 0
        except Exception:  # a bug must not end the loop for good
            failures += 1
            log.exception("%s: a pass failed", name)
            claimed = 0
        if claimed >= batch:
            continue  # more may be due right now
        wait = min(MAX_BACKOFF_SECONDS, poll_interval * 2.0**failures) if failures else idle_wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), wait)

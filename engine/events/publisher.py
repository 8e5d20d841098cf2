"""One publisher that every step of every verification goes through.

The SWAIG functions, the expiry timer and the HTTP API all call `publish`; it
hands the event to each sink (live fan-out, webhook outbox, metrics). A sink
that fails is logged and counted, never raised: a watcher's problem must not
turn into dead air on a call.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from engine.models import Event

log = logging.getLogger(__name__)

Sink = Callable[[Event], Awaitable[None]]


class EventPublisher:
    """Fans each event out to the registered sinks, in registration order."""

    def __init__(self) -> None:
        self._sinks: list[tuple[str, Sink]] = []
        self.failures = 0

    def add_sink(self, name: str, sink: Sink) -> None:
        self._sinks.append((name, sink))

    async def publish(self, event: Event) -> None:
        for name, sink in self._sinks:
            try:
                await sink(event)
            except Exception:
                self.failures += 1
                log.exception("event sink %s failed for %s %s", name, event.type, event.id)

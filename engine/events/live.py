"""Live fan-out: every event, from every instance, to the WebSocket clients of this one.

Publishing an event only broadcasts its JSON through the store (in-process with
SQLite, Redis pub/sub with Redis), so publishing costs one broadcast however
many clients watch. One listener loop per process takes every broadcast event
and hands it to the local subscribers of its agent id, each through a bounded
queue of its own: a client that does not keep up fills its queue and is
dropped, never slowing the listener, the other clients or a SWAIG answer.

The hub also keeps the last few events of each recent agent id, so a
subscriber that asks for it (a dashboard opened or reconnected) starts from
what just happened instead of from an empty page.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError

from engine.errors import StoreUnavailable
from engine.events.metrics import Metrics
from engine.models import Event
from engine.stores.base import BroadcastStore

log = logging.getLogger(__name__)

QUEUE_SIZE = 256  # frames a client may fall behind by before it is dropped
HISTORY_PER_AGENT = 100  # recent events kept per agent id for a subscriber's replay
HISTORY_AGENTS = 256  # agent ids whose recent events are kept (least recently active forgotten)
MAX_SUBSCRIPTIONS = 32  # agent ids one client may watch
RELISTEN_DELAYS = (0.1, 30.0)  # backoff, first and longest, while the store cannot be listened to
RECENT_AGENTS = 20  # agent ids `recent_agent_ids` names at most (the dashboard's suggestions)


class Subscriber:
    """One connected client: the agent ids it watches and the frames waiting for it.

    Its queue holds JSON text ready to send. When the queue is full the hub
    marks it ``dropped`` and stops feeding it; the connection then closes it.
    """

    def __init__(self, queue_size: int) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=queue_size)
        self.agent_ids: set[str] = set()
        self.dropped = asyncio.Event()

    def offer(self, frame: str) -> bool:
        """Queue a frame without waiting; False (and marked dropped) when the client is too far behind."""
        if self.dropped.is_set():
            return False
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.dropped.set()
            return False
        return True


class LiveHub:
    """Delivers broadcast events to this process's subscribers, by agent id."""

    def __init__(self, metrics: Metrics, *, queue_size: int = QUEUE_SIZE) -> None:
        self.metrics = metrics
        self.queue_size = queue_size
        self._store: BroadcastStore | None = None
        self._by_agent: dict[str, set[Subscriber]] = {}
        self._history: OrderedDict[str, deque[str]] = OrderedDict()
        self._clients: set[Subscriber] = set()

    # -- publishing side ----------------------------------------------------
    def attach(self, store: BroadcastStore) -> None:
        """The store to broadcast through (set by `attach_event_sinks` at each start)."""
        self._store = store

    async def publish(self, event: Event) -> None:
        """An event sink: broadcast the event to every instance's hub, this one included."""
        if self._store is None:
            return
        await self._store.broadcast(event.model_dump_json())

    async def run(self, store: BroadcastStore, stop: asyncio.Event, messages: AsyncIterator[str]) -> None:
        """The listener loop: deliver every broadcast until ``stop``; listen again if the store drops.

        ``messages`` is a `store.listen()` opened before the first event could be
        published, so nothing published at start-up is missed.
        """
        failures = 0
        while not stop.is_set():
            try:
                async for message in messages:
                    failures = 0
                    self.deliver(message)
            except StoreUnavailable as exc:
                log.warning("live events: lost the store's broadcasts (%s); listening again", exc)
            except Exception:  # a bug must not end live events for good
                log.exception("live events: the listener failed; listening again")
            if stop.is_set():
                return
            failures += 1
            first, longest = RELISTEN_DELAYS
            delay = min(longest, first * 2 ** min(failures - 1, 16)) * random.uniform(0.5, 1.0)  # noqa: S311
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return
            except TimeoutError:
                pass
            try:
                messages = store.listen()
            except StoreUnavailable as exc:
                log.warning("live events: cannot listen to the store yet (%s)", exc)
                messages = _nothing()

    def deliver(self, message: str) -> None:
        """Hand one broadcast event to the subscribers of its agent id; never waits."""
        try:
            event = Event.model_validate_json(message)
        except ValidationError:
            log.debug("live events: ignored a broadcast that is not an event")
            return
        history = self._history.get(event.agent_id)
        if history is None:
            history = self._history[event.agent_id] = deque(maxlen=HISTORY_PER_AGENT)
            if len(self._history) > HISTORY_AGENTS:
                self._history.popitem(last=False)
        else:
            self._history.move_to_end(event.agent_id)
        history.append(message)
        for subscriber in list(self._by_agent.get(event.agent_id, ())):
            if not subscriber.offer(message):
                self._drop(subscriber)

    def recent_agent_ids(self, limit: int = RECENT_AGENTS) -> list[str]:
        """The agent ids whose recent events the hub keeps, most recently active first.

        What a replay can start from: an agent id not named here has no recent
        events to show (a mistyped one, or one quiet since this process started).
        """
        return list(reversed(self._history))[:limit]

    # -- subscriber side ----------------------------------------------------
    def connect(self) -> Subscriber:
        """A new client, watching nothing yet."""
        subscriber = Subscriber(self.queue_size)
        self._clients.add(subscriber)
        self.metrics.websocket_clients.set(len(self._clients))
        return subscriber

    def subscribe(self, subscriber: Subscriber, agent_id: str, *, replay: bool = False) -> bool:
        """Start sending ``agent_id``'s events to the subscriber, after an acknowledgement frame.

        With ``replay`` the recent events of that agent come first. Both are
        queued before any later event, so the client sees no gap and no
        duplicate. False if the client is already dropped.
        """
        if subscriber.dropped.is_set():
            return False
        frames = [_frame("subscribed", agent_id=agent_id)]
        if replay:
            frames.extend(self._history.get(agent_id, ()))
        subscriber.agent_ids.add(agent_id)
        self._by_agent.setdefault(agent_id, set()).add(subscriber)
        for frame in frames:
            if not subscriber.offer(frame):
                self._drop(subscriber)
                return False
        return True

    def unsubscribe(self, subscriber: Subscriber, agent_id: str) -> None:
        subscriber.agent_ids.discard(agent_id)
        watchers = self._by_agent.get(agent_id)
        if watchers is not None:
            watchers.discard(subscriber)
            if not watchers:
                del self._by_agent[agent_id]
        subscriber.offer(_frame("unsubscribed", agent_id=agent_id))

    def disconnect(self, subscriber: Subscriber) -> None:
        """The client is gone: stop feeding it."""
        for agent_id in list(subscriber.agent_ids):
            watchers = self._by_agent.get(agent_id)
            if watchers is not None:
                watchers.discard(subscriber)
                if not watchers:
                    del self._by_agent[agent_id]
        subscriber.agent_ids.clear()
        self._clients.discard(subscriber)
        self.metrics.websocket_clients.set(len(self._clients))

    def _drop(self, subscriber: Subscriber) -> None:
        if subscriber in self._clients:
            log.warning("live events: dropped a WebSocket client that fell %d frames behind", self.queue_size)
            self.metrics.websocket_dropped.inc()
            self.disconnect(subscriber)


def _frame(type_: str, **fields: Any) -> str:
    """A control frame (not an event): its ``type`` never starts with ``mfa.``."""
    return json.dumps({"type": type_, **fields})


async def _nothing() -> AsyncIterator[str]:
    """An empty stream: the loop backs off and listens again."""
    return
    yield  # pragma: no cover - makes this an async generator

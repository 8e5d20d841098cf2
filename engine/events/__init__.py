"""Events: one model, one publisher, and the sinks each event goes to.

- `publisher`: what the engine calls for every step of every verification;
- `live`: fan-out through the store to the WebSocket clients of every instance;
- `webhooks`: a durable, signed, retried POST to each configured URL;
- `metrics`: Prometheus counters kept from the same events.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from engine.events.webhooks import WebhookOutbox

if TYPE_CHECKING:
    from engine.events.publisher import EventPublisher
    from engine.models import Event
    from engine.runtime import Runtime


class _Sinks:
    """What one runtime's sinks deliver to now; replaced parts on each start, registered once."""

    def __init__(self) -> None:
        self.webhooks: WebhookOutbox | None = None

    async def to_webhooks(self, event: Event) -> None:
        if self.webhooks is not None:
            await self.webhooks.enqueue(event)


_attached: weakref.WeakKeyDictionary[EventPublisher, _Sinks] = weakref.WeakKeyDictionary()


def attach_event_sinks(runtime: Runtime) -> None:
    """Connect the publisher to metrics, the live fan-out and webhooks. Called by `Runtime.start`.

    Also starts the two background loops (live listener, webhook delivery).
    Publishing stays cheap: a broadcast, and one outbox insert per webhook URL.
    """
    settings, store, publisher = runtime.settings, runtime.store, runtime.publisher

    # Listen before the first event can be published, so none raised at start-up is missed.
    runtime.live.attach(store)
    runtime.spawn(runtime.live.run(store, runtime.stopping, store.listen()))

    sinks = _attached.get(publisher)
    if sinks is None:
        sinks = _attached[publisher] = _Sinks()
        publisher.add_sink("metrics", runtime.metrics.observe_event)
        publisher.add_sink("live", runtime.live.publish)
        publisher.add_sink("webhooks", sinks.to_webhooks)
        runtime.metrics.event_sink_failures.set_function(lambda: publisher.failures)

    sinks.webhooks = None
    if settings.mfa_webhook_urls:
        secret = settings.mfa_webhook_secret
        sinks.webhooks = WebhookOutbox(
            store,
            runtime.http,
            settings.mfa_webhook_urls,
            secret.get_secret_value().encode() if secret else None,
            runtime.metrics,
        )
        runtime.spawn(sinks.webhooks.run(runtime.stopping))

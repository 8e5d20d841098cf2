"""Prometheus metrics for one running agent, in a registry of its own.

A registry per app, not prometheus-client's global one, so several apps in one
process (the tests start many) never share or clash over a metric. Every name
starts with ``mfa_``; labels only ever take values from a small fixed set
(event types, channels, error kinds, endpoint templates), never a number, an
id or anything a caller typed.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from engine.models import Event

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

# How a verification ended, by the event that ended it.
_ENDED = {
    "mfa.verified": "verified",
    "mfa.expired": "expired",
    "mfa.locked": "locked",
    "mfa.canceled": "canceled",
}

# The reasons a send refused by the SMS pumping guard is published with (engine/fraud.py).
_GUARD_REASONS = frozenset({"fraud_suspected", "new_country_budget", "fraud_blocked"})

# SignalWire answers in tens to hundreds of milliseconds; the tail up to the 9 s timeout matters.
_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 6.0, 9.0)


class Metrics:
    """The agent's metrics; ``render`` is what `/metrics` answers."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.sends = Counter(
            "mfa_sends",
            "Codes asked for, by channel and outcome (sent or failed).",
            ["channel", "outcome"],
            registry=registry,
        )
        self.send_failures = Counter(
            "mfa_send_failures",
            "Codes not sent, by reason (a policy refusal, a rate limit or an upstream error kind).",
            ["reason"],
            registry=registry,
        )
        self.verifications = Counter(
            "mfa_verifications",
            "Verifications that ended, by outcome (verified, expired, locked, canceled).",
            ["outcome"],
            registry=registry,
        )
        self.fraud_holds = Counter(
            "mfa_fraud_holds",
            "Destination prefixes the SMS pumping guard held (one per hold, across instances).",
            registry=registry,
        )
        self.fraud_refused = Counter(
            "mfa_fraud_refused_sends",
            "Sends the SMS pumping guard refused, by reason (fraud_suspected: a held prefix; "
            "new_country_budget: a new country's hourly budget; fraud_blocked: MFA_FRAUD_BLOCK).",
            ["reason"],
            registry=registry,
        )
        self.wrong_codes = Counter("mfa_wrong_codes", "Codes checked and found wrong.", registry=registry)
        self.deliveries = Counter(
            "mfa_deliveries",
            "Texts whose delivery the carrier reported final, by state (delivered, undelivered, failed).",
            ["state"],
            registry=registry,
        )
        self.fallback_calls = Counter(
            "mfa_fallback_calls",
            "Voice calls with a new code after a text did not arrive in time, by outcome "
            "(placed; not_placed: a limit refused it or SignalWire failed).",
            ["outcome"],
            registry=registry,
        )
        self.upstream_latency = Histogram(
            "mfa_upstream_request_seconds",
            "Time of each request to SignalWire's REST API, by endpoint.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_errors = Counter(
            "mfa_upstream_errors",
            "Requests to SignalWire's REST API that failed, by kind "
            "(timeout, connection, server_error, rate_limited, bad_response, unauthorized).",
            ["kind"],
            registry=registry,
        )
        self.websocket_clients = Gauge(
            "mfa_websocket_clients", "WebSocket clients connected to /websocket now.", registry=registry
        )
        self.websocket_dropped = Counter(
            "mfa_websocket_dropped_clients",
            "WebSocket clients the server disconnected: too slow to read their events, "
            "a message over the size cap, or a protocol error.",
            registry=registry,
        )
        self.webhook_deliveries = Counter(
            "mfa_webhook_deliveries",
            "Webhook delivery attempts, by outcome (delivered, failed, given_up).",
            ["outcome"],
            registry=registry,
        )
        self.webhook_backlog = Gauge(
            "mfa_webhook_backlog", "Webhook deliveries waiting in the outbox.", registry=registry
        )
        self.event_sink_failures = Gauge(
            "mfa_event_sink_failures",
            "Events a sink (live fan-out, webhook outbox) failed to take, since start.",
            registry=registry,
        )

    async def observe_event(self, event: Event) -> None:
        """An event sink: counts sends and outcomes from the events the engine publishes here."""
        channel = event.channel or "unknown"
        if _fallback(event):
            self.fallback_calls.labels("placed" if event.type == "mfa.sent" else "not_placed").inc()
        if event.type == "mfa.sent":
            self.sends.labels(channel, "sent").inc()
        elif event.type == "mfa.delivered":
            self.deliveries.labels("delivered").inc()
        elif event.type == "mfa.undelivered":
            self.deliveries.labels("failed" if event.reason == "failed" else "undelivered").inc()
        elif event.type == "mfa.send_failed" or _refused_send(event):
            self.sends.labels(channel, "failed").inc()
            self.send_failures.labels(event.reason or "unknown").inc()
            if event.reason in _GUARD_REASONS:
                self.fraud_refused.labels(event.reason).inc()
        elif event.type == "mfa.fraud_suspected":
            self.fraud_holds.inc()
        elif event.type == "mfa.rejected":
            self.wrong_codes.inc()
        elif event.type in _ENDED:
            self.verifications.labels(_ENDED[event.type]).inc()

    def observe_upstream(self, endpoint: str, seconds: float, error_kind: str | None) -> None:
        """One request to SignalWire: its time, and its error kind if it failed."""
        self.upstream_latency.labels(endpoint).observe(seconds)
        if error_kind is not None:
            self.upstream_errors.labels(error_kind).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


def _fallback(event: Event) -> bool:
    # The call after a text that did not arrive: a send for a verification that exists
    # already (a first send that fails never has one).
    return (event.type == "mfa.sent" and event.reason == "fallback") or (
        event.type == "mfa.send_failed" and event.verification_id is not None
    )


def _refused_send(event: Event) -> bool:
    # A send refused because the call is locked is published as mfa.locked with no verification.
    return event.type == "mfa.locked" and event.verification_id is None

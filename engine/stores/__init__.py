"""Where the engine keeps its state: one interface per job, and the SQLite and Redis backends."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from engine.stores.base import (
    RETAIN_FINISHED_SECONDS,
    Attempt,
    AttemptGate,
    BroadcastStore,
    Claim,
    ClaimState,
    ClaimStore,
    DeliveryChange,
    DeliveryStore,
    HistoryStore,
    HoldStore,
    KeyStore,
    Lifecycle,
    OutboxItem,
    OutboxStore,
    Record,
    RecordStore,
    Store,
    VerificationStore,
    WindowStore,
)
from engine.stores.history import DEFAULT_RETENTION
from engine.stores.redis import RedisStore
from engine.stores.sqlite import SqliteStore

__all__ = [
    "RETAIN_FINISHED_SECONDS",
    "Attempt",
    "AttemptGate",
    "BroadcastStore",
    "Claim",
    "ClaimState",
    "ClaimStore",
    "DeliveryChange",
    "DeliveryStore",
    "HistoryStore",
    "HoldStore",
    "KeyStore",
    "Lifecycle",
    "OutboxItem",
    "OutboxStore",
    "Record",
    "RecordStore",
    "RedisStore",
    "SqliteStore",
    "Store",
    "VerificationStore",
    "WindowStore",
    "open_store",
]

_SQLITE = "sqlite:///"


def open_store(url: str, *, prefix: str = "mfa:", history_retention: float = DEFAULT_RETENTION) -> Store:
    """The store that ``url`` names, not yet opened (call ``await store.open()``).

    ``sqlite:///relative/path``, ``sqlite:////absolute/path``, or
    ``redis://host:port/db`` / ``rediss://...`` (keys under ``prefix``; a
    ``?prefix=name:`` query parameter sets it, so several agents can share a Redis).
    ``history_retention``: seconds a verification stays in the history (MFA_HISTORY_DAYS).
    """
    if url.startswith(_SQLITE) and len(url) > len(_SQLITE):
        return SqliteStore(url.removeprefix(_SQLITE), history_retention=history_retention)
    if url.startswith(("redis://", "rediss://")):
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        prefix = query.pop("prefix", [prefix])[-1]
        rest = urlencode(query, doseq=True)
        return RedisStore(
            urlunsplit(parts._replace(query=rest)), prefix=prefix, history_retention=history_retention
        )
    raise ValueError("a store URL is sqlite:///path, redis://host:port/db or rediss://host:port/db")

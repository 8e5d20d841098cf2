"""Delivery: how the local engine's message (the code inside) reaches a phone."""

from __future__ import annotations

from typing import Protocol


class Delivery(Protocol):
    """Sends one message; raises ProviderUnavailable or ProviderRejected when it cannot."""

    async def deliver(self, to: str, channel: str, body: str) -> None: ...

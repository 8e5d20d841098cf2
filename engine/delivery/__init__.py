"""Delivery: how the local engine's message reaches a phone."""

from __future__ import annotations

from typing import Protocol

from engine.codes import Message


class Delivery(Protocol):
    """Sends one message; raises ProviderUnavailable or ProviderRejected when it cannot.

    It gets the template and the code apart (``Message``) and builds the text
    or the speech for its channel from them.
    """

    async def deliver(self, to: str, channel: str, message: Message) -> None: ...

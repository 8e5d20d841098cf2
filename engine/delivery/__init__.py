"""Delivery: how the local engine's message reaches a phone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from engine.codes import Message


@dataclass(frozen=True)
class Receipt:
    """What a delivery knows once it handed a message on.

    ``carrier_ref`` is the carrier's id for it (SignalWire's message or call sid), if
    there is one; ``reported`` is True when the carrier will report the message's
    delivery, naming it by that id (a status callback).
    """

    carrier_ref: str | None = None
    reported: bool = False


class Delivery(Protocol):
    """Sends one message; raises ProviderUnavailable or ProviderRejected when it cannot.

    It gets the template and the code apart (``Message``) and builds the text
    or the speech for its channel from them. ``reference`` is the verification
    the message belongs to: a delivery whose carrier reports back uses it to
    find that verification again. ``reports_delivery``: whether texts it sends
    are reported on (see `Receipt.reported`).
    """

    @property
    def reports_delivery(self) -> bool: ...

    async def deliver(
        self, to: str, channel: str, message: Message, *, reference: str | None = None
    ) -> Receipt: ...

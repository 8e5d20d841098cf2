"""The provider interface: who makes, delivers and checks a code.

`signalwire` hands all three to SignalWire's MFA REST API; `local` makes and
checks codes itself and hands delivery to a `Delivery`. The engine counts
attempts and keeps status in the store for both, so the SWAIG functions and
the HTTP API cannot tell the two apart.

Providers raise `ProviderUnavailable` (try again later; nothing known to be
delivered) or `ProviderRejected` (will not work as configured) and nothing else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from engine.delivery import Receipt
from engine.models import Channel, Verification


@dataclass(frozen=True)
class SendRequest:
    """What to send. ``valid_for`` and ``max_attempts`` are the engine's, passed on."""

    verification_id: str
    to: str
    channel: Channel
    token_length: int
    valid_for: int
    max_attempts: int
    allow_alphas: bool
    message: str
    from_number: str | None = None


@dataclass(frozen=True)
class Sent:
    """What the provider made of a send: its own id, or (local) the code's digest and the
    carrier's id for the message.

    ``delivery_reported``: the carrier will report the text's delivery, naming it by
    ``provider_ref`` (local engine, SignalWire messaging with status callbacks).
    """

    provider_ref: str | None = None
    code_digest: str | None = None
    delivery_reported: bool = False


@dataclass(frozen=True)
class PreparedSend:
    """A new code, made and not yet delivered: its digest, and the delivery still to do.

    For a send that must be claimed in the store before anything reaches a phone
    (the one voice call that follows an undelivered text): the claim records the
    digest, then ``deliver()`` hands the message on (raising as `Provider.send` does).
    """

    code_digest: str
    deliver: Callable[[], Awaitable[Receipt]]


class Answer(StrEnum):
    """The provider's verdict on one code."""

    CORRECT = "correct"
    WRONG = "wrong"
    GONE = "gone"  # the provider no longer knows it: expired, used, attempts spent


class Provider(ABC):
    """Sends codes and checks them. One instance serves the whole process."""

    name: str
    # Whether the texts it sends are reported on by the carrier (`Sent.delivery_reported`).
    reports_delivery: bool = False

    @abstractmethod
    async def send(self, request: SendRequest) -> Sent:
        """Deliver a new code to ``request.to``. Never retried blindly: it could text twice."""

    @abstractmethod
    async def verify(self, verification: Verification, code: str) -> Answer:
        """Check ``code`` against the verification's code."""

    def prepare(self, request: SendRequest) -> PreparedSend | None:
        """A new code for ``request``, made but not delivered; None when codes are made
        elsewhere (SignalWire's MFA API makes its own), so none can be prepared here."""
        return None

    async def cancel(self, verification: Verification) -> None:  # noqa: B027 - optional hook
        """Tell the provider to forget the code. The engine refuses checks either way."""

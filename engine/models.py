"""The engine's records: a verification, the outcome of checking a code, and events."""

from __future__ import annotations

import secrets
import time
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Channel = Literal["sms", "call"]
# Which interface started a verification: a call's send_mfa, the HTTP API, the walkthrough.
Origin = Literal["call", "api", "workflow"]


class Status(StrEnum):
    """Where a verification stands. Only `pending` can change."""

    PENDING = "pending"
    APPROVED = "approved"
    EXPIRED = "expired"
    MAX_ATTEMPTS_REACHED = "max_attempts_reached"
    CANCELED = "canceled"


class DeliveryState(StrEnum):
    """A text as the carrier last reported it. It only moves forward, and the first final
    state (delivered, undelivered, failed) is the last."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"  # the carrier reported it could not deliver it
    FAILED = "failed"  # SignalWire could not send it

    @property
    def final(self) -> bool:
        return self in _FINAL_DELIVERY

    @property
    def rank(self) -> int:
        """Its place in the order states come in; every final state shares the last place."""
        return _DELIVERY_RANK[self]

    @property
    def not_delivered(self) -> bool:
        return self in (DeliveryState.UNDELIVERED, DeliveryState.FAILED)


_FINAL_DELIVERY = frozenset({DeliveryState.DELIVERED, DeliveryState.UNDELIVERED, DeliveryState.FAILED})
_DELIVERY_RANK = {
    DeliveryState.QUEUED: 0,
    DeliveryState.SENDING: 1,
    DeliveryState.SENT: 2,
    DeliveryState.DELIVERED: 3,
    DeliveryState.UNDELIVERED: 3,
    DeliveryState.FAILED: 3,
}


class Fallback(StrEnum):
    """The voice call that follows a text that was not delivered (MFA_FALLBACK_TO_CALL)."""

    CALLING = "calling"  # taken by one instance, the call being placed
    PLACED = "placed"  # SignalWire took the call
    REFUSED = "refused"  # a sending limit refused it
    FAILED = "failed"  # SignalWire could not be asked


class Verification(BaseModel):
    """One code sent to one number, and what has happened to it since.

    ``to`` is the full E.164 number: it stays in the store and never goes into
    a log, an event or a text the model reads (use ``masked_to``).
    """

    model_config = ConfigDict(frozen=True)

    id: str
    to: str
    channel: Channel
    status: Status = Status.PENDING
    max_attempts: int
    attempts: int = 0
    created_at: float
    expires_at: float
    updated_at: float
    agent_id: str
    call_id: str | None = None
    country: str | None = None  # the ISO region of ``to`` ("GB"), for the history's filters
    provider: str
    provider_ref: str | None = None  # the provider's own id, e.g. SignalWire's MFA id
    code_digest: str | None = None  # local provider only: HMAC of the code, never the code
    origin: Origin  # each interface acts only on its own verifications
    # A text whose delivery the carrier reports (local engine, SignalWire messaging, callbacks
    # on): its last state, the carrier's error code, the voice call that followed it, the
    # digest of that call's code, and whether the caller has been told the text did not arrive.
    delivery: DeliveryState | None = None
    delivery_error: str | None = None
    fallback: Fallback | None = None
    fallback_digest: str | None = None
    delivery_told: bool = False

    @property
    def attempts_left(self) -> int:
        return max(0, self.max_attempts - self.attempts)

    @property
    def masked_to(self) -> str:
        return mask_number(self.to)

    def is_expired(self, now: float) -> bool:
        return now >= self.expires_at


def mask_number(number: str) -> str:
    """Only the last four digits of a number leave the store."""
    digits = [char for char in number if char.isdigit()]
    return "***" + "".join(digits[-4:]) if len(digits) >= 4 else "***"


def new_verification_id(now: float | None = None) -> str:
    """A new verification's id: a UUID of version 7 (RFC 9562), made at ``now`` (default: the clock).

    Its first 48 bits are the Unix time in milliseconds, so ids sort by when they
    were made, and a new verification lands on the last pages of the tables keyed
    by its id instead of on a random one. 74 of the other bits are random: an id
    is as hard to guess as ever. Python 3.11's uuid module has no version 7.
    """
    milliseconds = time.time_ns() // 1_000_000 if now is None else int(now * 1000)
    # The fields, most significant first: time, version (7), 12 random bits,
    # variant (0b10, RFC 9562's), 62 random bits.
    random = int.from_bytes(secrets.token_bytes(10))  # 80 bits in one read: 12 and 62 of them used
    value = milliseconds << 80 | 0x7 << 76 | (random >> 68) << 64 | 0b10 << 62 | random & (1 << 62) - 1
    return str(uuid.UUID(int=value))


class CheckOutcome(StrEnum):
    """The result of checking one code, each a distinct thing to tell the caller."""

    APPROVED = "approved"
    WRONG_CODE = "wrong_code"
    EXPIRED = "expired"
    MAX_ATTEMPTS_REACHED = "max_attempts_reached"
    ALREADY_APPROVED = "already_approved"
    CANCELED = "canceled"
    LOCKED = "locked"  # this call has used up its failed attempts across codes
    NUMBER_LOCKED = "number_locked"  # the number has used up its wrong codes for the day
    CALL_VERIFIED = "call_verified"  # the call is verified already: the code was not checked


class CheckResult(BaseModel):
    """A checked code's outcome, with the verification as it now stands."""

    model_config = ConfigDict(frozen=True)

    outcome: CheckOutcome
    verification: Verification
    event: Event | None = None
    retry_after: int | None = None  # NUMBER_LOCKED: seconds until the number may try again

    @property
    def attempts_left(self) -> int:
        return self.verification.attempts_left


EventType = Literal[
    "mfa.sent",
    "mfa.send_failed",
    "mfa.verified",
    "mfa.rejected",
    "mfa.expired",
    "mfa.locked",
    "mfa.canceled",
    "mfa.transferred",
    "mfa.delivered",
    "mfa.undelivered",
    "mfa.fraud_suspected",
]


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Event(BaseModel):
    """One step of a verification, as every watcher sees it (the README's "Watching it live").

    Never holds a code or a full number: ``to`` is masked.
    """

    model_config = ConfigDict(frozen=True)

    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    type: EventType
    origin: Origin
    agent_id: str
    call_id: str | None = None
    verification_id: str | None = None
    to: str | None = None
    channel: Channel | None = None
    attempts_left: int | None = None
    status: Status | None = None
    reason: str | None = None
    error_code: str | None = None  # mfa.undelivered: the carrier's error code, when it gave one
    prefix: str | None = None  # mfa.fraud_suspected: the destination prefix held (not a number)
    at: str = Field(default_factory=utc_now_iso)

    @classmethod
    def about(cls, type_: EventType, verification: Verification, reason: str | None = None) -> Event:
        return cls(
            type=type_,
            origin=verification.origin,
            agent_id=verification.agent_id,
            call_id=verification.call_id,
            verification_id=verification.id,
            to=verification.masked_to,
            channel=verification.channel,
            attempts_left=verification.attempts_left,
            status=verification.status,
            reason=reason,
        )


class Started(BaseModel):
    """A code that went out: the pending verification and its `mfa.sent` event."""

    model_config = ConfigDict(frozen=True)

    verification: Verification
    event: Event
    by_call_instead: bool = False  # asked for by text, sent by a voice call: the number is a landline


CheckResult.model_rebuild()

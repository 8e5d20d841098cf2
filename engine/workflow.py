"""The phone-verification walkthrough's workflow (`E4_SmsPhoneVerification`) over the engine.

The published walkthrough runs a durable orchestration: send a short code,
then wait for the `SmsChallengeResponse` event until a timer ends the window,
allowing a few tries. Here the engine already is that orchestration: a
verification with the workflow's code length, lifetime and tries, its expiry
timer, its attempt counting and its events. An instance is a small record in
the store that points at its verification; its runtime status is read from
the verification every time, so it survives restarts and any instance of the
agent can answer for it. The HTTP contract (`api.orchestrators`) only
translates to and from this.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from engine.codes import UnreadableCode, normalise_spoken
from engine.errors import InvalidRequest, VerificationError, VerificationNotFound
from engine.models import Origin, Status, Verification
from engine.stores.base import RETAIN_FINISHED_SECONDS, RecordStore
from engine.verifications import CodeShape, VerificationEngine

WORKFLOW_NAME = "E4_SmsPhoneVerification"
CHALLENGE_EVENT = "SmsChallengeResponse"
RECORD_KIND = "orchestration"
# The workflow acts only on the verifications it started.
ORIGIN: Origin = "workflow"


class RuntimeStatus(StrEnum):
    """An instance's status, named as the walkthrough's status URI names it."""

    RUNNING = "Running"
    COMPLETED = "Completed"
    TERMINATED = "Terminated"


class InstanceNotFound(VerificationError):
    """No such instance (or it was purged)."""

    code = "not_found"
    http_status = 404


class InstanceFinished(VerificationError):
    """An event or a terminate for an instance that has finished."""

    code = "instance_finished"
    http_status = 410


class InstanceRunning(VerificationError):
    """A purge of an instance still running."""

    code = "instance_running"
    http_status = 412


class UnknownEvent(VerificationError):
    """An event this workflow never waits for."""

    code = "unknown_event"
    http_status = 400


@dataclass(frozen=True)
class Instance:
    """One run of the workflow, as its status URI reports it."""

    id: str
    verification_id: str
    runtime_status: RuntimeStatus
    input: str  # the number, masked: the status URI is polled and logged by clients
    output: bool | str | None
    attempts_left: int
    created_at: float
    updated_at: float


_RUNTIME_STATUS = {
    Status.PENDING: (RuntimeStatus.RUNNING, None),
    Status.APPROVED: (RuntimeStatus.COMPLETED, True),
    Status.EXPIRED: (RuntimeStatus.COMPLETED, False),
    Status.MAX_ATTEMPTS_REACHED: (RuntimeStatus.COMPLETED, False),
    Status.CANCELED: (RuntimeStatus.TERMINATED, None),
}


class PhoneVerificationWorkflow:
    """Starts instances, feeds them events, reports, terminates and purges them."""

    def __init__(self, engine: VerificationEngine, records: RecordStore, shape: CodeShape) -> None:
        self.engine = engine
        self.records = records
        # The engine's message and alphabet, with the workflow's length, window and tries.
        self.shape = shape

    async def start(self, phone_number: str, *, agent_id: str) -> Instance:
        """Send a code to the number and record the instance waiting for it."""
        started = await self.engine.start(
            phone_number, "sms", agent_id=agent_id, origin=ORIGIN, shape=self.shape
        )
        verification = started.verification
        instance_id = uuid.uuid4().hex
        record = {"verification_id": verification.id, "created_at": verification.created_at, "reason": None}
        await self._put(instance_id, record)
        return _instance(instance_id, record, verification)

    async def status(self, instance_id: str) -> Instance:
        record = await self._record(instance_id)
        return _instance(instance_id, record, await self._verification(record))

    async def raise_event(self, instance_id: str, event_name: str, data: int | str) -> Instance:
        """Deliver an event; only `SmsChallengeResponse` (the code) means anything here."""
        record = await self._record(instance_id)
        verification = await self._verification(record)
        if verification.status is not Status.PENDING:
            raise InstanceFinished("The instance has finished; it takes no more events.")
        if event_name.casefold() != CHALLENGE_EVENT.casefold():
            raise UnknownEvent(f"This workflow waits only for the {CHALLENGE_EVENT} event.")
        result = await self.engine.check(verification.id, self._code(data), origin=ORIGIN)
        return _instance(instance_id, record, result.verification)

    async def terminate(self, instance_id: str, reason: str | None) -> Instance:
        """Cancel the code; the instance reports `Terminated` with the reason as its output."""
        record = await self._record(instance_id)
        verification = await self._verification(record)
        if verification.status is not Status.PENDING:
            raise InstanceFinished("The instance has already finished.")
        verification = await self.engine.cancel(verification.id, origin=ORIGIN)
        if verification.status is not Status.CANCELED:
            raise InstanceFinished("The instance finished before it could be terminated.")
        record = {**record, "reason": reason}
        await self._put(instance_id, record)
        return _instance(instance_id, record, verification)

    async def purge(self, instance_id: str) -> None:
        """Forget a finished instance (its verification stays as long as the engine keeps it)."""
        record = await self._record(instance_id)
        try:
            verification = await self._verification(record)
        except InstanceNotFound:
            pass  # the verification is already forgotten; forget the instance too
        else:
            if verification.status is Status.PENDING:
                raise InstanceRunning("Only a finished instance can be purged; terminate it first.")
        await self.records.delete_record(RECORD_KIND, instance_id)

    def _code(self, data: int | str) -> str:
        if isinstance(data, int):
            # JSON has no number 0123: a numeric code arrives without its leading zeros.
            return str(data).zfill(self.shape.token_length)
        try:
            return normalise_spoken(data, self.shape.allow_alphas)
        except UnreadableCode:
            raise InvalidRequest("That is not a code.") from None

    async def _record(self, instance_id: str) -> dict[str, Any]:
        record = await self.records.get_record(RECORD_KIND, instance_id)
        if record is None:
            raise InstanceNotFound("No such instance.")
        return record

    async def _verification(self, record: dict[str, Any]) -> Verification:
        try:
            return await self.engine.get(str(record["verification_id"]), origin=ORIGIN)
        except VerificationNotFound:
            raise InstanceNotFound("No such instance.") from None

    async def _put(self, instance_id: str, record: dict[str, Any]) -> None:
        # The verification stays readable for RETAIN_FINISHED_SECONDS after it ends, so it
        # outlives the record: a status query never finds an instance without its verification.
        await self.records.put_record(RECORD_KIND, instance_id, record, RETAIN_FINISHED_SECONDS)


def _instance(instance_id: str, record: dict[str, Any], verification: Verification) -> Instance:
    runtime_status, output = _RUNTIME_STATUS[verification.status]
    if runtime_status is RuntimeStatus.TERMINATED:
        output = record.get("reason")
    return Instance(
        id=instance_id,
        verification_id=verification.id,
        runtime_status=runtime_status,
        input=verification.masked_to,
        output=output,
        attempts_left=verification.attempts_left,
        created_at=float(record["created_at"]),
        updated_at=verification.updated_at,
    )

"""`/verifications`: start, check, read and cancel a verification from a web or app flow.

Thin handlers over `VerificationEngine`: they validate the request, call the
engine and render its answer. Numbers leave masked; codes never leave.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from api.errors import ApiRoute, error_responses
from engine.codes import UnreadableCode, normalise_spoken
from engine.errors import InvalidRequest
from engine.models import Channel, CheckOutcome, Origin, Status, Verification
from engine.runtime import Runtime
from server.context import request_agent_id

# Longer than any number however it is punctuated; the engine parses and checks it
# (`engine.phone`, the one parser of destinations for every interface).
NUMBER_MAX_LENGTH = 64
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

# This API sees only the verifications it started: not a call's, not the walkthrough's.
ORIGIN: Origin = "api"

VerificationId = Annotated[str, Path(pattern=ID_PATTERN, description="The verification's id.")]


class StartVerification(BaseModel):
    """Where to send a code, and how."""

    model_config = ConfigDict(extra="forbid")

    to: str = Field(
        max_length=NUMBER_MAX_LENGTH,
        description="The number, with its country code (E.164; spaces, dashes and brackets are allowed).",
        examples=["+12025550143"],
    )
    channel: Channel = Field("sms", description="`sms` to text the code, `call` to read it out in a call.")


class CheckCode(BaseModel):
    """A code the person entered."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=64, examples=["482913"])


class VerificationOut(BaseModel):
    """A verification as clients see it: the number masked, the code never."""

    id: str
    status: Status
    to: str = Field(description="The number, masked to its last four digits.", examples=["***0143"])
    channel: Channel
    attempts_left: int = Field(ge=0)
    created_at: datetime
    expires_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, verification: Verification) -> VerificationOut:
        return cls(**_fields(verification))


class CheckOut(VerificationOut):
    """The verification after a check, and what the check found.

    ``valid`` is true only when the code in this request approved it: a check
    on a verification that was already approved answers ``status: approved``
    with ``valid: false``.
    """

    outcome: CheckOutcome
    valid: bool


def _fields(verification: Verification) -> dict[str, object]:
    return {
        "id": verification.id,
        "status": verification.status,
        "to": verification.masked_to,
        "channel": verification.channel,
        "attempts_left": verification.attempts_left,
        "created_at": _utc(verification.created_at),
        "expires_at": _utc(verification.expires_at),
        "updated_at": _utc(verification.updated_at),
    }


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def readable_code(code: str, allow_alphas: bool) -> str:
    """The code as the engine compares it ("48 29-13" -> "482913"); InvalidRequest if it is none."""
    try:
        return normalise_spoken(code, allow_alphas)
    except UnreadableCode:
        raise InvalidRequest("That is not a code.") from None


def build_verifications_router(runtime: Runtime) -> APIRouter:
    """The `/verifications` routes (authentication is added by the caller)."""
    router = APIRouter(prefix="/verifications", tags=["verifications"], route_class=ApiRoute)

    @router.post(
        "",
        status_code=201,
        response_model=VerificationOut,
        summary="Send a code and start a verification",
        responses={
            201: {
                "headers": {
                    "Location": {
                        "description": "The verification's URL.",
                        "required": True,
                        "schema": {"type": "string", "format": "uri"},
                    }
                }
            },
            **error_responses(422, 429, 502),
        },
    )
    async def start_verification(
        body: StartVerification, request: Request, response: Response
    ) -> VerificationOut:
        agent_id = request_agent_id.get() or runtime.settings.agent_id
        started = await runtime.engine.start(body.to, body.channel, agent_id=agent_id, origin=ORIGIN)
        verification = started.verification
        location = request.url_for("get_verification", verification_id=verification.id)
        response.headers["Location"] = str(location)
        return VerificationOut.of(verification)

    @router.get(
        "/{verification_id}",
        response_model=VerificationOut,
        summary="Read a verification",
        responses=error_responses(404, 422),
    )
    async def get_verification(verification_id: VerificationId) -> VerificationOut:
        return VerificationOut.of(await runtime.engine.get(verification_id, origin=ORIGIN))

    @router.post(
        "/{verification_id}/check",
        response_model=CheckOut,
        summary="Check a code",
        description=(
            "Answers `approved`, or `pending` with the attempts left. Once the verification has ended, "
            "a check answers its final status (`approved`, `expired`, `max_attempts_reached`, `canceled`) "
            "without checking the code; only `valid: true` means this request's code was right. "
            "`outcome: number_locked` means the number has used up its wrong codes for the day: no code "
            "to it is checked until `Retry-After` seconds have passed (when given)."
        ),
        responses=error_responses(404, 422, 502),
    )
    async def check_verification(
        verification_id: VerificationId, body: CheckCode, response: Response
    ) -> CheckOut:
        code = readable_code(body.code, runtime.engine.shape.allow_alphas)
        result = await runtime.engine.check(verification_id, code, origin=ORIGIN)
        if result.retry_after:
            response.headers["Retry-After"] = str(result.retry_after)
        return CheckOut(
            **_fields(result.verification),
            outcome=result.outcome,
            valid=result.outcome is CheckOutcome.APPROVED,
        )

    @router.post(
        "/{verification_id}/cancel",
        response_model=VerificationOut,
        summary="Cancel a verification",
        description="A pending verification becomes `canceled`; one that has ended keeps its final status.",
        responses=error_responses(404, 422),
    )
    async def cancel_verification(verification_id: VerificationId) -> VerificationOut:
        return VerificationOut.of(await runtime.engine.cancel(verification_id, origin=ORIGIN))

    return router

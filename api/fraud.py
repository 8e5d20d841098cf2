"""`/fraud/holds`: the destination prefixes the SMS pumping guard holds, and ending a hold early.

Thin handlers over `engine.fraud.FraudGuard`. A hold names a prefix (the country
calling code and the first digits of the national number), never a number.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel, Field

from api.errors import ApiRoute, error_responses
from engine.fraud import hold_document
from engine.runtime import Runtime

# A prefix as the guard writes it: "+", the calling code, at most four more digits (engine/phone.py).
PREFIX_PATTERN = r"^\+[1-9][0-9]{0,7}$"

HeldPrefix = Annotated[
    str,
    Path(
        pattern=PREFIX_PATTERN,
        description="The held prefix, as `GET /fraud/holds` names it (`+` may be sent as `%2B`).",
        examples=["+447400"],
    ),
]


class HoldOut(BaseModel):
    """A prefix that gets no code until ``until``, and what it had when it was held."""

    prefix: str = Field(description="The country calling code and the first digits of the national number.")
    country: str = Field(description="The prefix's ISO region.", examples=["GB"])
    since: datetime
    until: datetime = Field(description="When the hold ends by itself, an hour after it began.")
    sends: int = Field(ge=0, description="Codes sent to the prefix in the hour before the hold.")
    approved: int = Field(ge=0, description="How many of those were approved.")
    reason: str = Field(examples=["fraud_suspected"])


class HoldsOut(BaseModel):
    """Every hold in force, the newest first."""

    holds: list[HoldOut]


def build_fraud_router(runtime: Runtime) -> APIRouter:
    """The `/fraud/holds` routes (authentication is added by the caller)."""
    router = APIRouter(prefix="/fraud/holds", tags=["fraud"], route_class=ApiRoute)

    @router.get(
        "",
        response_model=HoldsOut,
        summary="List the prefixes the SMS pumping guard holds",
        description=(
            "A prefix is held for an hour when it had at least `MFA_FRAUD_MIN_SENDS` codes in the last "
            "hour and too few of them were approved (`MFA_FRAUD_MIN_CONVERSION`). While held, a code to "
            "any number in it is refused with `fraud_suspected`."
        ),
        responses=error_responses(),
    )
    async def list_holds() -> HoldsOut:
        holds = await runtime.fraud.holds(runtime.clock())
        return HoldsOut(holds=[HoldOut.model_validate(hold_document(hold)) for hold in holds])

    @router.delete(
        "/{prefix}",
        response_model=HoldOut,
        summary="End a hold early",
        description=(
            "The prefix gets codes again at once, and its counts start afresh: it is held again only "
            "after another `MFA_FRAUD_MIN_SENDS` codes that are too rarely approved. Answers the hold "
            "as it was."
        ),
        responses=error_responses(404, 422),
    )
    async def release_hold(prefix: HeldPrefix) -> HoldOut:
        released = await runtime.fraud.release(prefix, runtime.clock())
        if released is None:
            raise HTTPException(404, {"code": "not_found", "message": "That prefix is not held."})
        return HoldOut.model_validate(hold_document(released))

    return router

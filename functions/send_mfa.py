"""`send_mfa`: text (or call) a one-time code to the caller's phone.

The destination is the number the call comes from, unless the deployer set
MFA_DESTINATIONS=any; then the model may pass another number, which still
goes through the destination policy. The model hears the last four digits
only, never the number or the code.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.errors import (
    CallLocked,
    DestinationRefused,
    FraudRefused,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
    StoreUnavailable,
)
from engine.follow_up import DeliveryFollowUp
from engine.phone import same_number
from engine.verifications import VerificationEngine
from functions.platform import BadRequest, Reply, SwaigRequest, spoken_wait, verification_id_of
from functions.replies import call_locked, not_answering, text_not_resent
from functions.steps import AWAIT_CODE

_CHANNEL_WORDS = {"sms": "sms", "text": "sms", "call": "call", "voice": "call"}


class SendMfaArgs(BaseModel):
    """The model's arguments. Unknown keys are ignored; known ones are checked."""

    model_config = ConfigDict(extra="ignore")

    phone_number: str | None = Field(None, max_length=64)
    channel: Literal["sms", "call"] = "sms"

    @field_validator("channel", mode="before")
    @classmethod
    def _channel(cls, value: object) -> object:
        if value is None:
            return "sms"
        if isinstance(value, str):
            return _CHANNEL_WORDS.get(value.strip().lower(), value)
        return value

    @field_validator("phone_number", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value


def _delivery_words(channel: str) -> str:
    return "by text message" if channel == "sms" else "by a phone call"


async def send_mfa(
    engine: VerificationEngine,
    args: SendMfaArgs,
    request: SwaigRequest,
    *,
    agent_id: str,
    any_destination: bool,
    follow_up: DeliveryFollowUp | None = None,
) -> tuple[Reply, bool]:
    """Send a code; the reply, and whether a repeat of this request should get it too.

    When the call's last text to the same number did not arrive (``follow_up`` knows),
    the first request after that hears so instead: a call with a new code is on its
    way, or, asked for another text, that a call is the better way.
    """
    destination = request.caller_id_num
    if args.phone_number is not None:
        # Punctuation aside, "+1 (202) 555-0143" is the caller's own "+12025550143".
        other = destination is None or not same_number(args.phone_number, destination)
        if other and not any_destination:
            raise BadRequest(
                Reply(
                    "Nothing was sent: codes can only go to the number this call comes from.",
                    "Tell the caller the code can only be sent to the phone they are calling from.",
                )
            )
        destination = args.phone_number
    if not destination:
        raise BadRequest(
            Reply(
                "Nothing was sent: this call has no phone number to send a code to.",
                "Tell the caller you cannot send a code to this call.",
                offers_person=True,
            )
        )
    previous = verification_id_of(request)
    if follow_up is not None and previous is not None:
        news = await follow_up.tell_about(previous, call_id=request.call_id, destination=destination)
        if news is not None and (news.calling or args.channel == "sms"):
            # Marked in meta_data, so the model's next request is a new one, not a repeat of this.
            return text_not_resent(news).with_action("set_meta_data", {"delivery_told": previous}), True
    try:
        started = await engine.start(
            destination, args.channel, agent_id=agent_id, origin="call", call_id=request.call_id
        )
    except DestinationRefused as refusal:
        return Reply(f"Nothing was sent: {refusal.message}", "Tell the caller, briefly."), False
    except CallLocked:
        return call_locked("Nothing was sent."), False
    except RateLimited as limited:
        return (
            Reply(
                f"Nothing was sent: {limited.message} Another code can be sent in "
                f"{spoken_wait(limited.retry_after)}.",
                "Tell the caller when they can try again.",
                offers_person=True,
            ),
            False,
        )
    except FraudRefused:
        # The pumping guard: nothing the caller did, and nothing the model should quote or argue with.
        return (
            Reply(
                "Nothing was sent: codes to this number are paused for a while as a precaution. "
                "Trying again now will not help.",
                "Apologize, say a code cannot be sent to this number right now, and suggest trying later.",
                offers_person=True,
            ),
            False,
        )
    except (ProviderUnavailable, StoreUnavailable):
        return not_answering("Nothing was sent", "try send_mfa again"), False
    except ProviderRejected:
        return (
            Reply(
                "Nothing was sent: the verification service refused the request.",
                "Apologize, and say codes cannot be sent right now.",
                offers_person=True,
            ),
            False,
        )
    verification = started.verification
    ending = verification.masked_to.removeprefix("***")
    kind = "character" if engine.shape.allow_alphas else "digit"
    digits = f"{engine.shape.token_length} {kind}"
    how = _delivery_words(verification.channel)
    fact = f"A {digits} code was sent {how} to the number ending in {ending}."
    if started.by_call_instead:
        fact += " That number is a landline, which cannot read a text, so the code is read out in a call."
    reply = Reply(fact, "Ask the caller to read the code back, then call verify_mfa with it.")
    reply.with_action(
        "set_meta_data",
        {
            "mfa": {
                "id": verification.id,
                "success": True,
                "to": verification.masked_to,
                "channel": verification.channel,
            }
        },
    )
    reply.with_action("change_step", AWAIT_CODE).with_event(started.event)
    return reply, True

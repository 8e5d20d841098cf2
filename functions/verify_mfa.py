"""`verify_mfa`: check the code the caller read back.

The code is read from speech ("four two, double five"), checked by the
engine against the verification this call's `send_mfa` recorded in
meta_data, and every outcome gets its own answer. Only a correct code sets
`verified`; nothing the model passes can.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.codes import UnreadableCode
from engine.errors import ProviderUnavailable, StoreUnavailable, VerificationNotFound
from engine.follow_up import DeliveryFollowUp
from engine.models import CheckOutcome, CheckResult
from engine.reading import SeveralCodesFound, read_code
from engine.verifications import VerificationEngine
from functions.platform import BadRequest, Reply, SwaigRequest, spoken_wait, verification_id_of
from functions.replies import call_locked, not_answering, with_text_news
from functions.steps import LOCKED, VERIFIED

_NEW_CODE = "Offer to send a new code with send_mfa."
# Nothing was checked: the caller says the code once more, or types it.
_SAY_AGAIN = (
    "Ask the caller to say {what}, one character at a time, or to type it on the keypad and press pound."
)


class VerifyMfaArgs(BaseModel):
    """The model's arguments: the code as the caller said it."""

    model_config = ConfigDict(extra="ignore")

    token: str = Field(min_length=1, max_length=400)

    @field_validator("token", mode="before")
    @classmethod
    def _digits_as_text(cls, value: object) -> object:
        # Models often pass a code of digits as a JSON number.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value


def _no_code_yet() -> Reply:
    return Reply(
        "No code has been sent on this call yet.",
        "Call send_mfa first, then ask the caller for the code they receive.",
    )


async def verify_mfa(
    engine: VerificationEngine,
    args: VerifyMfaArgs,
    request: SwaigRequest,
    *,
    language: str,
    follow_up: DeliveryFollowUp | None = None,
) -> tuple[Reply, bool]:
    """Check a code; the reply, and whether a repeat of this request should get it too.

    The code is read out of the whole utterance, in ``language`` (`engine.reading`):
    a reading with no code, or with more than one thing that could be the code, is
    asked again and uses no attempt. A wrong or unreadable code from a caller whose
    text did not arrive (``follow_up`` knows) also tells the model so, once.
    """
    verification_id = verification_id_of(request)
    if verification_id is None:
        return _no_code_yet(), False
    shape = engine.shape
    try:
        code = read_code(
            args.token, length=shape.token_length, allow_alphas=shape.allow_alphas, language=language
        )
    except SeveralCodesFound:
        unread = Reply(
            "No attempt was used: what the caller said holds more than one number, so the code "
            "could not be told apart.",
            _SAY_AGAIN.format(what="only the code"),
        )
        raise BadRequest(await _with_news(unread, follow_up, verification_id, request)) from None
    except UnreadableCode:
        kind = "character" if shape.allow_alphas else "digit"
        unread = Reply(
            f"No attempt was used: that could not be read as a {shape.token_length}-{kind} code.",
            _SAY_AGAIN.format(what="the code again"),
        )
        raise BadRequest(await _with_news(unread, follow_up, verification_id, request)) from None
    try:
        result = await engine.check(verification_id, code, origin="call", call_id=request.call_id)
    except VerificationNotFound:
        return _no_code_yet(), False
    except (ProviderUnavailable, StoreUnavailable):
        return (
            not_answering(
                "The code was not checked",
                "call verify_mfa again with the same code",
                also="No attempt was used.",
            ),
            False,
        )
    reply = _reply_for(result)
    if follow_up is not None and result.outcome is CheckOutcome.WRONG_CODE:
        news = await follow_up.tell(result.verification)
        if news is not None:
            reply = with_text_news(reply, news)
    return reply.with_event(result.event), True


async def _with_news(
    reply: Reply, follow_up: DeliveryFollowUp | None, verification_id: str, request: SwaigRequest
) -> Reply:
    """``reply``, telling the model too when the caller's text did not arrive (once)."""
    if follow_up is None:
        return reply
    news = await follow_up.tell_about(verification_id, call_id=request.call_id)
    return reply if news is None else with_text_news(reply, news)


def _verified(reply: Reply) -> Reply:
    return (
        reply.with_action("set_meta_data", {"verified": True})
        .with_action("set_global_data", {"mfa_verified": True})
        .with_action("change_step", VERIFIED)
    )


def _reply_for(result: CheckResult) -> Reply:
    outcome = result.outcome
    if outcome is CheckOutcome.APPROVED:
        verification = result.verification
        return _verified(
            Reply(
                "The code is correct: the caller's phone is verified.",
                "Tell the caller they are verified, then carry on with what they called about.",
                verified=(verification.id, verification.masked_to),  # handed on, when configured
            )
        )
    if outcome in (CheckOutcome.CALL_VERIFIED, CheckOutcome.ALREADY_APPROVED):
        # Verified by an earlier code: this one is not judged, so it is not called correct.
        return _verified(
            Reply(
                "The caller's phone is already verified on this call; that code was not checked.",
                "Carry on with what they called about; no code is needed.",
            )
        )
    if outcome is CheckOutcome.NUMBER_LOCKED:
        when = f" It can be tried again in {spoken_wait(result.retry_after)}." if result.retry_after else ""
        return Reply(
            "Verification is paused for this phone number: too many wrong codes were entered for it "
            f"today.{when}",
            "Tell the caller you cannot verify this number right now.",
            offers_person=True,
        ).with_action("change_step", LOCKED)
    if outcome is CheckOutcome.WRONG_CODE:
        left = result.attempts_left
        tries = "1 try" if left == 1 else f"{left} tries"
        return Reply(
            f"That code is not correct. {tries} left for this code.",
            "Ask the caller to check the message and read the code again.",
        )
    if outcome is CheckOutcome.EXPIRED:
        return Reply("That code has expired.", _NEW_CODE, offers_person=True)
    if outcome is CheckOutcome.MAX_ATTEMPTS_REACHED:
        return Reply(
            "That code can no longer be used: all its tries are used up.", _NEW_CODE, offers_person=True
        )
    if outcome is CheckOutcome.CANCELED:
        return Reply("That code was canceled.", _NEW_CODE, offers_person=True)
    return call_locked()

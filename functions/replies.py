"""Answers that more than one function gives, each written once."""

from __future__ import annotations

from engine.follow_up import DeliveryNews
from functions.platform import Reply
from functions.steps import LOCKED


def not_answering(what_happened: str, try_again: str, *, also: str = "") -> Reply:
    """The provider or the store did not answer: nothing changed, and the same request may work shortly.

    ``what_happened`` opens the fact ("Nothing was sent"), ``also`` ends it;
    ``try_again`` is what the model should do in a moment ("try send_mfa again").
    """
    return Reply(
        f"{what_happened}: the verification service is not answering right now. {also}".strip(),
        f"Tell the caller there is a short delay, then {try_again} in a moment.",
    )


def call_locked(what_happened: str = "") -> Reply:
    """The call has used up its wrong codes: no code is sent or checked on it any more.

    ``what_happened``, when given, opens the fact ("Nothing was sent.").
    """
    return Reply(
        f"{what_happened} Verification is locked for this call: too many wrong codes.".strip(),
        "Tell the caller verification is locked for this call.",
        offers_person=True,
    ).with_action("change_step", LOCKED)


_OFFER_A_CALL = (
    "Tell the caller, and offer to read a new code out in a phone call instead; "
    "if they agree, call send_mfa with channel 'call'."
)


def _ending(news: DeliveryNews) -> str:
    return news.verification.masked_to.removeprefix("***")


def text_not_resent(news: DeliveryNews) -> Reply:
    """send_mfa, when the last text did not arrive: nothing new is sent by text.

    A call with a new code is on its way (MFA_FALLBACK_TO_CALL), or, without one, another
    text would fare no better and a call is offered instead.
    """
    ending = _ending(news)
    if not news.calling:
        return Reply(
            f"Nothing new was sent: the last text message with a code could not be delivered to the "
            f"number ending in {ending}, so another text would likely not arrive either.",
            _OFFER_A_CALL,
            offers_person=True,
        )
    why = (
        f"the text message with the code could not be delivered to the number ending in {ending}"
        if news.reported
        else f"the text message with the code to the number ending in {ending} was not confirmed "
        "delivered within 30 seconds"
    )
    return Reply(
        f"Nothing new was sent: {why}, so a phone call that reads out a new code is on its way to that "
        "number.",
        "Tell the caller to answer that call (on this phone it may ring as a second call) and to read the "
        "new code back, then call verify_mfa with it. The code in the text still works if it arrives.",
    )


def with_text_news(reply: Reply, news: DeliveryNews) -> Reply:
    """verify_mfa's answer, when the caller may never have had the text: says so, and what now."""
    ending = _ending(news)
    if news.calling:
        reply.fact += (
            " The text message with the code did not arrive (or was not confirmed delivered in time), "
            f"so a phone call that reads out a new code is on its way to the number ending in {ending}."
        )
        reply.next_step = (
            "Tell the caller the text did not arrive and a call with a new code is coming: ask them to "
            "answer it and read that code back, then call verify_mfa with it."
        )
    else:
        reply.fact += (
            f" The text message with the code could not be delivered to the number ending in {ending}, "
            "so the caller may not have it."
        )
        reply.next_step = _OFFER_A_CALL
    return reply

"""Answers that more than one function gives, each written once."""

from __future__ import annotations

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

"""The conversation: who the agent is, and what the model may do at each step.

Every step names its functions explicitly and none lets the model move on by
itself: only a function result that the server checked moves the call
(`send_mfa` to `await_code`, a correct code to `verified`, too many wrong
codes to `locked`). So `verify_mfa` is offered only once a code was sent,
and nothing past verification unlocks before the code is verified.

What the agent says is in `languages/` (MFA_LANGUAGE). A way on from every
step: with MFA_TRANSFER_TO, `transfer_to_person` is offered in every step (the
caller may ask for a person at any time) and the locked step offers it;
without it, the agent never promises a person. Callers may type the code on
the keypad and press pound: the AI's DTMF settings end the input on `#`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from functions.steps import AWAIT_CODE, LOCKED, OFFER, VERIFIED
from languages import Texts

if TYPE_CHECKING:
    from signalwire import AgentBase
    from signalwire.core.contexts import ContextBuilder, Step

TRANSFER = "transfer_to_person"
# Keypad input: `#` ends a code; the time allowed between two digits fits reading a 6-20
# digit code off another screen (the platform allows up to 30000 ms).
DIGIT_TERMINATORS = "#"
DIGIT_TIMEOUT_MS = 6000
END_OF_SPEECH_TIMEOUT_MS = 800


def _scoped(step: Step, text: str, functions: list[str]) -> Step:
    """A step with its task, its functions, and no way to leave on its own."""
    return step.set_text(text).set_functions(functions).set_valid_steps([]).set_valid_contexts([])


def configure_conversation(agent: AgentBase, texts: Texts, *, person: bool) -> None:
    """The base prompt in ``texts``' language, speech and keypad settings, and the steps.

    ``person``: a person can be reached (MFA_TRANSFER_TO), so `transfer_to_person` exists.
    """
    agent.prompt_add_section("Role", body=texts.role)
    rules = [*texts.rules, texts.keypad]
    if person:
        rules.append(texts.ask_for_person)
    agent.prompt_add_section("Rules", bullets=rules)
    agent.add_hints(list(texts.hints))
    agent.set_params(
        {
            "static_greeting": texts.greeting,
            "end_of_speech_timeout": END_OF_SPEECH_TIMEOUT_MS,
            "digit_terminators": DIGIT_TERMINATORS,
            "digit_timeout": DIGIT_TIMEOUT_MS,
        }
    )
    agent.add_language(name=texts.name, code=texts.code, voice=texts.voice)
    _steps(agent.define_contexts(), texts, person=person)


def _steps(builder: ContextBuilder, texts: Texts, *, person: bool) -> None:
    anywhere = [TRANSFER] if person else []
    ctx = builder.add_context("default")
    _scoped(ctx.add_step(OFFER), texts.offer, ["send_mfa", *anywhere])
    _scoped(ctx.add_step(AWAIT_CODE), texts.await_code, ["verify_mfa", "send_mfa", *anywhere])
    _scoped(ctx.add_step(VERIFIED), texts.verified, anywhere)
    _scoped(ctx.add_step(LOCKED), texts.locked_with_person if person else texts.locked_alone, anywhere)
    ctx.set_initial_step(OFFER)
    builder.validate()

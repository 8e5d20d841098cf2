"""What the agent says, in each language it speaks (`MFA_LANGUAGE`).

One file per language holds a `Texts`: the greeting, the prompt, each step's
task, the fillers said while a function runs, the speech hints, the voice, and
the text message a code goes in. A new language is one new file here and one
line in `LANGUAGES`; reading codes spoken in it is `engine.reading`'s part.

The function results the model reads stay in English: they are instructions to
the model, which speaks the caller's language (its prompt says which).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Texts:
    """Everything the agent says or sends in one language."""

    code: str  # the BCP 47 tag, e.g. "es-US"
    name: str  # the language's name in English, as the SDK's `add_language` wants it
    voice: str
    greeting: str
    role: str
    rules: tuple[str, ...]
    keypad: str  # how to type a code instead of saying it
    offer: str
    await_code: str
    verified: str
    locked_with_person: str
    locked_alone: str
    ask_for_person: str  # the rule when a person can be reached
    fillers_send: tuple[str, ...]
    fillers_verify: tuple[str, ...]
    fillers_transfer: tuple[str, ...]
    hints: tuple[str, ...]
    sms_message: str  # the text before the code in the message a caller receives
    # Said first in the voice call that follows a text that was not delivered (or not
    # confirmed delivered in time), before the message and its new code.
    fallback_call: str


from languages.en_us import EN_US  # noqa: E402 - the registry needs Texts first
from languages.es_us import ES_US  # noqa: E402
from languages.fr_fr import FR_FR  # noqa: E402

LANGUAGES: dict[str, Texts] = {texts.code: texts for texts in (EN_US, ES_US, FR_FR)}

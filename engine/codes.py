"""One-time codes: making them, hashing them, and reading them back from speech."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass, field

DIGITS = string.digits
# Alphanumeric codes leave out characters that sound or look alike (0/O, 1/I/L).
ALPHAS = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"


def new_code(length: int, allow_alphas: bool = False) -> str:
    """A fresh code from the OS's CSPRNG."""
    alphabet = ALPHAS if allow_alphas else DIGITS
    return "".join(secrets.choice(alphabet) for _ in range(length))


def code_digest(key: bytes, verification_id: str, code: str) -> str:
    """What the store keeps instead of the code: an HMAC bound to its verification."""
    message = f"{verification_id}:{code.upper()}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def code_matches(key: bytes, verification_id: str, code: str, digest: str) -> bool:
    """Constant-time comparison of a candidate code with the stored digest."""
    return hmac.compare_digest(code_digest(key, verification_id, code), digest)


@dataclass(frozen=True)
class Message:
    """What a caller receives: the configured text (``template``) and the code, kept apart.

    A delivery builds what it sends from the two, so nothing ever has to find
    the code again inside a finished text.
    """

    template: str
    code: str = field(repr=False)  # so a logged message never shows it

    def text(self) -> str:
        """The SMS body: the template, then the code."""
        return f"{self.template} {self.code}"

    def speech(self) -> str:
        """The same for text-to-speech: the code's characters apart, so each is read on its own."""
        return f"{self.template} {' '.join(self.code)}"


_WORDS = {
    "zero": "0",
    "oh": "0",
    "o": "0",
    "nought": "0",
    "naught": "0",
    "one": "1",
    "won": "1",
    "two": "2",
    "to": "2",
    "too": "2",
    "three": "3",
    "tree": "3",
    "four": "4",
    "for": "4",
    "fore": "4",
    "five": "5",
    "fife": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "ate": "8",
    "nine": "9",
    "niner": "9",
}
_REPEAT = {"double": 2, "triple": 3}
_SEPARATORS = re.compile(r"[\s,.;:\-–—_/]+")
_MAX_SPOKEN = 400  # a code read aloud is short; anything longer is not a code


class UnreadableCode(ValueError):
    """What the caller said could not be read as a code."""


def normalise_spoken(spoken: str, allow_alphas: bool = False) -> str:
    """Turn what a caller said ("four two, double five", "42-55") into a code.

    Digit words, "oh" for zero and "double"/"triple" are understood; spaces,
    dashes and commas are dropped. With ``allow_alphas``, single letters are
    kept (upper-cased). Raises UnreadableCode for anything else, so a
    misheard word is asked again instead of being spent as an attempt.
    """
    if len(spoken) > _MAX_SPOKEN:
        raise UnreadableCode("too long to be a code")
    out: list[str] = []
    repeat = 1
    for word in _SEPARATORS.split(spoken.strip().lower()):
        if not word:
            continue
        if word in _REPEAT:
            repeat *= _REPEAT[word]
            continue
        if word.isascii() and word.isdigit():
            chunk = word
        elif word in _WORDS:
            chunk = _WORDS[word]
        elif allow_alphas and word.isascii() and word.isalnum():
            chunk = word.upper()
        else:
            raise UnreadableCode("not a code")
        out.append(chunk[0] * repeat + chunk[1:])
        repeat = 1
    if repeat != 1 or not out:
        raise UnreadableCode("not a code")
    return "".join(out)

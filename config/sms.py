"""What fits one SMS segment: the rule settings check MFA_MESSAGE against.

It lives in config because a setting is refused by it at start-up, and config
depends on nothing else of ours.
"""

from __future__ import annotations

# GSM 03.38 basic character set: a message of only these fits 160 per segment.
_GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENDED = set("^{}\\[~]|€")  # each takes two septets


def fits_one_segment(text: str) -> bool:
    """Whether ``text`` fits one SMS segment: 160 GSM-7 septets, or 70 UTF-16 units otherwise."""
    if all(char in _GSM7 or char in _GSM7_EXTENDED for char in text):
        septets = sum(2 if char in _GSM7_EXTENDED else 1 for char in text)
        return septets <= 160
    return len(text.encode("utf-16-le")) // 2 <= 70

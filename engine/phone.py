"""Destination policy: which numbers may receive a code, and how.

This is the one parser of destinations: the SWAIG functions, the HTTP API and
the walkthrough all hand the number they were given to `checked_destination`.

A code goes only to a number that can take it: a mobile, a number that may be
either (`FIXED_LINE_OR_MOBILE`, as the US and Canada number), or a fixed line,
which the engine calls instead of texting (a landline cannot read a text). Everything else is refused:
premium-rate and shared-cost ranges (SMS pumping pays fraudsters per message
sent there), toll-free and universal numbers, personal and pager numbers,
VoIP ranges the numbering plan marks as such, and the non-geographic networks
(+800, +808, +870, +881, +882, +883, +888, +979: satellite phones and
international services, the favourite targets of pumping). A number written
with letters ("+1 800 FLOWERS") is refused rather than guessed at.

A destination also names the range it is in, as the SMS pumping guard
(`engine.fraud`) counts it: its ``prefix`` is the country calling code and the
first four digits of the national number (+1 2025 for +1 202 555 0143, +44 7400
for +44 7400 123456). A national number shorter than ten digits gives fewer,
so that six of its digits are never in the prefix (+45 20 for the eight digits
of +45 20 12 34 56): a prefix shown beside a number masked to its last four
digits (`engine.models.mask_number`) never gives the whole number away.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType

from engine.errors import DestinationRefused

_REFUSED_TYPES = {
    PhoneNumberType.PREMIUM_RATE: "premium_rate",
    PhoneNumberType.SHARED_COST: "shared_cost",
}
_RECEIVING_TYPES = {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE, PhoneNumberType.FIXED_LINE}
# The region phonenumbers gives the non-geographic country codes (+800, +881, +882, ...).
_NON_GEOGRAPHIC = "001"
# Digits and the punctuation people write numbers with; anything else (letters) is refused.
_DIALABLE = re.compile(r"^\+?[0-9 ().\-]+$")
_MAX_INPUT = 64  # longer than any dialable number, however it is punctuated
# How many digits of the national number a prefix takes, and how many it always leaves out.
PREFIX_DIGITS = 4
PREFIX_LEAVES_OUT = 6


@dataclass(frozen=True)
class Destination:
    """A number a code may go to: E.164, and whether the numbering plan says it is a landline.

    ``region`` is its ISO region ("GB"); ``prefix`` the range the pumping guard counts it in
    ("+447400"; see the module's docstring).
    """

    e164: str
    landline: bool
    region: str
    prefix: str


def checked_destination(raw: str, allowed_regions: Collection[str]) -> Destination:
    """The number if a code may go to it; DestinationRefused otherwise.

    ``raw`` may be punctuated ("+1 (555) 010-9999") but must carry its country
    code: a caller's country cannot be guessed safely.
    """
    if not isinstance(raw, str) or not raw.strip() or len(raw) > _MAX_INPUT:
        raise DestinationRefused("That is not a phone number.", "invalid")
    text = raw.strip()
    if not text.isascii() or not _DIALABLE.match(text):
        raise DestinationRefused("That is not a phone number: only digits are allowed.", "invalid")
    try:
        number = phonenumbers.parse(text, None)
    except NumberParseException:
        raise DestinationRefused("That is not a phone number with a country code.", "invalid") from None
    if not phonenumbers.is_valid_number(number):
        raise DestinationRefused("That phone number is not valid.", "invalid")
    region = phonenumbers.region_code_for_number(number)
    if region == _NON_GEOGRAPHIC:
        raise DestinationRefused(
            "Codes cannot be sent to satellite or international service numbers.", "non_geographic"
        )
    if allowed_regions and region not in allowed_regions:
        raise DestinationRefused("Codes cannot be sent to numbers in that country.", "region_not_allowed")
    kind = phonenumbers.number_type(number)
    if kind in _REFUSED_TYPES:
        raise DestinationRefused(
            "Codes cannot be sent to premium-rate or shared-cost numbers.", _REFUSED_TYPES[kind]
        )
    if kind not in _RECEIVING_TYPES:
        raise DestinationRefused("Codes can only be sent to mobile numbers and landlines.", "not_a_phone")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return Destination(
        e164, landline=kind == PhoneNumberType.FIXED_LINE, region=region or "", prefix=_prefix(number)
    )


def number_range(e164: str, region: str | None = None) -> tuple[str, str]:
    """The ISO region and the pumping guard's prefix of a number that passed `checked_destination`.

    With its ``region`` (kept with a verification) the number is not parsed again: an E.164
    number is "+", the region's country code and the national number.
    """
    code = phonenumbers.country_code_for_region(region) if region else 0
    if code and e164.startswith(f"+{code}"):
        return region or "", _prefix_of(code, e164[1 + len(str(code)) :])
    number = phonenumbers.parse(e164, None)
    return phonenumbers.region_code_for_number(number) or "", _prefix(number)


def _prefix(number: phonenumbers.PhoneNumber) -> str:
    return _prefix_of(number.country_code, phonenumbers.national_significant_number(number))


def _prefix_of(country_code: int | None, national: str) -> str:
    digits = min(PREFIX_DIGITS, max(0, len(national) - PREFIX_LEAVES_OUT))
    return f"+{country_code}{national[:digits]}"


def is_region(code: str) -> bool:
    """Whether ``code`` is an ISO region a number can belong to ("GB"; not "001", not "UK")."""
    return code in phonenumbers.SUPPORTED_REGIONS


def same_number(first: str, second: str) -> bool:
    """Whether two written numbers are the same ("+1 (202) 555-0143" is "+12025550143")."""
    try:
        one, other = phonenumbers.parse(first.strip(), None), phonenumbers.parse(second.strip(), None)
    except NumberParseException:
        return False
    return bool(phonenumbers.is_number_match(one, other) == phonenumbers.MatchType.EXACT_MATCH)

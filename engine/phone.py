"""Destination policy: which numbers may receive a code.

SMS pumping pays fraudsters per message sent to premium-rate and shared-cost
ranges, so those are refused outright, as are numbers outside the regions the
deployer allows. The same check serves the SWAIG functions and the HTTP API.
"""

from __future__ import annotations

from collections.abc import Collection

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType

from engine.errors import DestinationRefused

_REFUSED_TYPES = {
    PhoneNumberType.PREMIUM_RATE: "premium_rate",
    PhoneNumberType.SHARED_COST: "shared_cost",
}
_MAX_INPUT = 64  # longer than any dialable number, however it is punctuated


def checked_destination(raw: str, allowed_regions: Collection[str]) -> str:
    """The number in E.164 if a code may go to it; DestinationRefused otherwise.

    ``raw`` may be punctuated ("+1 (555) 010-9999") but must carry its country
    code: a caller's country cannot be guessed safely.
    """
    if not isinstance(raw, str) or not raw.strip() or len(raw) > _MAX_INPUT:
        raise DestinationRefused("That is not a phone number.", "invalid")
    try:
        number = phonenumbers.parse(raw.strip(), None)
    except NumberParseException:
        raise DestinationRefused("That is not a phone number with a country code.", "invalid") from None
    if not phonenumbers.is_valid_number(number):
        raise DestinationRefused("That phone number is not valid.", "invalid")
    region = phonenumbers.region_code_for_number(number)
    if allowed_regions and region not in allowed_regions:
        raise DestinationRefused("Codes cannot be sent to numbers in that country.", "region_not_allowed")
    refused = _REFUSED_TYPES.get(phonenumbers.number_type(number))
    if refused:
        raise DestinationRefused("Codes cannot be sent to premium-rate or shared-cost numbers.", refused)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)

"""Whether a number is a landline, from SignalWire's number lookup, remembered for a day.

A landline cannot read a text: a code asked for by SMS goes to it by a voice
call instead. The numbering plan already tells for many countries (a fixed
line, `engine.phone`); for the US and Canada, where a number may be either,
SignalWire's lookup (`carrier.linetype`) tells. A lookup costs a request and
money, so each number is looked up once a day (kept in the store under a keyed
hash of the number, never the number itself), and it must never hold up a
send: a lookup that fails, or takes longer than LOOKUP_SECONDS, leaves the
channel as asked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import quote

from engine.errors import ProviderRejected, ProviderUnavailable
from engine.signalwire_rest import SignalWireRest
from engine.stores.base import RecordStore

log = logging.getLogger(__name__)

LOOKUP_SECONDS = 1.5
REMEMBER_SECONDS = 24 * 3600.0
RECORD_KIND = "line-type"
LOOKUP_PATH = "/api/relay/rest/lookup/phone_number/{number}?include=carrier"


class LineTypes:
    """Looks numbers up (through ``rest``) and remembers each answer in ``store`` for a day."""

    def __init__(self, rest: SignalWireRest, store: RecordStore, digest: Callable[[str], str]) -> None:
        self._rest = rest
        self._store = store
        self._digest = digest  # a keyed hash of a number: store keys never hold one

    async def is_landline(self, number: str) -> bool | None:
        """True or False when known (remembered, or looked up now); None when the lookup failed."""
        key = self._digest(number)
        remembered = await self._store.get_record(RECORD_KIND, key)
        if remembered is not None:
            return bool(remembered.get("landline"))
        line_type = await self._look_up(number)
        if line_type is None:
            return None
        landline = line_type == "landline"
        await self._store.put_record(RECORD_KIND, key, {"landline": landline}, REMEMBER_SECONDS)
        return landline

    async def _look_up(self, number: str) -> str | None:
        try:
            status, answer = await self._rest.get_json(
                LOOKUP_PATH.format(number=quote(number, safe="")), time_budget=LOOKUP_SECONDS
            )
        except (ProviderUnavailable, ProviderRejected) as failure:
            log.warning("number lookup failed (%s); the code goes by the channel asked for", failure.kind)
            return None
        carrier = answer.get("carrier") if status == 200 else None
        line_type = carrier.get("linetype") if isinstance(carrier, dict) else None
        if not isinstance(line_type, str):
            log.warning("number lookup answered %s without a line type; the channel stays as asked", status)
            return None
        return line_type.lower()

"""Delivery through SignalWire's compatibility (LaML) API: an SMS, or a call that reads the code.

Used by the local provider when ``MFA_DELIVERY=signalwire``: this project makes
and checks the code, SignalWire only carries the text. With a status callback
URL, each text asks SignalWire to report its delivery there (``StatusCallback``),
naming its verification in the URL; SignalWire signs each report with the
project's Signing Key (the route that takes them checks it).
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlencode
from xml.sax.saxutils import escape

from engine.codes import Message
from engine.delivery import Receipt
from engine.errors import ProviderRejected, ProviderUnavailable
from engine.signalwire_rest import SignalWireRest

LAML_PATH = "/api/laml/2010-04-01/Accounts/{project}"
# Where SignalWire reports a text's delivery, below the agent's public URL, and the query
# parameter naming the verification (the route serving it reads both from here).
STATUS_CALLBACK_PATH = "/delivery/status"
STATUS_CALLBACK_VERIFICATION = "verification"
# SignalWire's ids are UUIDs; anything else it answers is not kept as one.
CARRIER_REF = re.compile(r"^[A-Za-z0-9-]{1,64}$")


class SignalWireMessaging:
    """A ``Delivery`` that sends each message from ``from_number`` through SignalWire.

    ``status_callback``: the public URL of the delivery status route (None: no reports
    are asked for). ``language``: the BCP 47 tag a call's words are spoken in.
    """

    def __init__(
        self,
        rest: SignalWireRest,
        project_id: str,
        from_number: str,
        *,
        status_callback: str | None = None,
        language: str | None = None,
    ) -> None:
        self._rest = rest
        self._from = from_number
        self._base = LAML_PATH.format(project=quote(project_id, safe=""))
        self._status_callback = status_callback
        self._language = language

    @property
    def reports_delivery(self) -> bool:
        """Whether texts ask SignalWire to report their delivery."""
        return self._status_callback is not None

    async def deliver(
        self, to: str, channel: str, message: Message, *, reference: str | None = None
    ) -> Receipt:
        reported = False
        if channel == "sms":
            path = f"{self._base}/Messages.json"
            fields = {"To": to, "From": self._from, "Body": message.text()}
            if self._status_callback is not None and reference is not None:
                query = urlencode({STATUS_CALLBACK_VERIFICATION: reference})
                fields["StatusCallback"] = f"{self._status_callback}?{query}"
                reported = True
        elif channel == "call":
            path = f"{self._base}/Calls.json"
            fields = {"To": to, "From": self._from, "Twiml": call_twiml(message, self._language)}
        else:
            raise ProviderRejected(f"SignalWire cannot deliver over {channel!r}", kind="invalid")
        status, answer = await self._rest.post_form(path, fields)
        if status in (200, 201):
            sid = answer.get("sid")
            carrier_ref = sid if isinstance(sid, str) and CARRIER_REF.match(sid) else None
            # Without its id, a report could never be matched to this text: none is awaited.
            return Receipt(carrier_ref=carrier_ref, reported=reported and carrier_ref is not None)
        if 400 <= status < 500:
            # Only the LaML error number (21211: bad "To", ...): its text may
            # quote the number, and the text we sent holds the code.
            error = answer.get("code")
            number = f", error {error}" if isinstance(error, int | str) and str(error).isdigit() else ""
            raise ProviderRejected(
                f"SignalWire refused the {channel} (HTTP {status}{number})", kind="invalid"
            )
        raise ProviderUnavailable(
            f"SignalWire answered the {channel} with HTTP {status}", kind="bad_response"
        )


def call_twiml(message: Message, language: str | None = None) -> str:
    """LaML for a call that says the message and its code twice, then hangs up.

    ``language`` (e.g. "fr-FR") tells the speech synthesizer which language the words are
    in; without it SignalWire reads them as English.
    """
    text = escape(message.speech(), {'"': "&quot;", "'": "&apos;"})
    spoken_in = f' language="{escape(language, {chr(34): "&quot;"})}"' if language else ""
    return f"<Response><Say{spoken_in}>{text}. {text}.</Say></Response>"

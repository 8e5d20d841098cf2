"""Delivery through SignalWire's compatibility (LaML) API: an SMS, or a call that reads the code.

Used by the local provider when ``MFA_DELIVERY=signalwire``: this project makes
and checks the code, SignalWire only carries the text.
"""

from __future__ import annotations

from urllib.parse import quote
from xml.sax.saxutils import escape

from engine.codes import Message
from engine.errors import ProviderRejected, ProviderUnavailable
from engine.signalwire_rest import SignalWireRest

LAML_PATH = "/api/laml/2010-04-01/Accounts/{project}"


class SignalWireMessaging:
    """A ``Delivery`` that sends each message from ``from_number`` through SignalWire."""

    def __init__(self, rest: SignalWireRest, project_id: str, from_number: str) -> None:
        self._rest = rest
        self._from = from_number
        self._base = LAML_PATH.format(project=quote(project_id, safe=""))

    async def deliver(self, to: str, channel: str, message: Message) -> None:
        if channel == "sms":
            path = f"{self._base}/Messages.json"
            fields = {"To": to, "From": self._from, "Body": message.text()}
        elif channel == "call":
            path = f"{self._base}/Calls.json"
            fields = {"To": to, "From": self._from, "Twiml": call_twiml(message)}
        else:
            raise ProviderRejected(f"SignalWire cannot deliver over {channel!r}", kind="invalid")
        status, answer = await self._rest.post_form(path, fields)
        if status in (200, 201):
            return
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


def call_twiml(message: Message) -> str:
    """LaML for a call that says the message and its code twice, then hangs up."""
    text = escape(message.speech(), {'"': "&quot;", "'": "&apos;"})
    return f"<Response><Say>{text}. {text}.</Say></Response>"

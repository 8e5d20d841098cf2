"""`POST /delivery/status`: SignalWire's reports on each text's delivery (status callbacks).

A text sent by the local engine through SignalWire messaging asks SignalWire to
report each change of its state to this route, naming its verification in the
URL (`engine.delivery.signalwire_messaging`). SignalWire signs each report with
the project's Signing Key, and that signature is the route's only credential:
SignalWire sends no Basic credentials unless the URL carries them, and a URL with
the agent's password would sit in SignalWire's message logs. So the edge refuses
a request without a signature header before reading it and caps its body small
(`server.SignedRoute`), and the handler checks the signature over the public URL
and the raw body before acting on anything: 403 when it does not hold.

A signed report goes to the engine's follow-up, which keeps it idempotent (the
signature has no timestamp, so a report may come again, from SignalWire or from
whoever copied it): the same report twice, or reports out of order, change
nothing and raise no second event. Every signed report is answered 204 at once,
also one that names no text of ours or a state not followed here: SignalWire can
do nothing better with any other answer. The form holds the text itself, with its
code: none of it is logged or kept beyond the message id, the state and the
carrier's error code.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response

from api.errors import ApiRoute
from engine.delivery.signalwire_messaging import (
    CARRIER_REF,
    STATUS_CALLBACK_PATH,
    STATUS_CALLBACK_VERIFICATION,
)
from engine.errors import StoreUnavailable
from engine.models import DeliveryState
from engine.runtime import Runtime
from server.errors import error_response, not_signed_response

log = logging.getLogger(__name__)

# A report is a short form: ids, numbers, a state, an error code and the one-segment text
# (percent-encoded, at most 3 bytes per UTF-8 byte). Anything near this is not one.
MAX_REPORT_BYTES = 8192
VERIFICATION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ERROR_CODE = re.compile(r"^\d{1,10}$")
# SignalWire's states of an outbound text; `receiving` and `received` are for inbound ones.
STATES = {state.value: state for state in DeliveryState}

# (the public URL SignalWire called, the request's headers, the raw body) -> signed with our key?
SignatureCheck = Callable[[str, Mapping[str, str], str], bool]


@dataclass(frozen=True)
class Report:
    """One carrier report, as far as it concerns us."""

    verification_id: str
    carrier_ref: str
    state: DeliveryState
    error_code: str | None


def read_report(verification_id: str | None, form: str) -> Report | None:
    """The report in a signed request, or None when it names nothing we follow."""
    fields: dict[str, str] = {}
    for name, value in parse_qsl(form, keep_blank_values=True):
        fields.setdefault(name, value)
    carrier_ref = fields.get("MessageSid", "")
    state = STATES.get(fields.get("MessageStatus", ""))
    error = fields.get("ErrorCode", "")
    if (
        verification_id is None
        or not VERIFICATION_ID.match(verification_id)
        or not CARRIER_REF.match(carrier_ref)
        or state is None
    ):
        return None
    return Report(verification_id, carrier_ref, state, error if ERROR_CODE.match(error) else None)


def build_delivery_router(runtime: Runtime, *, public_url: str, signed: SignatureCheck) -> APIRouter:
    """The route SignalWire reports to; ``public_url`` is the agent's (SWML_PROXY_URL_BASE)
    and ``signed`` checks a request's signature with the Signing Key."""
    router = APIRouter(route_class=ApiRoute)

    @router.post(STATUS_CALLBACK_PATH, include_in_schema=False)
    async def delivery_status(request: Request) -> Response:
        raw = await request.body()
        query = request.scope.get("query_string", b"").decode("latin-1")
        url = f"{public_url}{request.url.path}" + (f"?{query}" if query else "")
        try:
            form = raw.decode("utf-8")
        except UnicodeDecodeError:
            form = None  # no signature is made over anything but UTF-8
        if form is None or not signed(url, request.headers, form):
            # The URL without its query (the sender's to choose): a wrong SWML_PROXY_URL_BASE
            # is the usual reason SignalWire's own reports are refused.
            log.warning(
                "refused a delivery report not signed with the Signing Key for %s%s",
                public_url,
                request.url.path,
            )
            return not_signed_response()
        report = read_report(request.query_params.get(STATUS_CALLBACK_VERIFICATION), form)
        following = runtime.follow_up
        if report is None or following is None:
            return Response(status_code=204)
        try:
            known = await following.record(
                report.verification_id, report.carrier_ref, report.state, report.error_code
            )
        except StoreUnavailable:
            return error_response(
                503, "store_unavailable", "The report could not be recorded; send it again."
            )
        if known is None:
            log.info("a delivery report named no text of ours (verification %s)", report.verification_id)
        return Response(status_code=204)

    return router

"""A faithful fake of the SignalWire REST API this project uses, for tests over real HTTP.

It serves the MFA API (``/api/relay/rest/mfa/...``, as SignalWire documents it) and the
two compatibility endpoints the SignalWire delivery uses (``Messages.json``,
``Calls.json``), and the number lookup (``GET /api/relay/rest/lookup/phone_number/
{e164}?include=carrier``, whose ``carrier.linetype`` comes from ``fake.line_types``,
``wireless`` unless set; the carrier only when asked for with ``include=carrier``;
404 for a number that is not E.164), and it enforces their contract: Basic auth, the body's keys,
types and ranges, one success per code, ``max_attempts`` counting every
check, ``valid_for`` on an injectable clock.

Start it with pytest-aiohttp::

    fake = make_fake_signalwire()
    server = await aiohttp_server(fake.app)
    base_url = str(server.make_url(""))

Then read what was sent from ``fake.sent`` (MFA) and ``fake.messages``
(compatibility API), every request from ``fake.requests``, and inject faults
with ``fake.delay`` and ``fake.fail_next(kind)``.

A text sent with a ``StatusCallback`` (an absolute http(s) URL, else refused with
error 21609 as SignalWire does) can then be reported on as SignalWire would:
``await fake.report(sid, "delivered")`` POSTs the status callback form to that URL,
signed with ``fake.signing_key`` (base64 HMAC-SHA1 over the URL and the form's
fields sorted by name), in whatever order, as often, and as badly signed as the
test asks (``signature="none"``, ``"wrong_key"``, ``"tampered"``; ``header=`` the
Twilio alias; ``default_port=True`` signs the URL with ``:80`` in it).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import socket
import string
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

MFA = "/api/relay/rest/mfa"
LOOKUP = "/api/relay/rest/lookup/phone_number"
LAML = "/api/laml/2010-04-01/Accounts"
E164 = re.compile(r"^\+[1-9]\d{1,14}$")
DEFAULT_MESSAGE = "Your code is"
FAULT_KINDS = ("500", "429", "non_json", "reset", "hang", "401", "422")
SIGNATURE_KINDS = ("valid", "none", "wrong_key", "tampered")
STATUS_CALLBACK = re.compile(r"^https?://[^\s/?#]+(/\S*)?$")
HANG_SECONDS = 3600.0

# GSM 03.38: basic set (one septet) and extension table (two septets: escape + char).
GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENDED = set("^{}\\[~]|€")
MFA_KEYS = {"to", "from", "message", "token_length", "valid_for", "max_attempts", "allow_alphas"}

Clock = Callable[[], float]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def one_segment(text: str) -> bool:
    """Whether ``text`` fits one SMS: 160 GSM-7 septets, or 70 UCS-2 units otherwise."""
    if all(char in GSM7_BASIC or char in GSM7_EXTENDED for char in text):
        return sum(2 if char in GSM7_EXTENDED else 1 for char in text) <= 160
    return len(text.encode("utf-16-le")) // 2 <= 70


@dataclass
class MfaCode:
    """One code the fake sent, and what has happened to it."""

    id: str
    to: str
    channel: str
    code: str
    max_attempts: int
    expires_at: float
    attempts: int = 0
    verified: bool = False


@dataclass
class Fault:
    """A fault to apply to the next ``count`` requests whose path starts with ``path_prefix``."""

    kind: str
    count: int
    path_prefix: str = ""


@dataclass
class FakeSignalWire:
    """The fake's app and state; see the module docstring."""

    project_id: str
    api_token: str
    clock: Clock
    app: web.Application = field(init=False)
    sent: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    codes: dict[str, MfaCode] = field(default_factory=dict)
    delay: float = 0.0
    delay_path_prefix: str = ""
    faults: list[Fault] = field(default_factory=list)
    line_types: dict[str, str] = field(default_factory=dict)  # number -> carrier.linetype
    signing_key: str = "PSKfake-signing-key-0123456789"  # the fake project's Signing Key

    def __post_init__(self) -> None:
        self.app = web.Application(middlewares=[self._record, self._inject_faults, self._authenticate])
        self.app.router.add_post(f"{MFA}/sms", self._send_sms)
        self.app.router.add_post(f"{MFA}/call", self._send_call)
        self.app.router.add_post(MFA + "/{id}/verify", self._verify)
        self.app.router.add_post(LAML + "/{project}/Messages.json", self._laml_message)
        self.app.router.add_post(LAML + "/{project}/Calls.json", self._laml_call)
        self.app.router.add_get(LOOKUP + "/{number}", self._lookup)

    # Test helpers.

    def fail_next(self, kind: str, count: int = 1, path_prefix: str = "") -> None:
        """Make the next ``count`` requests (under ``path_prefix``) fail with ``kind``.

        Kinds: ``500``; ``429`` (``Retry-After: 7``); ``non_json`` (200 with an
        HTML page); ``reset`` (the connection is torn down without an answer);
        ``hang`` (no answer until the client gives up); ``401``; ``422`` (a refusal
        whose detail quotes a number, as SignalWire's do).
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {', '.join(FAULT_KINDS)}")
        self.faults.append(Fault(kind, count, path_prefix))

    def code_for(self, mfa_id: str) -> str:
        """The code the fake sent for ``mfa_id`` (what the phone would show)."""
        return self.codes[mfa_id].code

    def count(self, path_prefix: str = "", method: str = "POST") -> int:
        """How many requests arrived under ``path_prefix``."""
        return sum(1 for m, p in self.requests if m == method and p.startswith(path_prefix))

    def texts(self) -> list[dict[str, Any]]:
        """The SMS sent through the compatibility API, oldest first."""
        return [message for message in self.messages if message["kind"] == "sms"]

    def calls(self) -> list[dict[str, Any]]:
        """The calls placed through the compatibility API, oldest first."""
        return [message for message in self.messages if message["kind"] == "call"]

    def sign(self, url: str, fields: dict[str, str], key: str | None = None) -> str:
        """SignalWire's signature of a form POSTed to ``url`` (the compatibility scheme)."""
        signed = url + "".join(f"{name}{fields[name]}" for name in sorted(fields))
        digest = hmac.new((key or self.signing_key).encode(), signed.encode(), hashlib.sha1).digest()
        return base64.b64encode(digest).decode()

    async def report(
        self,
        sid: str,
        status: str,
        *,
        error_code: str | None = None,
        signature: str = "valid",
        header: str = "X-SignalWire-Signature",
        default_port: bool = False,
    ) -> int:
        """POST the status callback of text ``sid`` as SignalWire does; the HTTP status answered."""
        if signature not in SIGNATURE_KINDS:
            raise ValueError(f"unknown signature {signature!r}; one of {', '.join(SIGNATURE_KINDS)}")
        message = next(message for message in self.messages if message["sid"] == sid)
        url = message["status_callback"]
        assert url, "the text asked for no status callback"
        fields = {
            "MessageSid": sid,
            "SmsSid": sid,
            "MessageStatus": status,
            "SmsStatus": status,
            "AccountSid": self.project_id,
            "From": message["from"],
            "To": message["to"],
            "Body": message["body"],  # the text itself, code and all, as SignalWire sends it
            "NumSegments": "1",
            "ApiVersion": "2010-04-01",
        }
        if error_code is not None:
            fields["ErrorCode"] = error_code
            fields["ErrorMessage"] = "Unreachable destination handset"
        signed_url = _with_default_port(url) if default_port else url
        headers = {}
        if signature != "none":
            key = "PSKsome-other-projects-key" if signature == "wrong_key" else None
            headers[header] = self.sign(signed_url, fields, key)
        if signature == "tampered":
            fields["MessageStatus"] = "delivered" if status != "delivered" else "undelivered"
        async with (
            aiohttp.ClientSession() as http,
            http.post(url, data=fields, headers=headers, allow_redirects=False) as answer,
        ):
            await answer.read()
            return answer.status

    # Middlewares, outermost first: every request is counted, then delayed or
    # failed as a test asked, and only then authenticated like the real API.

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        return await handler(request)

    @web.middleware
    async def _inject_faults(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.delay > 0 and request.path.startswith(self.delay_path_prefix):
            await asyncio.sleep(self.delay)
        fault = self._take_fault(request.path)
        if fault is None:
            return await handler(request)
        if fault == "500":
            return web.json_response({"error": "Internal Server Error"}, status=500)
        if fault == "429":
            return web.json_response({"error": "Too Many Requests"}, status=429, headers={"Retry-After": "7"})
        if fault == "401":
            return _unauthorized()
        if fault == "422":
            return _invalid([_error("invalid_parameter", "to +15550001234 cannot receive messages")])
        if fault == "non_json":
            return web.Response(
                text="<html><body><h1>502 Bad Gateway</h1></body></html>", content_type="text/html"
            )
        if fault == "reset":
            await _reset(request)
        # "hang" (and "reset", should the runner not cancel the handler): no answer.
        await _wait_for_disconnect(request, HANG_SECONDS)
        raise web.HTTPGatewayTimeout()

    def _take_fault(self, path: str) -> str | None:
        for fault in self.faults:
            if path.startswith(fault.path_prefix):
                fault.count -= 1
                if fault.count <= 0:
                    self.faults.remove(fault)
                return fault.kind
        return None

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self._authorized(request.headers.get("Authorization", "")):
            return _unauthorized()
        return await handler(request)

    def _authorized(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(user.encode(), self.project_id.encode()) & hmac.compare_digest(
            password.encode(), self.api_token.encode()
        )

    # The MFA API.

    async def _send_sms(self, request: web.Request) -> web.Response:
        return await self._send(request, "sms")

    async def _send_call(self, request: web.Request) -> web.Response:
        return await self._send(request, "call")

    async def _send(self, request: web.Request, channel: str) -> web.Response:
        body, problem = await _json_object(request)
        if body is None:
            return _invalid([problem])
        problems = _check_send(body)
        if problems:
            return _invalid(problems)
        token_length = body.get("token_length", 6)
        alphabet = string.ascii_uppercase + string.digits if body.get("allow_alphas") else string.digits
        code = "".join(secrets.choice(alphabet) for _ in range(token_length))
        message = body.get("message", DEFAULT_MESSAGE)
        mfa = MfaCode(
            id=str(uuid.uuid4()),
            to=body["to"],
            channel=channel,
            code=code,
            max_attempts=body.get("max_attempts", 3),
            expires_at=self.clock() + body.get("valid_for", 3600),
        )
        self.codes[mfa.id] = mfa
        self.sent.append(
            {
                "id": mfa.id,
                "to": mfa.to,
                "from": body.get("from"),
                "channel": channel,
                "message": message,
                "code": code,
                "body": f"{message} {code}",  # what the phone shows (or the call says)
                "request": body,  # the JSON body exactly as received
            }
        )
        return web.json_response({"id": mfa.id, "success": True, "to": mfa.to, "channel": channel})

    async def _verify(self, request: web.Request) -> web.Response:
        body, problem = await _json_object(request)
        if body is None:
            return _invalid([problem])
        problems = [
            _error("unknown_parameter", f"{key} is not a permitted parameter")
            for key in body
            if key != "token"
        ]
        if not isinstance(body.get("token"), str) or not body["token"]:
            problems.append(_error("invalid_parameter", "token is required and must be a string"))
        if problems:
            return _invalid(problems)
        mfa = self.codes.get(request.match_info["id"])
        if mfa is None or mfa.verified or mfa.attempts >= mfa.max_attempts or self.clock() >= mfa.expires_at:
            return web.json_response({"error": "Not Found"}, status=404)
        mfa.attempts += 1  # every check counts, the right one included
        if hmac.compare_digest(body["token"].encode(), mfa.code.encode()):
            mfa.verified = True
            return web.json_response({"success": True})
        return web.json_response({"success": False})

    # The compatibility (LaML) API.

    async def _laml_message(self, request: web.Request) -> web.Response:
        return await self._laml(request, "sms", "Body")

    async def _laml_call(self, request: web.Request) -> web.Response:
        return await self._laml(request, "call", "Twiml")

    async def _laml(self, request: web.Request, kind: str, content: str) -> web.Response:
        if request.match_info["project"] != self.project_id:
            return web.json_response({"code": 20404, "message": "Not Found", "status": 404}, status=404)
        form = await request.post()
        to, sender, text = (form.get(name) for name in ("To", "From", content))
        status_callback = form.get("StatusCallback")
        if status_callback is not None and (
            not isinstance(status_callback, str)
            or len(status_callback) > 2048
            or not STATUS_CALLBACK.match(status_callback)
        ):
            return _laml_error(21609, "The StatusCallback URL is not a valid URL.")
        if not isinstance(to, str) or not E164.match(to):
            return _laml_error(21211, f"The 'To' number {to} is not a valid phone number.")
        if not isinstance(sender, str) or not E164.match(sender):
            return _laml_error(21212, f"The 'From' number {sender} is not a valid phone number.")
        if not isinstance(text, str) or not text.strip():
            return _laml_error(21602 if kind == "sms" else 21205, f"{content} is required.")
        if kind == "sms" and len(text) > 1600:
            return _laml_error(21617, "The concatenated message body exceeds the 1600 character limit.")
        sid = str(uuid.uuid4())
        self.messages.append(
            {
                "sid": sid,
                "kind": kind,
                "to": to,
                "from": sender,
                content.lower(): text,
                "status_callback": status_callback,
            }
        )
        answer = {"sid": sid, "account_sid": self.project_id, "to": to, "from": sender, "status": "queued"}
        if kind == "sms":
            answer["body"] = text
        return web.json_response(answer, status=201)

    # The number lookup.

    async def _lookup(self, request: web.Request) -> web.Response:
        number = request.match_info["number"]
        if not E164.match(number):
            return web.json_response(
                {"errors": [{"code": "not_found", "detail": "phone number not found", "status": "404"}]},
                status=404,
            )
        answer: dict[str, Any] = {"e164": number, "national_number": number[-10:], "country_code": "1"}
        if "carrier" in request.query.get("include", "").split(","):
            answer["carrier"] = {
                "lrn": number,
                "spid": "1234",
                "ocn": "1234",
                "lata": "999",
                "city": "WASHINGTON",
                "state": "DC",
                "jurisdiction": "INDEP",
                "lec": "Example Telco",
                "linetype": self.line_types.get(number, "wireless"),
            }
        return web.json_response(answer)


def make_fake_signalwire(
    project_id: str = "test-project",
    api_token: str = "test-token",  # noqa: S107 - a fake's test credential
    clock: Clock | None = None,
) -> FakeSignalWire:
    """A fresh fake. ``clock`` returns seconds (default ``time.monotonic``); pass a fake to expire codes."""
    return FakeSignalWire(project_id=project_id, api_token=api_token, clock=clock or time.monotonic)


def _check_send(body: dict[str, Any]) -> list[dict[str, str]]:
    problems = [
        _error("unknown_parameter", f"{key} is not a permitted parameter")
        for key in body
        if key not in MFA_KEYS
    ]
    to = body.get("to")
    if to is None:
        problems.append(_error("missing_parameter", "to is required"))
    elif not isinstance(to, str) or not E164.match(to):
        # The real API quotes the number back; the client must not pass that on.
        problems.append(_error("invalid_parameter", f"to '{to}' must be a phone number in E.164 format"))
    if "from" in body and (not isinstance(body["from"], str) or not E164.match(body["from"])):
        problems.append(
            _error("invalid_parameter", f"from '{body['from']}' must be a phone number in E.164 format")
        )
    if "message" in body and (not isinstance(body["message"], str) or not one_segment(body["message"])):
        problems.append(_error("invalid_parameter", "message must fit in one SMS segment"))
    for key, low, high in (("token_length", 4, 20), ("valid_for", 1, 604_800), ("max_attempts", 1, 20)):
        value = body.get(key, low)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            problems.append(_error("invalid_parameter", f"{key} must be an integer from {low} to {high}"))
    if "allow_alphas" in body and not isinstance(body["allow_alphas"], bool):
        problems.append(_error("invalid_parameter", "allow_alphas must be true or false"))
    return problems


async def _json_object(request: web.Request) -> tuple[dict[str, Any] | None, dict[str, str]]:
    try:
        body = json.loads(await request.read())
    except ValueError:
        return None, _error("invalid_json", "the request body must be JSON")
    if not isinstance(body, dict):
        return None, _error("invalid_json", "the request body must be a JSON object")
    return body, {}


def _error(code: str, detail: str) -> dict[str, str]:
    return {"code": code, "title": code.replace("_", " ").capitalize(), "detail": detail, "status": "422"}


def _invalid(problems: list[dict[str, str]]) -> web.Response:
    return web.json_response({"errors": problems}, status=422)


def _unauthorized() -> web.Response:
    return web.json_response({"error": "Unauthorized"}, status=401)


def _laml_error(code: int, message: str) -> web.Response:
    return web.json_response(
        {
            "code": code,
            "message": message,
            "more_info": f"https://example.invalid/errors/{code}",
            "status": 400,
        },
        status=400,
    )


def _with_default_port(url: str) -> str:
    """``url`` with its scheme's default port written out, as SignalWire sometimes signs it."""
    scheme, _, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    if ":" in host:
        return url
    port = "443" if scheme == "https" else "80"
    return f"{scheme}://{host}:{port}{slash}{path}"


async def _reset(request: web.Request) -> None:
    """Tear the connection down with a TCP reset, the way a crashing proxy does."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0: close() sends RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _wait_for_disconnect(request: web.Request, limit: float) -> None:
    """Sleep until the client goes away (or ``limit``), so a hung handler does not outlive its test."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(0.05)

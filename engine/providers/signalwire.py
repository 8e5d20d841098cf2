"""The SignalWire provider: SignalWire's MFA REST API makes, delivers and checks the code.

The code never passes through this process. SignalWire answers a send with
its own id (kept as ``provider_ref``) and a check with success or not; it
forgets a code once it is verified, used up or expired, and says so with a 404.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

from engine.errors import ProviderRejected, ProviderUnavailable
from engine.models import Verification
from engine.providers.base import Answer, Provider, SendRequest, Sent
from engine.signalwire_rest import JsonObject, RequestNotSent, SignalWireRest, error_details

MFA_PATH = "/api/relay/rest/mfa"
# A retried check must still leave this much of the first try's time, or it is not worth starting.
RETRY_MIN_SECONDS = 0.5
RETRY_PAUSE_SECONDS = 0.1


class SignalWireMfaProvider(Provider):
    """``Provider`` over ``/api/relay/rest/mfa``; see ``engine.signalwire_rest`` for transport errors."""

    name = "signalwire"

    def __init__(self, rest: SignalWireRest) -> None:
        self._rest = rest

    async def send(self, request: SendRequest) -> Sent:
        # Exactly the documented keys: the API rejects any other.
        body: dict[str, Any] = {"to": request.to}
        if request.from_number:
            body["from"] = request.from_number
        body |= {
            "message": request.message,
            "token_length": request.token_length,
            "valid_for": request.valid_for,
            "max_attempts": request.max_attempts,
            "allow_alphas": request.allow_alphas,
        }
        # Never retried here, not even when the connection failed: the engine
        # owns that choice, because a second send can text the caller twice.
        status, answer = await self._rest.post_json(f"{MFA_PATH}/{request.channel}", body)
        if 200 <= status < 300:
            mfa_id = answer.get("id")
            if answer.get("success") is True and isinstance(mfa_id, str) and mfa_id:
                return Sent(provider_ref=mfa_id)
            raise ProviderUnavailable(
                f"SignalWire answered the {request.channel} send (HTTP {status}) without success and an id",
                kind="bad_response",
            )
        if status in (400, 422):
            raise ProviderRejected(
                f"SignalWire refused the {request.channel} send (HTTP {status}): {error_details(answer)}",
                kind="invalid",
            )
        raise _unexpected(status, f"the {request.channel} send")

    async def verify(self, verification: Verification, code: str) -> Answer:
        if not verification.provider_ref:
            # Not a SignalWire verification (sent before the provider was
            # switched, say): SignalWire cannot know its code.
            return Answer.GONE
        path = f"{MFA_PATH}/{quote(verification.provider_ref, safe='')}/verify"
        status, answer = await self._post_check(path, {"token": code})
        if 200 <= status < 300:
            success = answer.get("success")
            if success is True:
                return Answer.CORRECT
            if success is False:
                return Answer.WRONG
            raise ProviderUnavailable(
                f"SignalWire answered the check (HTTP {status}) without a success flag", kind="bad_response"
            )
        if status == 404:
            return Answer.GONE
        if status in (400, 422):
            # No details here: SignalWire's text about a token may quote the code.
            raise ProviderRejected(f"SignalWire refused the code's format (HTTP {status})", kind="invalid")
        raise _unexpected(status, "the check")

    async def _post_check(self, path: str, body: JsonObject) -> tuple[int, JsonObject]:
        """POST a check, repeating it once only when it cannot have reached SignalWire.

        SignalWire spends one of the code's attempts on every check that
        arrives, the right code included, and a code can be verified only
        once. A check that timed out or whose connection broke may have
        arrived: repeating it could spend the caller's last attempt, or find
        the code already used and call it gone when it was in fact correct.
        So the one retry is for a connection that was never opened
        (``RequestNotSent``), and it must fit in the first try's time so the
        caller's answer stays within the platform's budget.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._rest.timeout
        try:
            return await self._rest.post_json(path, body)
        except RequestNotSent:
            left = deadline - loop.time() - RETRY_PAUSE_SECONDS
            if left < RETRY_MIN_SECONDS:
                raise
        await asyncio.sleep(RETRY_PAUSE_SECONDS)
        return await self._rest.post_json(path, body, time_budget=left)


def _unexpected(status: int, what: str) -> ProviderRejected | ProviderUnavailable:
    """A status the API does not document for this call."""
    if 400 <= status < 500:
        # 403 (the token lacks a scope), or a 404 on a send (wrong space): configuration.
        return ProviderRejected(f"SignalWire refused {what} (HTTP {status})", kind="refused")
    return ProviderUnavailable(f"SignalWire answered {what} with HTTP {status}", kind="bad_response")

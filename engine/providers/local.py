"""The local provider: this project's own codes, with SignalWire's semantics.

Codes come from `secrets`, only their HMAC under a server key is stored (on
the verification record), and they are compared in constant time. Attempts,
lifetime and "one success only" are kept by the engine through the store, the
same way for both providers, so the functions cannot tell the two apart.
"""

from __future__ import annotations

from engine.codes import code_digest, code_matches, new_code, sms_body
from engine.delivery import Delivery
from engine.models import Verification
from engine.providers.base import Answer, Provider, SendRequest, Sent


class LocalProvider(Provider):
    """Makes a code, hands its text to a delivery, keeps only the digest."""

    name = "local"

    def __init__(self, key: bytes, delivery: Delivery) -> None:
        self._key = key
        self._delivery = delivery

    async def send(self, request: SendRequest) -> Sent:
        code = new_code(request.token_length, request.allow_alphas)
        await self._delivery.deliver(request.to, request.channel, sms_body(request.message, code))
        return Sent(code_digest=code_digest(self._key, request.verification_id, code))

    async def verify(self, verification: Verification, code: str) -> Answer:
        if verification.code_digest is None:
            return Answer.GONE
        if code_matches(self._key, verification.id, code, verification.code_digest):
            return Answer.CORRECT
        return Answer.WRONG

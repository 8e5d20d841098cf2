"""The local provider: this project's own codes, with SignalWire's semantics.

Codes come from `secrets`, only their HMAC under a server key is stored (on
the verification record), and they are compared in constant time. The key is
read from the key ring on every use, so one adopted from the store (after it
lost its data, engine/keys.py) takes effect at once. Attempts,
lifetime and "one success only" are kept by the engine through the store, the
same way for both providers, so the functions cannot tell the two apart.
"""

from __future__ import annotations

from engine.codes import Message, code_digest, code_matches, new_code
from engine.delivery import Delivery, Receipt
from engine.keys import CodeKeys
from engine.models import Verification
from engine.providers.base import Answer, PreparedSend, Provider, SendRequest, Sent


class LocalProvider(Provider):
    """Makes a code, hands it with the message to a delivery, keeps only the digest."""

    name = "local"

    def __init__(self, keys: CodeKeys, delivery: Delivery) -> None:
        self._keys = keys
        self._delivery = delivery
        self.reports_delivery = delivery.reports_delivery

    async def send(self, request: SendRequest) -> Sent:
        prepared = self.prepare(request)
        receipt = await prepared.deliver()
        return Sent(
            provider_ref=receipt.carrier_ref,
            code_digest=prepared.code_digest,
            delivery_reported=receipt.reported,
        )

    def prepare(self, request: SendRequest) -> PreparedSend:
        code = new_code(request.token_length, request.allow_alphas)
        message = Message(request.message, code)

        async def deliver() -> Receipt:
            return await self._delivery.deliver(
                request.to, request.channel, message, reference=request.verification_id
            )

        return PreparedSend(code_digest(self._keys.code_key, request.verification_id, code), deliver)

    async def verify(self, verification: Verification, code: str) -> Answer:
        # The text's code, and the code of the call that followed it when it was not delivered:
        # either verifies, so a text that arrives late still works.
        digests = [d for d in (verification.code_digest, verification.fallback_digest) if d is not None]
        if not digests:
            return Answer.GONE
        # Also under a key replaced a moment ago: the code may have been made just before.
        keys = self._keys.code_keys()
        if any(code_matches(key, verification.id, code, digest) for digest in digests for key in keys):
            return Answer.CORRECT
        return Answer.WRONG

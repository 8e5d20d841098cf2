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
from engine.delivery import Delivery
from engine.keys import CodeKeys
from engine.models import Verification
from engine.providers.base import Answer, Provider, SendRequest, Sent


class LocalProvider(Provider):
    """Makes a code, hands it with the message to a delivery, keeps only the digest."""

    name = "local"

    def __init__(self, keys: CodeKeys, delivery: Delivery) -> None:
        self._keys = keys
        self._delivery = delivery

    async def send(self, request: SendRequest) -> Sent:
        code = new_code(request.token_length, request.allow_alphas)
        await self._delivery.deliver(request.to, request.channel, Message(request.message, code))
        return Sent(code_digest=code_digest(self._keys.code_key, request.verification_id, code))

    async def verify(self, verification: Verification, code: str) -> Answer:
        digest = verification.code_digest
        if digest is None:
            return Answer.GONE
        # Also under a key replaced a moment ago: the code may have been made just before.
        if any(code_matches(key, verification.id, code, digest) for key in self._keys.code_keys()):
            return Answer.CORRECT
        return Answer.WRONG

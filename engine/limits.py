"""Rate limits, kept in the store so every instance enforces the same ones.

- sends per destination number per hour (SMS pumping, harassment),
- sends per call, and a global send rate per agent (runaway prompts, floods),
- failed code checks per call, across codes: a new code does not reset them,
  so a caller cannot guess their way through by asking for fresh codes.

Store keys never hold a full number: destinations are keyed by a keyed hash.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from engine.errors import CallLocked, RateLimited
from engine.stores.base import Store

HOUR = 3600.0
MINUTE = 60.0
CALL_STATE_TTL = 24 * 3600.0


@dataclass(frozen=True)
class LimitSettings:
    sends_per_number_per_hour: int
    sends_per_call: int
    max_failures_per_call: int
    sends_per_agent_per_minute: int


@dataclass(frozen=True)
class Admission:
    """The limiter keys a send was counted under, so a failed send can be taken back."""

    keys: tuple[str, ...]


class Limits:
    """Checks and records the limits around sends and failed checks."""

    def __init__(self, store: Store, settings: LimitSettings, key: bytes) -> None:
        self._store = store
        self._settings = settings
        self._key = key

    def _number_key(self, number: str) -> str:
        digest = hmac.new(self._key, number.encode(), hashlib.sha256).hexdigest()[:32]
        return f"sends:number:{digest}"

    async def admit_send(self, to: str, agent_id: str, call_id: str | None, now: float) -> Admission:
        """Count one send against every limit, or raise without counting any."""
        if call_id is not None:
            await self.ensure_not_locked(call_id)
        checks: list[tuple[str, int, float, str, str]] = [
            (
                self._number_key(to),
                self._settings.sends_per_number_per_hour,
                HOUR,
                "sends_per_number_per_hour",
                "Too many codes were sent to that number recently.",
            ),
            (
                f"sends:agent:{agent_id}",
                self._settings.sends_per_agent_per_minute,
                MINUTE,
                "sends_per_agent_per_minute",
                "The agent is sending too many codes right now.",
            ),
        ]
        if call_id is not None:
            checks.insert(
                0,
                (
                    f"sends:call:{call_id}",
                    self._settings.sends_per_call,
                    HOUR,  # longer than any call
                    "sends_per_call",
                    "The most codes one call may ask for have been sent.",
                ),
            )
        counted: list[str] = []
        for key, limit, window, name, message in checks:
            retry_after = await self._store.hit(key, limit, window, now)
            if retry_after > 0:
                await self.take_back(Admission(tuple(counted)), now)
                raise RateLimited(message, name, int(retry_after + 0.999))
            counted.append(key)
        return Admission(tuple(counted))

    async def take_back(self, admission: Admission, now: float) -> None:
        """A send that failed does not count against the limits."""
        for key in admission.keys:
            await self._store.unhit(key, now)

    async def ensure_not_locked(self, call_id: str) -> None:
        if await self.failures(call_id) >= self._settings.max_failures_per_call:
            raise CallLocked("This call has had too many wrong codes.")

    async def failures(self, call_id: str) -> int:
        return await self._store.get_count(f"failures:call:{call_id}")

    async def add_failure(self, call_id: str) -> bool:
        """Count a wrong code for the call; True when that locks the call."""
        count = await self._store.incr(f"failures:call:{call_id}", CALL_STATE_TTL)
        return count >= self._settings.max_failures_per_call

"""Rate limits, kept in the store so every instance enforces the same ones.

- sends per destination number per hour (SMS pumping, harassment),
- sends per call, and a global send rate per agent (runaway prompts, floods),
- failed code checks per call, across codes: a new code does not reset them,
  so a caller cannot guess their way through by asking for fresh codes.

Store keys never hold a full number: destinations are keyed by a keyed hash
(the key ring's limits key, read on every use: engine/keys.py).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass

from engine.errors import CallLocked, RateLimited
from engine.keys import NumberKey
from engine.stores.base import CallLock, Store
from engine.stores.windows import EXACT_UP_TO, Window

HOUR = 3600.0
MINUTE = 60.0
CALL_STATE_TTL = 24 * 3600.0
FAILURES_PREFIX = "failures:call:"  # + the call id: wrong codes on that call


@dataclass(frozen=True)
class LimitSettings:
    sends_per_number_per_hour: int
    sends_per_call: int
    max_failures_per_call: int
    sends_per_agent_per_minute: int


@dataclass(frozen=True)
class Admission:
    """The windows a send was counted in, and when, so a failed send can be taken back."""

    windows: tuple[Window, ...]
    now: float


class Limits:
    """Checks and records the limits around sends and failed checks."""

    def __init__(self, store: Store, settings: LimitSettings, keys: NumberKey) -> None:
        self._store = store
        self._settings = settings
        self._keys = keys

    def _number_key(self, number: str) -> str:
        digest = hmac.new(self._keys.limits_key, number.encode(), hashlib.sha256).hexdigest()[:32]
        return f"sends:number:{digest}"

    async def admit_send(self, to: str, agent_id: str, call_id: str | None, now: float) -> Admission:
        """Count one send against every limit, or raise without counting any."""
        limits = self._settings
        # A call locked by its wrong codes is refused in the same step as the windows are counted.
        ceiling = None if call_id is None else self.call_lock.for_call(call_id)
        checks: list[tuple[Window, str, str]] = []
        if call_id is not None:
            checks.append(
                (
                    Window(f"sends:call:{call_id}", limits.sends_per_call, HOUR),  # longer than any call
                    "sends_per_call",
                    "The most codes one call may ask for have been sent.",
                )
            )
        checks.append(
            (
                Window(self._number_key(to), limits.sends_per_number_per_hour, HOUR),
                "sends_per_number_per_hour",
                "Too many codes were sent to that number recently.",
            )
        )
        checks.append(
            (
                # A flood guard, usually with a large limit: two buckets, not a log of every send.
                Window(
                    f"sends:agent:{agent_id}",
                    limits.sends_per_agent_per_minute,
                    MINUTE,
                    exact=limits.sends_per_agent_per_minute <= EXACT_UP_TO,
                ),
                "sends_per_agent_per_minute",
                "The agent is sending too many codes right now.",
            )
        )
        windows = tuple(window for window, _, _ in checks)
        first = () if ceiling is None else (ceiling,)
        refused = await self._store.hit((*first, *windows), now)
        if refused is not None:
            if refused.index < len(first):
                raise CallLocked("This call has had too many wrong codes.")
            _, name, message = checks[refused.index - len(first)]
            raise RateLimited(message, name, math.ceil(refused.retry_after))
        return Admission(windows, now)

    async def take_back(self, admission: Admission) -> None:
        """A send that failed does not count against the limits."""
        await self._store.unhit(admission.windows, admission.now)

    @property
    def call_lock(self) -> CallLock:
        """When a call is locked, for the store to test in the same step as counting an attempt."""
        return CallLock(FAILURES_PREFIX, self._settings.max_failures_per_call)

    async def add_failure(self, call_id: str) -> bool:
        """Count a wrong code for the call; True when that locks the call."""
        count = await self._store.incr(FAILURES_PREFIX + call_id, CALL_STATE_TTL)
        return count >= self._settings.max_failures_per_call

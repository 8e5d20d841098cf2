"""Rate limits and failure budgets, kept in the store so every instance enforces the same ones.

Sends:
- per destination number per hour (SMS pumping, harassment),
- per call, per agent id, and for the whole deployment per minute: the
  deployment-wide cap is the one no agent id, call id or interface escapes,
  since an agent id is whatever a request names.

Wrong codes (failure budgets), across every code and every interface:
- per call: a new code does not reset them, so a caller cannot guess their
  way through by asking for fresh codes; a call that used them up is locked;
- per destination number per day: past it, no code to that number is judged
  and no new code goes to it until the window moves. This bounds guessing at
  one number whatever the calls, the API requests and the sends.

A failure is counted before the code is judged, in the same store step as
the attempt, and given back when the code was right (or could not be
judged), so no number of parallel wrong codes can pass a budget.

The SMS pumping guard (engine/fraud.py) decides in the same store step as
these windows: a send it refuses is counted in none of them.

Store keys never hold a full number: destinations are keyed by a keyed hash
(the key ring's limits key, read on every use: engine/keys.py).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass

from engine.errors import CallLocked, RateLimited
from engine.fraud import refusal
from engine.keys import NumberKey
from engine.stores.base import WindowStore
from engine.stores.guard import GuardCheck, GuardRefused
from engine.stores.windows import EXACT_UP_TO, Window

DAY = 24 * 3600.0
HOUR = 3600.0
MINUTE = 60.0
CALL_FAILURES_PREFIX = "failures:call:"  # + the call id: wrong codes on that call


@dataclass(frozen=True)
class LimitSettings:
    sends_per_number_per_hour: int
    sends_per_call: int
    max_failures_per_call: int
    sends_per_agent_per_minute: int
    sends_per_minute: int
    max_failures_per_number_per_day: int


@dataclass(frozen=True)
class Admission:
    """The windows a send was counted in, and when, so a failed send can be taken back."""

    windows: tuple[Window, ...]
    now: float


@dataclass(frozen=True)
class _Check:
    window: Window
    limit_name: str  # the `RateLimited.limit` (and event reason) when this window refuses
    message: str


class Limits:
    """Checks and records the limits around sends and checks of codes."""

    def __init__(self, store: WindowStore, settings: LimitSettings, keys: NumberKey) -> None:
        self._store = store
        self._settings = settings
        self._keys = keys

    def number_digest(self, number: str) -> str:
        """A keyed hash of a number: what store keys hold instead of it."""
        return hmac.new(self._keys.limits_key, number.encode(), hashlib.sha256).hexdigest()[:32]

    def _call_failures(self, call_id: str, *, counted: bool = True) -> Window:
        # A day: longer than any call.
        limit = self._settings.max_failures_per_call
        return Window(CALL_FAILURES_PREFIX + call_id, limit, DAY, counted=counted)

    def _number_failures(self, number: str, *, counted: bool = True) -> Window:
        limit = self._settings.max_failures_per_number_per_day
        return Window(f"failures:number:{self.number_digest(number)}", limit, DAY, counted=counted)

    def failure_budgets(self, to: str, call_id: str | None) -> tuple[Window, ...]:
        """What one wrong code at a code sent to ``to`` (on ``call_id``) is counted in."""
        number = self._number_failures(to)
        return (self._call_failures(call_id), number) if call_id is not None else (number,)

    @staticmethod
    def is_call_budget(window: Window) -> bool:
        return window.key.startswith(CALL_FAILURES_PREFIX)

    async def admit_send(
        self, to: str, agent_id: str, call_id: str | None, now: float, *, guard: GuardCheck | None = None
    ) -> Admission:
        """Count one send against every limit (and the pumping guard's ``guard``), or raise
        without counting any: RateLimited, CallLocked, or the guard's FraudRefused."""
        limits = self._settings
        checks: list[_Check] = []
        if call_id is not None:
            # A call locked by its wrong codes is refused in the same step as the windows are counted.
            checks.append(_Check(self._call_failures(call_id, counted=False), "call_locked", ""))
            checks.append(
                _Check(
                    Window(f"sends:call:{call_id}", limits.sends_per_call, HOUR),  # longer than any call
                    "sends_per_call",
                    "The most codes one call may ask for have been sent.",
                )
            )
        checks += [
            _Check(
                self._number_failures(to, counted=False),
                "failures_per_number_per_day",
                "Too many wrong codes were entered for that number today.",
            ),
            _Check(
                Window(f"sends:number:{self.number_digest(to)}", limits.sends_per_number_per_hour, HOUR),
                "sends_per_number_per_hour",
                "Too many codes were sent to that number recently.",
            ),
            _Check(
                # Flood guards, usually with large limits: two buckets, not a log of every send.
                _flood_window(f"sends:agent:{agent_id}", limits.sends_per_agent_per_minute),
                "sends_per_agent_per_minute",
                "The agent is sending too many codes right now.",
            ),
            _Check(
                _flood_window("sends:all", limits.sends_per_minute),
                "sends_per_minute",
                "The service is sending too many codes right now.",
            ),
        ]
        windows = tuple(check.window for check in checks)
        refused = await self._store.hit(windows, now, guard=guard)
        if isinstance(refused, GuardRefused):
            raise refusal(refused)
        if refused is not None:
            check = checks[refused.index]
            if check.limit_name == "call_locked":
                raise CallLocked("This call has had too many wrong codes.")
            raise RateLimited(check.message, check.limit_name, math.ceil(refused.retry_after))
        counted = tuple(window for window in windows if window.counted)
        return Admission(counted + guard.counted if guard else counted, now)

    async def take_back(self, admission: Admission) -> None:
        """A send that failed does not count against the limits."""
        await self._store.unhit(admission.windows, admission.now)


def _flood_window(key: str, limit: int) -> Window:
    return Window(key, limit, MINUTE, exact=limit <= EXACT_UP_TO)

"""A circuit breaker around the provider.

When the provider keeps failing, every call would wait out its timeout while
the caller hears silence. After ``threshold`` failures in a row the breaker
opens and calls fail at once for ``cooldown`` seconds; then one trial call is
let through, and its success closes the breaker again.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from engine.errors import ProviderUnavailable

T = TypeVar("T")


class CircuitBreaker:
    """Counts consecutive `ProviderUnavailable` failures; other outcomes reset it."""

    def __init__(
        self, threshold: int = 5, cooldown: float = 15.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._clock() - self._opened_at >= self.cooldown else "open"

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        state = self.state
        if state == "open" or (state == "half_open" and self._trial_running):
            assert self._opened_at is not None
            retry_after = max(1, int(self.cooldown - (self._clock() - self._opened_at)))
            raise ProviderUnavailable(
                "The verification service is failing; not calling it for now.", "circuit_open", retry_after
            )
        self._trial_running = state == "half_open"
        try:
            result = await operation()
        except ProviderUnavailable:
            self._failures += 1
            if state == "half_open" or self._failures >= self.threshold:
                self._opened_at = self._clock()
            raise
        finally:
            self._trial_running = False
        self._failures = 0
        self._opened_at = None
        return result

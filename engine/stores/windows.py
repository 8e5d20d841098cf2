"""Rate-limit windows: what `Store.hit` counts, and the arithmetic both stores share.

A send is counted against several windows at once (per call, per number, per
agent, for the whole deployment), in one atomic step of the store: all of them
record it, or none does. A window that is only tested (``counted=False``)
refuses it in the same step while that window is full: a call or a number
that has used up its wrong codes gets no more sends.

Two ways to count a window:

- exact: a log of every event's time, a true sliding window. Its work and
  memory grow with the limit, which is right for small limits (5 sends per
  number per hour) where an approximation would let several extra through.
- buckets: two fixed buckets of ``seconds`` each, the previous one weighted by
  how much of it still lies inside the sliding window (the usual sliding
  window counter). Constant work and two counters whatever the limit, for
  large limits (600 sends per agent per minute), at the price of assuming the
  previous bucket's events were spread evenly. With a small limit that
  assumption costs too much (a limit of 2 could make a sender wait 90 s): the
  caller chooses, and `engine.limits` buckets the per-agent window only when
  its limit is above EXACT_UP_TO.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The largest limit an exact window is used for: a log this long costs little.
EXACT_UP_TO = 100


@dataclass(frozen=True)
class Window:
    """At most ``limit`` events under ``key`` in any ``seconds``.

    ``counted=False``: tested but never counted by that `hit` (an exact window
    whose events are counted elsewhere, such as a number's wrong codes).
    """

    key: str
    limit: int
    seconds: float
    exact: bool = True
    counted: bool = True


@dataclass(frozen=True)
class Refused:
    """The first window in a `hit` that had no room, and when it will have."""

    index: int
    retry_after: float


def bucket(now: float, seconds: float) -> int:
    """The number of the fixed bucket that ``now`` falls in."""
    return math.floor(now / seconds)


def bucket_key(window: Window, number: int) -> str:
    return f"{window.key}@{number}"


def previous_weight(now: float, seconds: float) -> float:
    """How much of the previous bucket still lies inside the window ending at ``now``."""
    return 1.0 - (now - bucket(now, seconds) * seconds) / seconds


def buckets_have_room(window: Window, previous: int, current: int, now: float) -> bool:
    return previous * previous_weight(now, window.seconds) + current + 1 <= window.limit


def buckets_retry_after(window: Window, previous: int, current: int, now: float) -> float:
    """Seconds until a full bucketed window has room for one more event."""
    seconds, room = window.seconds, window.limit - 1
    if room < 0:
        return seconds
    start = bucket(now, seconds) * seconds
    if current > room:
        # The current bucket alone is full: wait for it to become the previous
        # one and for its weight to fall far enough.
        return start + seconds + seconds * (1 - room / current) - now
    if previous == 0:
        return 0.0
    # Room in the current bucket once the previous one's weight has fallen.
    return max(0.0, start + seconds * (1 - (room - current) / previous) - now)


def log_retry_after(window: Window, oldest: float | None, now: float) -> float:
    """Seconds until a full exact window's oldest event leaves it."""
    return window.seconds if oldest is None else max(0.0, oldest + window.seconds - now)

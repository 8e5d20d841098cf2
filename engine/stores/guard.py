"""What the SMS pumping guard (engine/fraud.py) asks of a store, and the arithmetic both stores share.

The guard decides inside `WindowStore.hit`, in the same atomic step as the
send's rate limits, so a send costs no extra round trip and two instances can
neither both miss a trip nor both raise the same hold:

1. the prefix is held (a hold whose ``until`` is after ``now``): refused;
2. the prefix had at least ``min_sends`` sends in the last hour and fewer than
   ``min_conversion`` of them were approved: a hold is raised for
   ``hold_seconds`` and the send is refused; exactly one `hit` raises it;
3. the country is new (fewer than ``established_at`` approvals in its
   memory) and its sends in the last hour have used up its budget: refused;
4. otherwise the send is counted in the prefix's and the country's sends.

Every count is a bucketed window (`engine.stores.windows`): two fixed buckets,
constant work whatever the traffic, at the price of spreading the previous
bucket's events evenly. Approvals are counted by the approving `transition`.
A hold's end is judged on the caller's clock; the store forgets it some time
after (SQLite's ``forget_at``, a Redis TTL).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.stores.windows import Window, buckets_retry_after, previous_weight

# The reason a held prefix refuses a send, and the one a new country's spent budget gives.
HELD = "fraud_suspected"
NEW_COUNTRY = "new_country_budget"


@dataclass(frozen=True)
class CountryBudget:
    """A new country's sends per hour: ``base``, and ``per_approval`` more for each approval it had.

    The budget applies while the country's ``approvals`` are fewer than
    ``established_at``; after that the country is no longer new.
    """

    sends: Window  # the country's sends in the last hour: counted by every admitted send
    approvals: Window  # its approvals over the guard's memory of countries: read here
    base: int
    per_approval: float
    established_at: int


@dataclass(frozen=True)
class GuardCheck:
    """The pumping guard's part of one send's `hit` (see the module's docstring)."""

    prefix: str
    country: str
    sends: Window  # the prefix's sends in the last hour: counted by every admitted send
    approvals: Window  # its approvals in the last hour: read here
    min_sends: int
    min_conversion: float
    hold_seconds: float
    budget: CountryBudget

    @property
    def counted(self) -> tuple[Window, Window]:
        """The windows an admitted send is counted in (and a failed send taken back from)."""
        return (self.sends, self.budget.sends)


@dataclass(frozen=True)
class Hold:
    """A prefix that gets no code from ``since`` to ``until``, and what it had when it was held.

    ``sends`` and ``approved`` are the prefix's counts in the hour before the hold.
    """

    prefix: str
    country: str
    since: float
    until: float
    sends: int
    approved: int
    reason: str = HELD


@dataclass(frozen=True)
class GuardRefused:
    """A send the guard refused, and in how many seconds it might go through.

    ``hold`` is the prefix's hold (reason HELD); ``raised`` is True for the one
    `hit` that raised it.
    """

    reason: str
    retry_after: float
    hold: Hold | None = None
    raised: bool = False


def weighted(window: Window, previous: int, current: int, now: float) -> float:
    """A bucketed window's events in the ``window.seconds`` ending at ``now``."""
    return previous * previous_weight(now, window.seconds) + current


def should_hold(check: GuardCheck, sends: float, approved: float) -> bool:
    """Whether a prefix with these counts gets held: enough sends, too few of them approved."""
    return sends >= check.min_sends and approved < check.min_conversion * sends


def country_limit(budget: CountryBudget, approvals: float) -> float | None:
    """A new country's sends per hour now; None once it is no longer new."""
    if approvals >= budget.established_at:
        return None
    return budget.base + budget.per_approval * approvals


def country_refusal(
    budget: CountryBudget, previous: int, current: int, limit: float, now: float
) -> GuardRefused:
    """The refusal of a send to a new country whose budget (``limit``) is spent."""
    full = Window(budget.sends.key, math.floor(limit), budget.sends.seconds, exact=False)
    return GuardRefused(NEW_COUNTRY, buckets_retry_after(full, previous, current, now))


def hold_for(check: GuardCheck, sends: float, approved: float, now: float) -> Hold:
    """The hold a trip raises at ``now``."""
    return Hold(
        prefix=check.prefix,
        country=check.country,
        since=now,
        until=now + check.hold_seconds,
        sends=math.floor(sends + 0.5),
        approved=math.floor(approved + 0.5),
    )

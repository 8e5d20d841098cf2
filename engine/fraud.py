"""The SMS pumping guard: codes texted to ranges nobody verifies from are stopped without a human.

Fraudsters make a verification service text premium ranges whose operators pay
them per message, and never enter a code. The guard watches every destination
prefix (`engine.phone`: the country calling code and the first four digits of
the national number, fewer for short numbers) and every country (ISO region):

- **Held prefixes.** A prefix that had at least MFA_FRAUD_MIN_SENDS sends (20)
  in the last hour, fewer than MFA_FRAUD_MIN_CONVERSION (0.2) of them
  approved, gets no code for an hour from that moment (reason
  `fraud_suspected`), and `mfa.fraud_suspected` is raised once for the hold.
  The send that finds it so is the first refused. Other prefixes keep sending.
  An operator may end a hold early (`release`); the prefix is then judged afresh.
- **New countries.** A country with fewer than MFA_FRAUD_MIN_SENDS approvals in
  the last 30 days is new: it gets MFA_FRAUD_NEW_COUNTRY_SENDS sends (10) per
  hour, plus 1 / MFA_FRAUD_MIN_CONVERSION (5) for each of those approvals, so
  a country converting at the guard's own floor never runs short (reason
  `new_country_budget`). With MFA_FRAUD_MIN_SENDS approvals it is established
  and only the prefix rule applies. A country left 30 to 60 days without an
  approval becomes new again (`COUNTRY_MEMORY`, two bucketed periods).
- **Lists.** MFA_FRAUD_BLOCK: prefixes and countries that never get a code
  (reason `fraud_blocked`), even with the guard off. MFA_FRAUD_ALLOW: ones
  the guard never holds and never budgets. The most specific entry decides: a
  longer prefix over a shorter one, a region over its bare calling code ("GB"
  over "+44"); on a tie, the block.
- MFA_FRAUD_GUARD=off: no holds, no budgets; the block list still applies.

Codes sent by voice call count like texts: a premium range bills by the minute
too. The counting and the decisions are the store's, in the same atomic step
as the send's rate limits (engine/stores/guard.py); approvals are counted by
the approving transition. A send that then fails is taken back with the rest
of its admission, so an outage never makes a prefix look unconverted.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import phonenumbers

from engine.errors import DestinationRefused, FraudRefused, NewCountryBudget, PrefixHeld
from engine.phone import Destination, number_range
from engine.stores.base import HoldStore
from engine.stores.guard import HELD, CountryBudget, GuardCheck, GuardRefused, Hold
from engine.stores.windows import Window

log = logging.getLogger(__name__)

HOUR = 3600.0
HOLD_SECONDS = HOUR
# How long a country's approvals are remembered (the two buckets of a bucketed window).
COUNTRY_MEMORY = 30 * 24 * 3600.0
BLOCKED = "fraud_blocked"
# With a conversion floor of 0 no approvals are asked for: one is worth any number of sends.
_UNBOUNDED = 1e12


@dataclass(frozen=True)
class FraudSettings:
    """The guard's settings (MFA_FRAUD_*): ``allow``, ``block`` hold "+447700" prefixes, "GB" regions."""

    guard: bool = True
    min_sends: int = 20
    min_conversion: float = 0.2
    allow: tuple[str, ...] = ()
    block: tuple[str, ...] = ()
    new_country_sends: int = 10


def _counts(key: str, seconds: float) -> Window:
    # Counted and read by the guard, never checked as a limit: the limit is unused.
    return Window(key, 0, seconds, exact=False)


def prefix_windows(prefix: str) -> tuple[Window, Window]:
    """A prefix's sends and approvals in the last hour."""
    return _counts(f"fraud:prefix:{prefix}:sends", HOUR), _counts(f"fraud:prefix:{prefix}:approved", HOUR)


def country_windows(region: str) -> tuple[Window, Window]:
    """A country's sends in the last hour and its approvals over COUNTRY_MEMORY."""
    return _counts(f"fraud:country:{region}:sends", HOUR), _counts(
        f"fraud:country:{region}:approved", COUNTRY_MEMORY
    )


class _Listing:
    """MFA_FRAUD_ALLOW or MFA_FRAUD_BLOCK: how specifically a number is in it."""

    def __init__(self, entries: tuple[str, ...]) -> None:
        self._prefixes = tuple(entry for entry in entries if entry.startswith("+"))
        # A region is more specific than its bare calling code, less than any longer prefix.
        self._regions = {
            entry: len(str(phonenumbers.country_code_for_region(entry))) + 0.5
            for entry in entries
            if not entry.startswith("+")
        }

    def specificity(self, e164: str, region: str) -> float | None:
        """How specific the most specific entry naming the number is; None if none does."""
        found = self._regions.get(region)
        for prefix in self._prefixes:
            if e164.startswith(prefix) and (found is None or len(prefix) - 1 > found):
                found = len(prefix) - 1
        return found


class FraudGuard:
    """Decides what the pumping guard asks of each send and approval, and lists and ends holds."""

    def __init__(self, store: HoldStore, settings: FraudSettings) -> None:
        self._store = store
        self.settings = settings
        self._allow = _Listing(settings.allow)
        self._block = _Listing(settings.block)
        self._per_approval = 1 / settings.min_conversion if settings.min_conversion > 0 else _UNBOUNDED

    def check(self, destination: Destination) -> GuardCheck | None:
        """What a send to ``destination`` is checked against; None when the guard leaves it alone.

        DestinationRefused (reason `fraud_blocked`) when MFA_FRAUD_BLOCK names it.
        """
        return self._check(destination.e164, destination.region, destination.prefix)

    def check_number(self, number: str) -> GuardCheck | None:
        """`check` for a number that passed the destination policy before (a fallback call's)."""
        region, prefix = number_range(number)
        return self._check(number, region, prefix)

    def _check(self, e164: str, region: str, prefix: str) -> GuardCheck | None:
        allowed = self._listed(e164, region)
        if not self.settings.guard or allowed:
            return None
        sends, approvals = prefix_windows(prefix)
        country_sends, country_approvals = country_windows(region)
        return GuardCheck(
            prefix=prefix,
            country=region,
            sends=sends,
            approvals=approvals,
            min_sends=self.settings.min_sends,
            min_conversion=self.settings.min_conversion,
            hold_seconds=HOLD_SECONDS,
            budget=CountryBudget(
                sends=country_sends,
                approvals=country_approvals,
                base=self.settings.new_country_sends,
                per_approval=self._per_approval,
                established_at=self.settings.min_sends,
            ),
        )

    def approvals(self, number: str, region: str | None = None) -> tuple[Window, ...]:
        """The windows an approved verification of a code sent to ``number`` (in ``region``,
        when known) is counted in."""
        if not self.settings.guard:
            return ()
        region, prefix = number_range(number, region)
        if self._listed(number, region, refuse=False):
            return ()
        return (prefix_windows(prefix)[1], country_windows(region)[1])

    def _listed(self, e164: str, region: str, *, refuse: bool = True) -> bool:
        """True when MFA_FRAUD_ALLOW names the number; DestinationRefused when MFA_FRAUD_BLOCK does."""
        allowed = self._allow.specificity(e164, region)
        blocked = self._block.specificity(e164, region)
        if blocked is not None and (allowed is None or blocked >= allowed):
            if refuse:
                raise DestinationRefused("Codes are not sent to numbers in that range.", BLOCKED)
            return False
        return allowed is not None

    async def holds(self, now: float) -> list[Hold]:
        """The prefixes held at ``now``, the newest hold first."""
        return await self._store.holds(now)

    async def release(self, prefix: str, now: float) -> Hold | None:
        """End ``prefix``'s hold now and judge it afresh; the hold as it was, or None if it was not held."""
        released = await self._store.release_hold(prefix, prefix_windows(prefix), now)
        if released is not None:
            log.info("SMS pumping guard: the hold on prefix %s was ended early", prefix)
        return released


def refusal(refused: GuardRefused) -> FraudRefused:
    """The error a send the guard refused raises: safe to show anyone, no rule's numbers in it."""
    retry_after = math.ceil(refused.retry_after)
    if refused.reason == HELD:
        return PrefixHeld(
            "Codes to numbers in this range are paused for a while: too few of the codes sent there "
            "recently were entered.",
            retry_after,
            hold=refused.hold,
            raised=refused.raised,
        )
    return NewCountryBudget(
        "Codes to numbers in this country are limited while it is new to this service.", retry_after
    )


def hold_document(hold: Hold) -> dict[str, Any]:
    """A hold as the HTTP API and the dashboard show it (times in ISO 8601 UTC)."""
    return {
        "prefix": hold.prefix,
        "country": hold.country,
        "since": _iso(hold.since),
        "until": _iso(hold.until),
        "sends": hold.sends,
        "approved": hold.approved,
        "reason": hold.reason,
    }


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

"""Why the engine refused or could not do something: a small hierarchy, not status strings.

Each error carries a stable ``code`` (for the HTTP API) and a ``message`` that
is safe to show anyone: no number, code or secret ever goes into one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.stores.guard import Hold


class VerificationError(Exception):
    """Base of every refusal or failure the engine reports."""

    code = "verification_error"
    http_status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(VerificationError):
    """The request itself is malformed (bad field, wrong type, unreadable code)."""

    code = "invalid_request"
    http_status = 422


class DestinationRefused(VerificationError):
    """The number may not receive a code: invalid, premium-rate, shared-cost, wrong region."""

    code = "destination_refused"
    http_status = 422

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class RateLimited(VerificationError):
    """A limit was reached; ``retry_after`` says in how many seconds to try again."""

    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, limit: str, retry_after: int) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after = max(1, retry_after)


class FraudRefused(VerificationError):
    """The SMS pumping guard refused the send (engine/fraud.py); ``retry_after``: when it may go through.

    ``reason`` is the event's and the metrics' (the subclass's ``code``); ``hold``
    the prefix's hold, and ``raised`` True for the one send that raised it.
    """

    http_status = 429

    def __init__(
        self, message: str, retry_after: int, *, hold: Hold | None = None, raised: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)
        self.hold = hold
        self.raised = raised

    @property
    def reason(self) -> str:
        return self.code


class PrefixHeld(FraudRefused):
    """The number's prefix is held: too few of the codes sent there lately were entered."""

    code = "fraud_suspected"


class NewCountryBudget(FraudRefused):
    """The number's country is new here, and its sends for this hour are used up."""

    code = "new_country_budget"


class CallLocked(VerificationError):
    """This call has used up its failed attempts; no new code helps."""

    code = "call_locked"
    http_status = 429


class VerificationNotFound(VerificationError):
    """No verification with that id (or not one this caller may see)."""

    code = "not_found"
    http_status = 404


class ProviderUnavailable(VerificationError):
    """The provider could not be reached or failed (timeout, reset, 5xx, 429, circuit open).

    Nothing is known to have been delivered; trying again later is safe.
    """

    code = "provider_unavailable"
    http_status = 503

    def __init__(self, message: str, kind: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


class ProviderRejected(VerificationError):
    """The provider refused the request (bad credentials, a field it will not take).

    Trying again will not help; it is a configuration or input problem.
    """

    code = "provider_rejected"
    http_status = 502

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class StoreUnavailable(VerificationError):
    """The store (SQLite or Redis) cannot be reached right now."""

    code = "store_unavailable"
    http_status = 503


class InvalidCursor(VerificationError):
    """A history page's cursor that this server did not hand out (or one cut short)."""

    code = "invalid_cursor"
    http_status = 400

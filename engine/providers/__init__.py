"""Providers: who makes, delivers and checks a code (see base.py).

``MFA_PROVIDER`` names one of ``PROVIDERS``; the runtime builds it once, from
the ``ProviderParts`` it has. A new provider is its module here, a ``Provider``
subclass (base.py) whose constructor takes the ``ProviderParts``, and one line
in ``PROVIDERS`` (``"name": NewProvider``). The two below keep narrower
constructors, which tests call directly, and so have a builder each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from config.settings import Settings
from engine.delivery import Delivery
from engine.delivery.outbox import OutboxDelivery
from engine.delivery.signalwire_messaging import SignalWireMessaging
from engine.keys import CodeKeys
from engine.providers.base import Provider
from engine.providers.local import LocalProvider
from engine.providers.signalwire import SignalWireMfaProvider
from engine.signalwire_rest import SignalWireRest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProviderParts:
    """What the runtime hands a provider's builder.

    ``rest`` is the SignalWire REST client, present when the credentials are
    set (settings refuse a provider or delivery that needs it without them);
    ``keys`` are the server keys, for a provider that makes its own codes.
    """

    settings: Settings
    rest: SignalWireRest | None
    keys: CodeKeys


def _signalwire(parts: ProviderParts) -> Provider:
    assert parts.rest is not None
    log.info("codes are sent by SignalWire's MFA API at %s", parts.settings.signalwire_space)
    return SignalWireMfaProvider(parts.rest)


def _local(parts: ProviderParts) -> Provider:
    settings = parts.settings
    delivery: Delivery
    if settings.mfa_delivery == "signalwire":
        assert parts.rest is not None and settings.signalwire_project_id and settings.mfa_from_number
        delivery = SignalWireMessaging(parts.rest, settings.signalwire_project_id, settings.mfa_from_number)
        log.info("codes are made here and sent through SignalWire messaging")
    else:
        delivery = OutboxDelivery(settings.mfa_outbox)
        log.warning(
            "codes are made here and written to %s (development delivery, no SMS is sent)",
            settings.mfa_outbox.resolve(),
        )
    return LocalProvider(parts.keys, delivery)


# MFA_PROVIDER -> how to build that provider.
PROVIDERS: dict[str, Callable[[ProviderParts], Provider]] = {
    "signalwire": _signalwire,
    "local": _local,
}

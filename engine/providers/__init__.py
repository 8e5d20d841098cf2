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
from urllib.parse import urlsplit

from config.settings import Settings
from engine.delivery import Delivery
from engine.delivery.outbox import OutboxDelivery
from engine.delivery.signalwire_messaging import STATUS_CALLBACK_PATH, SignalWireMessaging
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
        delivery = SignalWireMessaging(
            parts.rest,
            settings.signalwire_project_id,
            settings.mfa_from_number,
            status_callback=status_callback_url(settings),
            language=settings.mfa_language,
        )
        log.info("codes are made here and sent through SignalWire messaging")
    else:
        delivery = OutboxDelivery(settings.mfa_outbox)
        log.warning(
            "codes are made here and written to %s (development delivery, no SMS is sent)",
            settings.mfa_outbox.resolve(),
        )
    return LocalProvider(parts.keys, delivery)


def reports_delivery(settings: Settings) -> bool:
    """Whether texts ask SignalWire for delivery reports: the local engine delivering through
    SignalWire messaging, with the Signing Key and the public URL set (`status_callback_url`)."""
    return (
        settings.mfa_provider == "local"
        and settings.mfa_delivery == "signalwire"
        and settings.signalwire_signing_key is not None
        and settings.swml_proxy_url_base is not None
    )


def status_callback_url(settings: Settings) -> str | None:
    """The public URL SignalWire reports each text's delivery to, or None (said once, with why).

    Reports are asked for only when they can be trusted and can arrive: with the Signing
    Key (a report is accepted only when signed with it) and the agent's public URL.
    Without them no text is followed by a call either, since no report would ever come.
    """
    missing = [
        name
        for name, value in (
            ("SIGNALWIRE_SIGNING_KEY", settings.signalwire_signing_key),
            ("SWML_PROXY_URL_BASE", settings.swml_proxy_url_base),
        )
        if value is None
    ]
    if missing:
        log.warning(
            "delivery reports are off: %s not set (SignalWire needs the public URL to report to, and "
            "a report counts only when signed with the Signing Key); texts are not followed by a call",
            " and ".join(missing) + (" is" if len(missing) == 1 else " are"),
        )
        return None
    url = f"{settings.swml_proxy_url_base}{STATUS_CALLBACK_PATH}"
    parts = urlsplit(url)
    shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()  # never a password
    log.info("SignalWire reports each text's delivery to %s", shown)
    return url


# MFA_PROVIDER -> how to build that provider.
PROVIDERS: dict[str, Callable[[ProviderParts], Provider]] = {
    "signalwire": _signalwire,
    "local": _local,
}

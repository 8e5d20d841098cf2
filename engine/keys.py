"""The server keys an instance uses, kept in agreement with every instance on the store.

Three keys, each 32 bytes:

- ``swaig-secret`` signs the per-call function tokens in the SWML; every
  instance must accept the others' tokens, since the platform posts a call's
  requests to whichever instance its load balancer picks;
- ``code-hmac`` makes the local engine's code digests: a code sent by one
  instance is checked by another;
- ``limit-keys`` hashes destination numbers into the limits' store keys.

A key is configured (``SIGNALWIRE_SWAIG_SECRET``, ``MFA_CODE_KEY``; the limits
key is then derived from the code key), which always wins and is never stored;
or it is created once and kept in the store, where every instance finds it.

A store can lose its data (Redis restarted without persistence, a key evicted
or deleted). Instances that had read their keys once would go on using them,
while one started afterwards made new ones: the fleet split until every old
instance restarted. So each instance re-reads its keys every SYNC_SECONDS in
one round trip that first puts its own back where none is left, then adopts
what the store holds (the first writer wins). The fleet agrees again within
about SYNC_SECONDS, without restarts.

An instance that adopts a key it did not hold keeps accepting the one it had
for GRACE_SECONDS: a call in progress keeps the function tokens of the SWML it
fetched at its start, and a caller may read back a code made a moment before.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from typing import Protocol

from config.settings import Settings
from engine.errors import StoreUnavailable
from engine.stores.base import KeyStore

log = logging.getLogger(__name__)

SWAIG_KEY = "swaig-secret"
CODE_KEY = "code-hmac"
LIMITS_KEY = "limit-keys"
KEY_BYTES = 32
# How often an instance re-reads its keys: how long the fleet may disagree after a data loss.
SYNC_SECONDS = 1.0
# How long a key replaced by the store's stays accepted. Longer than a verification call
# usually lasts and than a code usually lives (MFA_VALID_FOR: 600 s by default); short
# enough that a key the fleet has moved on from does not stay good for long.
GRACE_SECONDS = 900.0


class KeysNotLoaded(RuntimeError):
    """A stored key was asked for before the first `KeyRing.sync` (the runtime has not started)."""


class CodeKeys(Protocol):
    """What code digests need: the key to make new ones, and every key an old one may be under."""

    @property
    def code_key(self) -> bytes: ...

    def code_keys(self) -> tuple[bytes, ...]: ...


class NumberKey(Protocol):
    """What the limits need: the key that hashes a number into a store key."""

    @property
    def limits_key(self) -> bytes: ...


class KeyRing:
    """The keys this instance uses now: configured ones, and stored ones as last read.

    Consumers read a property on every use, so an adopted key takes effect at
    once; `on_change` tells those that copy a key elsewhere (the SDK's token
    signer).
    """

    def __init__(
        self,
        *,
        swaig_secret: str | None = None,
        code_key: bytes | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._configured_swaig = swaig_secret
        self._configured_code = code_key
        self._clock = clock
        self._held: dict[str, bytes] = {}
        self._previous: dict[str, tuple[bytes, float]] = {}  # name -> (replaced key, accepted until)
        self._listeners: list[Callable[[KeyRing], None]] = []
        # The keys kept in the store: those not configured. None, and there is nothing to sync.
        self.stored_names = tuple(
            name
            for name, configured in (
                (SWAIG_KEY, swaig_secret),
                (CODE_KEY, code_key),
                (LIMITS_KEY, code_key),  # derived from a configured code key
            )
            if configured is None
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        swaig = settings.signalwire_swaig_secret
        code = settings.mfa_code_key
        return cls(
            swaig_secret=None if swaig is None else swaig.get_secret_value(),
            code_key=None if code is None else code.get_secret_value().encode(),
        )

    # -- the keys -----------------------------------------------------------
    @property
    def loaded(self) -> bool:
        """Whether every key is known: configured, or read from the store at least once."""
        return all(name in self._held for name in self.stored_names)

    @property
    def swaig_secret(self) -> str:
        """The secret that signs function tokens, as the SDK takes it (text)."""
        if self._configured_swaig is not None:
            return self._configured_swaig
        return self._stored(SWAIG_KEY).hex()

    def previous_swaig_secrets(self) -> tuple[str, ...]:
        """Token secrets replaced by the store's less than GRACE_SECONDS ago: still accepted."""
        return tuple(key.hex() for key in self._previous_keys(SWAIG_KEY))

    @property
    def code_key(self) -> bytes:
        """The key new code digests are made with."""
        if self._configured_code is not None:
            return self._configured_code
        return self._stored(CODE_KEY)

    def code_keys(self) -> tuple[bytes, ...]:
        """Every key a digest may have been made with: the current one first."""
        return (self.code_key, *self._previous_keys(CODE_KEY))

    @property
    def limits_key(self) -> bytes:
        """The key that hashes destination numbers in the limits' store keys."""
        if self._configured_code is not None:
            # Derived, so a configured code key is all a deployment has to keep.
            return hmac.new(self._configured_code, LIMITS_KEY.encode(), hashlib.sha256).digest()
        return self._stored(LIMITS_KEY)

    def on_change(self, listener: Callable[[KeyRing], None]) -> None:
        """Call ``listener`` now (if the keys are loaded) and after every change of them."""
        self._listeners.append(listener)
        if self.loaded:
            listener(self)

    def _stored(self, name: str) -> bytes:
        try:
            return self._held[name]
        except KeyError:
            raise KeysNotLoaded(f"the {name} key has not been read from the store yet") from None

    def _previous_keys(self, name: str) -> tuple[bytes, ...]:
        previous = self._previous.get(name)
        if previous is None:
            return ()
        key, until = previous
        if self._clock() >= until:
            self._previous.pop(name, None)
            return ()
        return (key,)

    # -- agreeing with the store ---------------------------------------------
    async def sync(self, store: KeyStore) -> None:
        """Put this instance's keys back where the store holds none, then use what it holds.

        One round trip. Raises StoreUnavailable when the store cannot be reached;
        the keys held so far stay in use.
        """
        if not self.stored_names:
            return
        proposed = {
            name: self._held.get(name) or secrets.token_bytes(KEY_BYTES) for name in self.stored_names
        }
        held = await store.server_keys(proposed)
        adopted = [
            name for name in self.stored_names if name in self._held and held[name] != self._held[name]
        ]
        until = self._clock() + GRACE_SECONDS
        for name in adopted:
            self._previous[name] = (self._held[name], until)
        first = not self.loaded
        self._held = {name: held[name] for name in self.stored_names}
        if adopted:
            # Another instance put its keys into the emptied store first.
            log.warning(
                "the store holds other %s keys than this instance did (it lost them, and another "
                "instance put its own back first); using the store's from now on",
                ", ".join(adopted),
            )
        if first or adopted:
            for listener in self._listeners:
                listener(self)

    async def keep_in_sync(self, store: KeyStore, stop: asyncio.Event) -> None:
        """`sync` every SYNC_SECONDS until ``stop`` is set (a background task of the runtime)."""
        reachable = True
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=SYNC_SECONDS)
            if stop.is_set():
                return
            try:
                await self.sync(store)
            except StoreUnavailable:
                # /ready already says the store is down; the keys held stay in use meanwhile.
                if reachable:
                    log.info("cannot read the server keys while the store is unavailable; retrying")
                reachable = False
                continue
            except Exception:
                log.exception("reading the server keys failed; retrying")
                continue
            reachable = True

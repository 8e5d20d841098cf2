"""Builds the engine and its parts from `Settings`, and starts and stops them.

The HTTP/1.1 client for SignalWire's REST API (pooled, keep-alive), an aiohttp
session for the webhooks, one store, one provider, one publisher, the server
keys, and the expiry timer: created on start-up, closed on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiohttp

from config.settings import Settings
from engine.breaker import CircuitBreaker
from engine.events import attach_event_sinks
from engine.events.live import LiveHub
from engine.events.metrics import Metrics
from engine.events.publisher import EventPublisher
from engine.follow_up import FALLBACK_AFTER_SECONDS, DeliveryFollowUp
from engine.fraud import FraudGuard, FraudSettings
from engine.history import History
from engine.http1 import HttpClient
from engine.keys import KeyRing
from engine.limits import Limits, LimitSettings
from engine.lookup import LineTypes
from engine.providers import PROVIDERS, ProviderParts
from engine.providers.base import Provider
from engine.repeats import Repeats
from engine.signalwire_rest import SignalWireRest
from engine.stores import Store, open_store
from engine.stores.history import DAY
from engine.verifications import CodeShape, VerificationEngine
from engine.workflow import PhoneVerificationWorkflow
from languages import LANGUAGES

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 3.0


class NotStarted(RuntimeError):
    """The runtime was used before `start`."""


class Runtime:
    """The running engine: what the functions and the HTTP API talk to."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.publisher = EventPublisher()
        self.metrics = Metrics()
        self.live = LiveHub(self.metrics)
        # Built here, not on start, so the agent can follow it before the first request.
        self.keys = KeyRing.from_settings(settings)
        self._engine: VerificationEngine | None = None
        self._repeats: Repeats | None = None
        self._workflow: PhoneVerificationWorkflow | None = None
        self._fraud: FraudGuard | None = None
        self._history: History | None = None
        self._follow_up: DeliveryFollowUp | None = None
        self._store: Store | None = None
        self._http: aiohttp.ClientSession | None = None
        self._upstream: HttpClient | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def engine(self) -> VerificationEngine:
        if self._engine is None:
            raise NotStarted("the runtime has not started")
        return self._engine

    @property
    def repeats(self) -> Repeats:
        if self._repeats is None:
            raise NotStarted("the runtime has not started")
        return self._repeats

    @property
    def workflow(self) -> PhoneVerificationWorkflow:
        if self._workflow is None:
            raise NotStarted("the runtime has not started")
        return self._workflow

    @property
    def fraud(self) -> FraudGuard:
        """The SMS pumping guard: its holds, for the HTTP API and the dashboard."""
        if self._fraud is None:
            raise NotStarted("the runtime has not started")
        return self._fraud

    @property
    def history(self) -> History:
        if self._history is None:
            raise NotStarted("the runtime has not started")
        return self._history

    @property
    def follow_up(self) -> DeliveryFollowUp | None:
        """Delivery reports and the fallback call; None when no text is reported on
        (the provider or delivery gets no status callbacks)."""
        if self._engine is None:
            raise NotStarted("the runtime has not started")
        return self._follow_up

    @property
    def store(self) -> Store:
        if self._store is None:
            raise NotStarted("the runtime has not started")
        return self._store

    @property
    def http(self) -> aiohttp.ClientSession:
        """The webhooks' session (each delivery brings its own timeout)."""
        if self._http is None:
            raise NotStarted("the runtime has not started")
        return self._http

    @property
    def started(self) -> bool:
        return self._engine is not None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Runtime]:
        """Started for the duration of a block: for `swaig-test`, which runs one function
        without the server (and so without its start-up and shutdown)."""
        await self.start()
        try:
            yield self
        finally:
            await self.close()

    async def start(self) -> None:
        settings = self.settings
        self._http = aiohttp.ClientSession(raise_for_status=False)
        self._upstream = HttpClient()
        retention = settings.mfa_history_days * DAY
        store = open_store(settings.mfa_store, history_retention=retention)
        await store.open()
        self._store = store
        self._history = History(store, retention, clock=self.clock)
        # The start-up read: a store that cannot be reached stops the start, as before.
        await self.keys.sync(store)
        rest = self._signalwire_rest()
        provider = self._provider(rest)
        limits = Limits(
            store,
            LimitSettings(
                sends_per_number_per_hour=settings.mfa_sends_per_number_per_hour,
                sends_per_call=settings.mfa_sends_per_call,
                max_failures_per_call=settings.mfa_max_failures_per_call,
                sends_per_agent_per_minute=settings.mfa_sends_per_agent_per_minute,
                sends_per_minute=settings.mfa_sends_per_minute,
                max_failures_per_number_per_day=settings.mfa_max_failures_per_number_per_day,
            ),
            self.keys,
        )
        self._repeats = Repeats(store)
        self._fraud = FraudGuard(
            store,
            FraudSettings(
                guard=settings.mfa_fraud_guard,
                min_sends=settings.mfa_fraud_min_sends,
                min_conversion=settings.mfa_fraud_min_conversion,
                allow=tuple(settings.mfa_fraud_allow),
                block=tuple(settings.mfa_fraud_block),
                new_country_sends=settings.mfa_fraud_new_country_sends,
            ),
        )
        shape = CodeShape(
            token_length=settings.mfa_token_length,
            valid_for=settings.mfa_valid_for,
            max_attempts=settings.mfa_max_attempts,
            allow_alphas=settings.mfa_allow_alphas,
            message=settings.mfa_message or LANGUAGES[settings.mfa_language].sms_message,
        )
        self._engine = VerificationEngine(
            store=store,
            provider=provider,
            publisher=self.publisher,
            limits=limits,
            shape=shape,
            allowed_regions=settings.mfa_allowed_countries,
            from_number=settings.mfa_from_number,
            breaker=CircuitBreaker(clock=self.clock),
            line_types=LineTypes(rest, store, limits.number_digest)
            if rest and settings.mfa_line_type_check
            else None,
            fraud=self._fraud,
            fallback_after=FALLBACK_AFTER_SECONDS
            if provider.reports_delivery and settings.mfa_fallback_to_call
            else None,
            clock=self.clock,
        )
        # The walkthrough's workflow: the same message and alphabet, its own length, window and tries.
        self._workflow = PhoneVerificationWorkflow(
            self._engine,
            store,
            dataclasses.replace(
                shape,
                token_length=settings.mfa_workflow_token_length,
                valid_for=settings.mfa_workflow_window,
                max_attempts=settings.mfa_workflow_tries,
            ),
        )
        workflow_shape = self._workflow.shape
        self._follow_up = (
            DeliveryFollowUp(
                self._engine,
                store,
                shapes={"call": shape, "api": shape, "workflow": workflow_shape},
                call_intro=LANGUAGES[settings.mfa_language].fallback_call,
            )
            if provider.reports_delivery
            else None
        )
        self._stop.clear()
        self.spawn(self._engine.run_expiry_timer(self._stop))
        if self._follow_up is not None:
            self.spawn(self._follow_up.run(self._stop))
        if self.keys.stored_names:
            self.spawn(self.keys.keep_in_sync(store, self._stop))
        attach_event_sinks(self)

    def spawn(self, loop: Coroutine[Any, Any, None]) -> None:
        """Run a background loop until `close` (webhook delivery, live fan-out, the timer)."""
        self._tasks.append(asyncio.ensure_future(loop))

    @property
    def stopping(self) -> asyncio.Event:
        return self._stop

    def _signalwire_rest(self) -> SignalWireRest | None:
        settings = self.settings
        if not settings.has_signalwire_credentials:
            return None
        assert settings.signalwire_project_id and settings.signalwire_api_token
        assert self._upstream is not None
        return SignalWireRest(
            self._upstream,
            settings.signalwire_base_url,
            settings.signalwire_project_id,
            settings.signalwire_api_token.get_secret_value(),
            settings.mfa_upstream_timeout,
            observer=self.metrics.observe_upstream,
        )

    def _provider(self, rest: SignalWireRest | None) -> Provider:
        name = self.settings.mfa_provider
        assert name is not None  # settings choose one when they load
        return PROVIDERS[name](ProviderParts(self.settings, rest, self.keys))

    async def close(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Shutdown must finish even if a loop is stuck in a call that ignores cancellation.
            _, stuck = await asyncio.wait(self._tasks, timeout=CLOSE_TIMEOUT)
            for task in stuck:
                log.warning("background task %s did not stop within %ss", task.get_coro(), CLOSE_TIMEOUT)
        self._tasks.clear()
        if self._store is not None:
            try:
                await asyncio.wait_for(self._store.close(), CLOSE_TIMEOUT)
            except TimeoutError:
                log.warning("the store did not close within %ss", CLOSE_TIMEOUT)
        if self._http is not None:
            await self._http.close()
        if self._upstream is not None:
            await self._upstream.close()
        self._engine = None
        self._repeats = None
        self._workflow = None
        self._fraud = None
        self._history = None
        self._follow_up = None
        self._store = None
        self._http = None
        self._upstream = None

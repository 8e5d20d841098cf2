"""The SWAIG functions: thin handlers between the platform and the engine.

Each request is parsed and validated here, answered once per distinct
decision of the model (see `engine.repeats`), and always answered with
something the model can say.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from engine.errors import StoreUnavailable
from engine.repeats import StillRunning, request_key
from engine.runtime import Runtime
from functions.includes import for_host
from functions.platform import (
    BadRequest,
    Reply,
    SwaigRequest,
    WayOn,
    parse_arguments,
    parse_request,
)
from functions.replies import not_answering
from functions.send_mfa import SendMfaArgs, send_mfa
from functions.transfer import transfer_to_person
from functions.verify_mfa import VerifyMfaArgs, verify_mfa
from server.context import request_agent_id, request_from_include

log = logging.getLogger(__name__)

Run = Callable[[dict[str, Any], SwaigRequest], Awaitable[tuple[Reply, bool]]]

_UNKNOWN = Reply(
    "The system could not finish that, so the outcome is unknown.",
    "Do not say it worked. Apologize and offer to try again in a moment.",
)
_BUSY = Reply(
    "The previous request is still being processed.",
    "Tell the caller it is taking a moment, then try the same function again.",
)
STORE_DOWN = not_answering("Nothing was done", "try again")


class MfaFunctions:
    """`send_mfa` and `verify_mfa` as SWAIG handlers (``async``, so no thread pool)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        settings = runtime.settings
        self.way_on = WayOn(person=settings.mfa_transfer_to, on_verified=settings.mfa_on_verified)

    async def send_mfa(self, args: dict[str, Any], raw_data: dict[str, Any]) -> dict[str, Any]:
        async def run(arguments: dict[str, Any], request: SwaigRequest) -> tuple[Reply, bool]:
            parsed = parse_arguments(
                SendMfaArgs, arguments, "Call send_mfa again with channel 'sms' or 'call'."
            )
            return await send_mfa(
                self.runtime.engine,
                parsed,
                request,
                agent_id=request_agent_id.get() or self.runtime.settings.agent_id,
                any_destination=self.runtime.settings.mfa_destinations == "any",
                follow_up=self.runtime.follow_up,
            )

        return await self._serve("send_mfa", run, args, raw_data)

    async def verify_mfa(self, args: dict[str, Any], raw_data: dict[str, Any]) -> dict[str, Any]:
        async def run(arguments: dict[str, Any], request: SwaigRequest) -> tuple[Reply, bool]:
            parsed = parse_arguments(
                VerifyMfaArgs, arguments, "Ask the caller for the code and call verify_mfa with it as token."
            )
            return await verify_mfa(
                self.runtime.engine,
                parsed,
                request,
                language=self.runtime.settings.mfa_language,
                follow_up=self.runtime.follow_up,
            )

        return await self._serve("verify_mfa", run, args, raw_data)

    async def transfer_to_person(self, args: dict[str, Any], raw_data: dict[str, Any]) -> dict[str, Any]:
        """Offered only with MFA_TRANSFER_TO: connect the call to the person there."""

        async def run(arguments: dict[str, Any], request: SwaigRequest) -> tuple[Reply, bool]:
            person = self.way_on.person
            assert person is not None  # the agent defines this function only with one
            agent_id = request_agent_id.get() or self.runtime.settings.agent_id
            return await transfer_to_person(self.runtime.engine, request, person, agent_id=agent_id)

        return await self._serve("transfer_to_person", run, args, raw_data)

    async def _serve(
        self, name: str, run: Run, args: dict[str, Any], raw_data: dict[str, Any]
    ) -> dict[str, Any]:
        try:
            request = parse_request(raw_data, args)
        except BadRequest as bad:
            return bad.reply.to_result().to_dict()
        if not self.runtime.started:
            async with self.runtime.running():
                answer = await self._answer(name, run, args, request)
        else:
            answer = await self._answer(name, run, args, request)
        # A host agent that includes these functions has its own steps, not ours.
        return for_host(answer) if request_from_include.get() else answer

    async def _answer(
        self, name: str, run: Run, args: dict[str, Any], request: SwaigRequest
    ) -> dict[str, Any]:

        async def answer() -> tuple[dict[str, Any], bool]:
            try:
                reply, keep = await run(args, request)
            except BadRequest as bad:
                reply, keep = bad.reply, False
            except StoreUnavailable:
                reply, keep = STORE_DOWN, False
            except Exception:
                log.exception("%s failed on call %s", name, request.call_id)
                reply, keep = _UNKNOWN, False
            # A host agent that includes these functions has its own ways on.
            way_on = WayOn() if request_from_include.get() else self.way_on
            return reply.to_result(way_on).to_dict(), keep

        key = request_key(request.call_id, name, args, request.meta_data)
        try:
            return await self.runtime.repeats.once(key, answer)
        except StillRunning:
            return _BUSY.to_result().to_dict()
        except StoreUnavailable:
            return STORE_DOWN.to_result().to_dict()

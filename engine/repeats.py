"""Repeated requests: the platform may send one decision of the model up to four times.

It re-sends after a timeout, a failure or a 5xx, a second apart, so a send
could text the caller twice and a verify could spend the code and then call
it "already used". Each request gets a key (call, function, arguments and
meta_data); the first request owns the key in the store, a repeat that
arrives while it runs waits for its answer, and a repeat after it gets the
same answer. Only answers worth repeating are kept: a failed send is
forgotten, so a new try goes through.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from engine.stores.base import ClaimState, ClaimStore

REPEAT_WINDOW = 30.0  # the same request within 30 s is the platform repeating it
RUNNING_TTL = 15.0  # longer than any provider call; a crashed owner frees the key after this
WAIT_DEADLINE = 9.0  # the platform must hear back within 10 s


def request_key(call_id: str, function: str, arguments: Any, meta_data: Any) -> str:
    """A digest of what makes two requests the same decision."""
    canonical = json.dumps([call_id, function, arguments, meta_data], sort_keys=True, default=str)
    return "repeat:" + hashlib.sha256(canonical.encode()).hexdigest()


class StillRunning(Exception):
    """A repeat waited for the first request past the deadline."""


class Repeats:
    """Runs each distinct request once and answers its repeats from the first."""

    def __init__(self, store: ClaimStore) -> None:
        self._store = store
        # Same-instance repeats are woken directly instead of polling the store.
        self._local: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def once(
        self,
        key: str,
        run: Callable[[], Awaitable[tuple[dict[str, Any], bool]]],
    ) -> dict[str, Any]:
        """The answer of ``run`` for the first request with ``key``, and of its repeats.

        ``run`` returns the answer and whether to keep it for repeats.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_DEADLINE
        delay = 0.02
        while True:
            claim = await self._store.claim(key, RUNNING_TTL)
            if claim.state is ClaimState.DONE and claim.result is not None:
                return claim.result
            if claim.state is ClaimState.NEW:
                return await self._run_owned(key, run)
            local = self._local.get(key)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise StillRunning()
            if local is not None:
                try:
                    return await asyncio.wait_for(asyncio.shield(local), timeout=remaining)
                except _Forgotten:
                    continue  # the first one failed and kept nothing: try for ourselves
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.25)

    async def _run_owned(
        self, key: str, run: Callable[[], Awaitable[tuple[dict[str, Any], bool]]]
    ) -> dict[str, Any]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._local[key] = future
        try:
            answer, keep = await run()
        except BaseException:
            await self._forget(key, future)
            raise
        try:
            if keep:
                await self._store.complete(key, answer, REPEAT_WINDOW)
                future.set_result(answer)
            else:
                await self._forget(key, future)
        finally:
            self._local.pop(key, None)
        return answer

    async def _forget(self, key: str, future: asyncio.Future[dict[str, Any]]) -> None:
        self._local.pop(key, None)
        if not future.done():
            future.set_exception(_Forgotten())
            future.exception()  # mark retrieved: nobody may be waiting
        # If the store is down the key frees itself after RUNNING_TTL; a repeat then runs anew.
        with contextlib.suppress(Exception):
            await self._store.release(key)


class _Forgotten(Exception):
    """The first request kept no answer."""

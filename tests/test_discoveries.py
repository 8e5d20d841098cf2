"""A discovery that named no call is bound to the first call that uses it, on both stores."""

from __future__ import annotations

import asyncio

from engine.discoveries import bind_to_call
from engine.stores import Store


async def test_a_discovery_binds_to_the_first_call_that_asks(store: Store) -> None:
    assert await bind_to_call(store, "d1", "call-a", ttl=60)
    assert await bind_to_call(store, "d1", "call-a", ttl=60)
    assert not await bind_to_call(store, "d1", "call-b", ttl=60)
    assert await bind_to_call(store, "d2", "call-b", ttl=60)


async def test_racing_calls_bind_a_discovery_to_exactly_one(store: Store) -> None:
    calls = [f"call-{n}" for n in range(8)]
    bound = await asyncio.gather(*(bind_to_call(store, "d1", call, ttl=60) for call in calls))
    assert sum(bound) == 1
    winner = calls[bound.index(True)]
    assert await bind_to_call(store, "d1", winner, ttl=60)

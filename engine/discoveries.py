"""A discovery that named no call serves one call: the first that uses its tokens.

Another agent that includes our functions (`SWAIG.includes`) gets their
definitions from a discovery request when its call starts. When that request
names the call, each function's token is bound to it, as the tokens in our own
SWML are. When it names none, the tokens can only name the discovery; this
module then binds the discovery to the first call whose request carries one of
them, and refuses every other call. So a discovery's tokens buy the limits of
one call, never fresh ones for each call id a request makes up.

The binding is the store's first-writer-wins claim, so two instances, or two
requests racing on one, agree on the call.
"""

from __future__ import annotations

import asyncio

from engine.stores.base import ClaimState, ClaimStore

# Long enough to write the binding after taking the claim; a crashed instance's
# unfinished claim frees itself after this.
BINDING_SECONDS = 5.0
# How long a request waits for another that is binding the same discovery right now.
WAIT_SECONDS = 2.0


def _key(discovery_id: str) -> str:
    return f"discovery:{discovery_id}"


async def bind_to_call(store: ClaimStore, discovery_id: str, call_id: str, *, ttl: float) -> bool:
    """Whether ``call_id`` is the call this discovery serves: the first to ask, kept ``ttl`` seconds.

    ``ttl`` is how long the discovery's tokens are good for. Raises StoreUnavailable
    when the store cannot be reached.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    delay = 0.01
    while True:
        claim = await store.claim(_key(discovery_id), BINDING_SECONDS)
        if claim.state is ClaimState.NEW:
            await store.complete(_key(discovery_id), {"call_id": call_id}, ttl)
            return True
        if claim.state is ClaimState.DONE and claim.result is not None:
            return bool(claim.result.get("call_id") == call_id)
        # Another request took the claim a moment ago and is writing its call.
        if loop.time() + delay > deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.2)

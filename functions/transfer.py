"""`transfer_to_person`: connect the caller to a person (MFA_TRANSFER_TO).

Offered only when the deployment names a person; the model calls it when
verification is locked, or whenever the caller asks for a person. The call is
connected after the model has said so, and `mfa.transferred` tells everyone
watching.
"""

from __future__ import annotations

from engine.verifications import VerificationEngine
from functions.platform import Reply, SwaigRequest


async def transfer_to_person(
    engine: VerificationEngine, request: SwaigRequest, person: str, *, agent_id: str
) -> tuple[Reply, bool]:
    """Connect the call to ``person``; the reply, and whether a repeat should get it too."""
    event = await engine.record_transfer(agent_id=agent_id, call_id=request.call_id)
    reply = Reply(
        "The call is being connected to a person now.",
        "Tell the caller, in one short sentence, that you are connecting them to a person.",
    )
    return reply.with_action("connect", person).with_event(event), True

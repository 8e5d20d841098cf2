"""Our functions in another agent's calls: `SWAIG.includes`.

A host agent (SWML, a dashboard AI agent, or the SDK's `add_function_include`)
lists our `/swaig` URL and the functions it wants. When one of its calls starts,
the platform asks that URL for their definitions, a *discovery*:
``{"action": "get_signature", "functions": [...], "meta_data": {...}}``, and
then posts to each definition's `web_hook_url` as to any function.

What this module decides, the agent carries out (agent.py, SWAIG includes):
- which definitions a discovery gets: the functions it names that are ours,
  or all of ours when it names none;
- what each `web_hook_url` carries: `include` (the discovery's id, which marks
  the request as a host's), a token bound to the call the discovery names, or
  else to the discovery itself (engine/discoveries.py binds that to one call),
  and the include's `meta_data.agent_id`, which its calls' events go under;
- what a host hears: the same answers as our own agent's calls, without moving
  to our steps (the host has its own prompt and steps).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from config.settings import AGENT_ID
from functions.platform import CALL_ID_PATTERN

# The query parameter on every web_hook_url a discovery gives out: the discovery's id.
INCLUDE_PARAM = "include"
DISCOVERY_ID = re.compile(r"^[0-9a-f]{32}$")
CALL_ID = re.compile(CALL_ID_PATTERN)
# Actions that move a call through our conversation's steps, which a host does not have.
STEP_ACTIONS = frozenset({"change_step", "change_context", "context_switch"})


@dataclass(frozen=True)
class Discovery:
    """A `get_signature` request: what it asks for, and for whom."""

    names: tuple[str, ...] | None  # None: it named none, so all of ours
    agent_id: str | None  # the include's meta_data.agent_id, when valid
    call_id: str | None  # the call it is for, when it names one


def parse_discovery(body: Any) -> Discovery | None:
    """The discovery in a `/swaig` body, or None when the body is not one.

    Lenient, as a discovery gets definitions, never actions: names that are not
    text are left out, and an agent id or call id that is not valid counts as
    none given.
    """
    if not isinstance(body, dict) or body.get("action") != "get_signature":
        return None
    asked = body.get("functions")
    names: tuple[str, ...] | None
    if asked is None or asked == []:
        names = None
    elif isinstance(asked, str):
        names = (asked,)
    elif isinstance(asked, list):
        names = tuple(name for name in asked if isinstance(name, str))
    else:
        names = ()
    meta_data = body.get("meta_data")
    agent_id = meta_data.get("agent_id") if isinstance(meta_data, dict) else None
    call_id = body.get("call_id")
    return Discovery(
        names=names,
        agent_id=agent_id if isinstance(agent_id, str) and AGENT_ID.match(agent_id) else None,
        call_id=call_id if isinstance(call_id, str) and CALL_ID.match(call_id) else None,
    )


def chosen(discovery: Discovery, ours: Sequence[str]) -> list[str]:
    """The functions to define: those asked for that are ours, once each, in the order asked."""
    if discovery.names is None:
        return list(ours)
    return [name for name in dict.fromkeys(discovery.names) if name in ours]


def new_discovery_id() -> str:
    return secrets.token_hex(16)


def discovery_subject(discovery_id: str) -> str:
    """What a token names when the discovery named no call.

    A "/" is in no call id (`CALL_ID`), so such a token can never pass as a call's own.
    """
    return f"include/{discovery_id}"


def for_host(answer: dict[str, Any]) -> dict[str, Any]:
    """A function's answer as a host agent gets it: the same, without moves to our steps."""
    actions = answer.get("action")
    if not isinstance(actions, list):
        return answer
    kept = [
        action for action in actions if not (isinstance(action, dict) and STEP_ACTIONS.intersection(action))
    ]
    return {**answer, "action": kept} if kept else {k: v for k, v in answer.items() if k != "action"}

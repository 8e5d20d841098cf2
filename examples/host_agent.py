#!/usr/bin/env python3
"""A host agent: an agent of its own that verifies callers with our functions.

It has its own prompt (an account help line) and no verification code of its
own: `add_function_include` lists the verification agent's `/swaig` URL and the
two functions. When a call starts, SignalWire asks that URL for their
definitions and then calls them there, as if they were this agent's own.
`meta_data.agent_id` names the id this agent's verifications are reported
under (the verification agent's `/dashboard?agent_id=...`, its events).

Start the verification agent (`./scripts/start.sh`), then this one on another port:

    MFA_INCLUDE_URL='https://signalwire:PASSWORD@mfa.example.com/swaig' \\
    HOST_AGENT_ID=help-line PORT=3001 python examples/host_agent.py

Point a phone number (or an AI Agent resource) at this agent's URL, with the
credentials it prints at start-up.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from signalwire import AgentBase

FUNCTIONS = ["send_mfa", "verify_mfa"]

ROLE = (
    "You answer calls for Example Co's account help line. You take account questions only from "
    "a caller whose phone is verified: then note the question and say the account team will "
    "call back today. Keep each reply to one or two short sentences."
)

VERIFICATION = [
    "Before you discuss or change anything on an account, offer to verify the caller's phone.",
    "When they agree, call send_mfa, then ask them to read the code back and call verify_mfa "
    "with exactly what they said.",
    "Treat the caller as verified only after verify_mfa says the code is correct; say what its "
    "result says otherwise, and never read a code aloud.",
]


class HostAgent(AgentBase):
    """An account help line that includes send_mfa and verify_mfa from the verification agent."""

    def __init__(self, include_url: str, *, agent_id: str | None = None, **agent_args: Any) -> None:
        super().__init__(name="help-line", route="/", **agent_args)
        self.prompt_add_section("Role", body=ROLE)
        self.prompt_add_section("Verification", bullets=VERIFICATION)
        self.add_language(name="English", code="en-US", voice="inworld.Sarah")
        # meta_data is sent as it is with each discovery: an id to report under, never a secret.
        meta_data = {"agent_id": agent_id} if agent_id else None
        self.add_function_include(include_url, FUNCTIONS, meta_data=meta_data)


def main() -> None:
    include_url = os.environ.get("MFA_INCLUDE_URL")
    if not include_url:
        print(
            "configuration error: MFA_INCLUDE_URL: the verification agent's SWAIG URL with its "
            "credentials, e.g. https://signalwire:PASSWORD@mfa.example.com/swaig",
            file=sys.stderr,
        )
        raise SystemExit(2)
    # The SDK reads this agent's own PORT, SWML_BASIC_AUTH_USER and SWML_BASIC_AUTH_PASSWORD.
    HostAgent(include_url, agent_id=os.environ.get("HOST_AGENT_ID")).run()


if __name__ == "__main__":
    main()

"""The baseline: a bare agent of the same SDK with one `async def` tool that does nothing.

Served exactly as `agent.py` serves ours (uvicorn with uvloop and httptools,
access log off) with the same Basic auth and a secure tool, so the per-call
`__token` is minted and checked as for `send_mfa` and `verify_mfa`. Its tool
takes the same arguments as ours (so the SDK's argument handling costs the
same) and answers at once.

    HOST=127.0.0.1 PORT=3001 SWML_BASIC_AUTH_USER=u SWML_BASIC_AUTH_PASSWORD=p \
        SIGNALWIRE_SWAIG_SECRET=... python bench/bare_agent.py
"""

from __future__ import annotations

import os
from typing import Any

from signalwire import AgentBase

TOOL = "noop"


async def noop(args: dict[str, Any], raw_data: dict[str, Any]) -> dict[str, Any]:
    """Does nothing, at once."""
    return {"response": "ok"}


def build_bare_agent(user: str, password: str, swaig_secret: str | None, host: str, port: int) -> AgentBase:
    """One secure no-op tool with our functions' parameters, and a minimal prompt."""
    agent = AgentBase(
        name="bare",
        route="/",
        host=host,
        port=port,
        basic_auth=(user, password),
        swaig_secret=swaig_secret,
        suppress_logs=True,
    )
    agent.prompt_add_section("Role", "You answer briefly.")
    agent.define_tool(
        name=TOOL,
        description="Does nothing.",
        parameters={
            "phone_number": {"type": "string", "description": "A number."},
            "channel": {"type": "string", "enum": ["sms", "call"], "description": "How."},
            "token": {"type": "string", "description": "A code."},
        },
        handler=noop,
        secure=True,
    )
    return agent


def serve() -> None:
    """Serve the bare agent the way `agent.serve()` serves ours."""
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "3001"))
    agent = build_bare_agent(
        os.environ.get("SWML_BASIC_AUTH_USER", "signalwire"),
        os.environ["SWML_BASIC_AUTH_PASSWORD"],
        os.environ.get("SIGNALWIRE_SWAIG_SECRET"),
        host,
        port,
    )
    import uvicorn

    print(f"bare agent listening on http://{host}:{port}/", flush=True)
    uvicorn.run(
        agent.get_app(),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    serve()

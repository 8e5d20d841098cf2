"""What one request carries down to the code that serves it, set by the app per request.

These live below functions, api and web so that each reads them without importing
another: the agent sets them, the handlers and routes only read them.
"""

from __future__ import annotations

from contextvars import ContextVar

# Set per request by the app from the SWAIG URL's `agent_id` query parameter.
request_agent_id: ContextVar[str | None] = ContextVar("request_agent_id", default=None)
# Set per request by the agent when the SWAIG URL is one an include's discovery gave out
# (functions/includes.py): the call belongs to another agent, with its own steps.
request_from_include: ContextVar[bool] = ContextVar("request_from_include", default=False)

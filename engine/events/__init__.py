"""Events: one model, one publisher, and the sinks each event goes to."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.runtime import Runtime


def attach_event_sinks(runtime: Runtime) -> None:
    """Connect the publisher to the live fan-out, webhooks and metrics. Called by `Runtime.start`."""

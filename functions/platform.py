"""What the platform sends a function, and what a function sends back.

`SwaigRequest` validates the platform's webhook body with pydantic;
the SDK's own argument validation does nothing with the current jsonschema-rs.
`Reply` is the one result type handlers build: the fact, what the model
should do next, and the platform actions, rendered as one plain `response`
string (prompts and dashboards rely on that shape) plus `action`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from signalwire.core.function_result import FunctionResult

from engine.models import Event

log = logging.getLogger(__name__)

CALL_ID_PATTERN = r"^[A-Za-z0-9_.:@-]{1,128}$"


class SwaigRequest(BaseModel):
    """The parts of the platform's webhook body the functions use."""

    model_config = ConfigDict(extra="ignore")

    call_id: str = Field(pattern=CALL_ID_PATTERN)
    caller_id_num: str | None = Field(None, max_length=64)
    meta_data: dict[str, Any] = Field(default_factory=dict)
    global_data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("meta_data", "global_data", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


def verification_id_of(request: SwaigRequest) -> str | None:
    """The verification this call's `send_mfa` recorded in meta_data (``mfa.id``), if any."""
    mfa = request.meta_data.get("mfa")
    verification_id = mfa.get("id") if isinstance(mfa, dict) else None
    return verification_id if isinstance(verification_id, str) and len(verification_id) <= 128 else None


class BadRequest(Exception):
    """The request cannot be acted on; ``reply`` says so to the model."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.fact)
        self.reply = reply


@dataclass(frozen=True)
class WayOn:
    """Where a call may go from here, as the deployment configured it."""

    person: str | None = None  # MFA_TRANSFER_TO: a person the caller can be connected to
    on_verified: str | None = None  # MFA_ON_VERIFIED: where a verified call is handed on


# Said to the model where a caller may want someone else, only when a person can be reached.
OFFER_PERSON = "If they would rather speak to a person, call transfer_to_person."


@dataclass
class Reply:
    """A function's answer: the fact, what to do next, and platform actions.

    ``offers_person``: a step where a caller may want a person; the model is told it
    can connect them only when the deployment has one (MFA_TRANSFER_TO), and never
    promises one otherwise. ``verified``: the call was verified (the verification's id
    and masked number), so it is handed on when the deployment says where (MFA_ON_VERIFIED).
    """

    fact: str
    next_step: str = ""
    actions: list[tuple[str, Any]] = field(default_factory=list)
    offers_person: bool = False
    verified: tuple[str, str] | None = None

    def with_action(self, name: str, data: Any) -> Reply:
        self.actions.append((name, data))
        return self

    def with_event(self, event: Event | None) -> Reply:
        """The step's event also goes to the call as a `user_event` (for a WebRTC page)."""
        if event is not None:
            self.actions.append(("user_event", event.model_dump(mode="json", exclude_none=True)))
        return self

    def to_result(self, way_on: WayOn | None = None) -> FunctionResult:
        way_on = way_on or WayOn()
        next_step = self.next_step
        if self.offers_person and way_on.person:
            next_step = f"{next_step} {OFFER_PERSON}"
        result = FunctionResult(f"{self.fact} {next_step}".strip())
        for name, data in self.actions:
            if name == "user_event":
                result.swml_user_event(data)
            elif name == "change_step":
                result.swml_change_step(data)
            elif name == "set_meta_data":
                result.set_metadata(data)
            elif name == "set_global_data":
                result.update_global_data(data)
            elif name == "connect":
                result.connect(data, final=True)
                result.set_post_process(True)  # the model says goodbye before the call moves
            else:
                result.add_action(name, data)
        if self.verified is not None and way_on.on_verified:
            _hand_on(result, way_on.on_verified, *self.verified)
        return result


def _hand_on(result: FunctionResult, destination: str, verification_id: str, masked: str) -> None:
    """Hand a verified call on, telling the next agent what it needs to know in global_data."""
    result.update_global_data(
        {"mfa_verified": True, "mfa_verification_id": verification_id, "mfa_verified_number": masked}
    )
    if destination.startswith("https://"):
        result.swml_transfer(destination, "The caller's phone is verified.", final=True)
    else:
        result.connect(destination, final=True)
    result.set_post_process(True)


def spoken_wait(seconds: int) -> str:
    """A wait as the caller should hear it: seconds, minutes or hours."""
    if seconds < 90:
        return f"{seconds} seconds"
    minutes = (seconds + 59) // 60
    return f"{minutes} minutes" if minutes < 90 else f"{(minutes + 59) // 60} hours"


MAX_DOCUMENT = 16_384  # arguments or meta_data larger than this (UTF-8 bytes) are not a real call's


def _document_size(value: Any) -> int:
    """The UTF-8 size of ``value`` as JSON.

    ValueError if some text in it has no UTF-8 form: a lone surrogate, which JSON can
    carry as an escape (``"\\ud800"``) and Python decodes, but which no store, log or
    reply can take. RecursionError if it is nested deeper than anything the platform sends.
    """
    return len(json.dumps(value, ensure_ascii=False, default=str).encode())


def parse_request(raw_data: Any, arguments: Any = None) -> SwaigRequest:
    """The webhook body, validated; BadRequest for anything a real call would not send."""
    try:
        # Every part of the body, used here or not, must be text UTF-8 can carry.
        size = _document_size(raw_data)
        request = SwaigRequest.model_validate(raw_data)
        # The meta_data is a part of the body: written out, no longer than the body is.
        if _document_size(arguments) > MAX_DOCUMENT or (
            size > MAX_DOCUMENT and _document_size(request.meta_data) > MAX_DOCUMENT
        ):
            raise ValueError("oversized")
        return request
    except (ValidationError, ValueError, RecursionError, TypeError):
        raise BadRequest(
            Reply(
                "Nothing was done: the request did not come from a call this agent can serve.",
                "Apologize and say verification is not available right now.",
            )
        ) from None


def parse_arguments(model: type[BaseModel], args: Any, retry_hint: str) -> Any:
    """Validate the model's arguments; a clear answer instead of a guess when they are wrong."""
    try:
        return model.model_validate(args if isinstance(args, dict) else {})
    except ValidationError as error:
        fields = sorted({str(problem["loc"][0]) for problem in error.errors() if problem["loc"]})
        named = f" ({', '.join(fields)})" if fields else ""
        raise BadRequest(
            Reply(f"Nothing was done: the arguments were not valid{named}.", retry_hint)
        ) from None

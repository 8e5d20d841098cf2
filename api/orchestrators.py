"""The walkthrough's HTTP contract for `E4_SmsPhoneVerification`, served by this app.

The published phone-verification walkthrough starts its workflow with
`POST /orchestrators/E4_SmsPhoneVerification` and then uses the instance
management URIs it gets back. Those mirror the Durable Functions HTTP API
(`/runtime/webhooks/durabletask/instances/{id}`, `.../raiseEvent/{eventName}`,
`.../terminate`, `DELETE` to purge), including its status codes: 202 while an
instance runs, 410 for an event or a terminate on a finished one, 412 for a
purge of a running one. Every URI is served here, behind the same Basic auth
as every other route, and the query parameters a Durable client appends
(`taskHub`, `connection`, `code`) are ignored.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StringConstraints, TypeAdapter, ValidationError

from api.errors import ApiRoute, error_responses
from api.verifications import NUMBER_MAX_LENGTH
from engine.errors import InvalidRequest
from engine.runtime import Runtime
from engine.workflow import CHALLENGE_EVENT, WORKFLOW_NAME, Instance, RuntimeStatus
from server.context import request_agent_id

INSTANCES = "/runtime/webhooks/durabletask/instances"
STATUS_RETRY_AFTER = "5"  # seconds; what Durable asks of clients polling a running instance
_MAX_BODY = 1024

InstanceId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The instance's id.")]
EventName = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description=f"Only `{CHALLENGE_EVENT}` is awaited.")
]

# The start body: a JSON string, the number to verify.
PhoneNumberBody = TypeAdapter(Annotated[str, StringConstraints(strict=True, max_length=NUMBER_MAX_LENGTH)])
# The challenge response: the code, as a JSON number (leading zeros lost) or a string.
ChallengeBody = TypeAdapter(
    Annotated[int, Field(strict=True, ge=0, lt=10**20)]
    | Annotated[str, StringConstraints(strict=True, min_length=1, max_length=64)]
)


class InstanceLinks(BaseModel):
    """Where to follow and drive a started instance (absolute URLs)."""

    id: str
    statusQueryGetUri: str
    sendEventPostUri: str = Field(description="Ends in `/raiseEvent/{eventName}`: put the event name there.")
    terminatePostUri: str
    purgeHistoryDeleteUri: str


class InstanceProgress(BaseModel):
    """What the instance is waiting on: its verification (events carry its id) and the tries left."""

    verificationId: str
    attemptsLeft: int


class InstanceStatus(BaseModel):
    """The status URI's answer."""

    name: str = WORKFLOW_NAME
    instanceId: str
    runtimeStatus: RuntimeStatus
    input: str = Field(description="The number being verified, masked to its last four digits.")
    customStatus: InstanceProgress
    output: bool | str | None = Field(
        description="`true`: verified; `false`: the window ended or the tries ran out; "
        "when `Terminated`, the reason given (or null); null while `Running`."
    )
    createdTime: str = Field(examples=["2026-01-15T08:00:00Z"])
    lastUpdatedTime: str = Field(examples=["2026-01-15T08:00:42Z"])

    @classmethod
    def of(cls, instance: Instance) -> InstanceStatus:
        return cls(
            instanceId=instance.id,
            runtimeStatus=instance.runtime_status,
            input=instance.input,
            customStatus=InstanceProgress(
                verificationId=instance.verification_id, attemptsLeft=instance.attempts_left
            ),
            output=instance.output,
            createdTime=_timestamp(instance.created_at),
            lastUpdatedTime=_timestamp(max(instance.created_at, instance.updated_at)),
        )


class PurgeResult(BaseModel):
    instancesDeleted: int


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


T = TypeVar("T")


async def _json_body(request: Request, adapter: TypeAdapter[T]) -> T:
    """The body as JSON, whatever the Content-Type says (the walkthrough's clients vary)."""
    raw = await request.body()
    if len(raw) > _MAX_BODY:
        raise InvalidRequest("The request body is too large.")
    try:
        return adapter.validate_json(raw)
    except ValidationError as error:
        kinds = sorted({problem["type"] for problem in error.errors()})
        raise InvalidRequest(f"The request body is not valid ({', '.join(kinds)}).") from None


def _json_request_body(adapter: TypeAdapter[Any], description: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": adapter.json_schema()}},
        }
    }


def _instance_url(request: Request, instance_id: str) -> str:
    return f"{str(request.base_url).rstrip('/')}{INSTANCES}/{instance_id}"


_LOCATION = {
    "Location": {
        "description": "The status URI.",
        "required": True,
        "schema": {"type": "string", "format": "uri"},
    }
}


def build_orchestrators_router(runtime: Runtime) -> APIRouter:
    """The walkthrough's routes (authentication is added by the caller)."""
    router = APIRouter(tags=["phone verification workflow"], route_class=ApiRoute)

    @router.post(
        f"/orchestrators/{WORKFLOW_NAME}",
        status_code=202,
        response_model=InstanceLinks,
        summary="Start the phone-verification workflow",
        description=(
            "Sends a code by SMS (by default 4 digits, valid 90 seconds, 4 tries) and answers the "
            "instance's management URIs."
        ),
        openapi_extra=_json_request_body(PhoneNumberBody, "The number to verify, as a JSON string."),
        responses={202: {"headers": _LOCATION}, **error_responses(422, 429, 502)},
    )
    async def start_phone_verification(request: Request, response: Response) -> InstanceLinks:
        number = await _json_body(request, PhoneNumberBody)
        agent_id = request_agent_id.get() or runtime.settings.agent_id
        instance = await runtime.workflow.start(number, agent_id=agent_id)
        url = _instance_url(request, instance.id)
        response.headers["Location"] = url
        return InstanceLinks(
            id=instance.id,
            statusQueryGetUri=url,
            sendEventPostUri=f"{url}/raiseEvent/{{eventName}}",
            terminatePostUri=f"{url}/terminate",
            purgeHistoryDeleteUri=url,
        )

    @router.get(
        f"{INSTANCES}/{{instance_id}}",
        response_model=InstanceStatus,
        summary="Read an instance's status",
        responses={
            200: {"description": "The instance has finished (`Completed` or `Terminated`)."},
            202: {
                "model": InstanceStatus,
                "description": "The instance is `Running`: poll again.",
                "headers": {
                    **_LOCATION,
                    "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}},
                },
            },
            **error_responses(404, 422),
        },
    )
    async def get_instance_status(instance_id: InstanceId, request: Request) -> Response:
        instance = await runtime.workflow.status(instance_id)
        body = InstanceStatus.of(instance).model_dump(mode="json")
        if instance.runtime_status is RuntimeStatus.RUNNING:
            headers = {"Location": _instance_url(request, instance.id), "Retry-After": STATUS_RETRY_AFTER}
            return JSONResponse(body, status_code=202, headers=headers)
        return JSONResponse(body)

    @router.post(
        f"{INSTANCES}/{{instance_id}}/raiseEvent/{{event_name}}",
        status_code=202,
        response_class=Response,
        summary="Send an event (the code) to a running instance",
        description=(
            f"`{CHALLENGE_EVENT}` with the code as its body is checked at once. Any other event name "
            "is refused with 400 (`unknown_event`): this workflow never waits for one, so accepting it "
            "would only hide a client's mistake."
        ),
        openapi_extra=_json_request_body(ChallengeBody, "The code, as a JSON number or string."),
        responses={202: {"description": "Accepted."}, **error_responses(400, 404, 410, 422, 502)},
    )
    async def raise_event(instance_id: InstanceId, event_name: EventName, request: Request) -> Response:
        data = await _json_body(request, ChallengeBody)
        await runtime.workflow.raise_event(instance_id, event_name, data)
        return Response(status_code=202)

    @router.post(
        f"{INSTANCES}/{{instance_id}}/terminate",
        status_code=202,
        response_class=Response,
        summary="Terminate a running instance",
        description="Cancels its code; the status becomes `Terminated`, with the reason as its output.",
        responses={202: {"description": "Accepted."}, **error_responses(404, 410, 422)},
    )
    async def terminate_instance(
        instance_id: InstanceId,
        reason: Annotated[str | None, Query(max_length=256, description="Why; shown as the output.")] = None,
    ) -> Response:
        await runtime.workflow.terminate(instance_id, reason)
        return Response(status_code=202)

    @router.delete(
        f"{INSTANCES}/{{instance_id}}",
        response_model=PurgeResult,
        summary="Purge a finished instance",
        responses=error_responses(404, 412, 422),
    )
    async def purge_instance(instance_id: InstanceId) -> PurgeResult:
        await runtime.workflow.purge(instance_id)
        return PurgeResult(instancesDeleted=1)

    return router

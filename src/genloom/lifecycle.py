"""The job lifecycle: states, the transition graph, terminal sets and the closed event enum.

Pure data and one checker; no I/O. Everything that writes a job row asks ``check`` first and
repeats the allowed sources in its conditional UPDATE.

    pending ──> queued ──> running ──> completed | failed | cancelled | expired
       │          │  ^        │
       │          │  └────────┘ (retry after a transient error, or a lost lease)
       ├──> running (synchronous jobs skip the queue)
       └──> failed | cancelled (also from queued)
    failed | expired ──> pending (admin retry)
"""

from __future__ import annotations

from enum import StrEnum

from genloom.errors import InvalidTransition


class Status(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


ALLOWED: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.QUEUED, Status.RUNNING, Status.FAILED, Status.CANCELLED}),
    Status.QUEUED: frozenset({Status.RUNNING, Status.FAILED, Status.CANCELLED}),
    Status.RUNNING: frozenset(
        {Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.EXPIRED, Status.QUEUED}
    ),
    Status.COMPLETED: frozenset(),
    Status.CANCELLED: frozenset(),
    Status.FAILED: frozenset({Status.PENDING}),
    Status.EXPIRED: frozenset({Status.PENDING}),
}

#: States no worker will move again on its own. failed and expired leave only by admin retry.
TERMINAL: frozenset[Status] = frozenset(
    {Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.EXPIRED}
)
#: States that can never be left.
FINAL: frozenset[Status] = frozenset({Status.COMPLETED, Status.CANCELLED})
ACTIVE: frozenset[Status] = frozenset({Status.PENDING, Status.QUEUED, Status.RUNNING})
#: Terminal states whose charge is given back.
REFUNDED: frozenset[Status] = frozenset({Status.FAILED, Status.CANCELLED, Status.EXPIRED})


def sources(target: Status) -> frozenset[Status]:
    """Every state from which ``target`` may be reached (the WHERE clause of the write)."""
    return frozenset(s for s, targets in ALLOWED.items() if target in targets)


def is_allowed(current: Status, target: Status) -> bool:
    return target in ALLOWED[current]


def check(current: Status | str, target: Status | str) -> None:
    """Raise InvalidTransition unless ``current -> target`` is an edge of the graph."""
    cur, tgt = Status(current), Status(target)
    if tgt not in ALLOWED[cur]:
        raise InvalidTransition(
            f"cannot move a {cur.value} job to {tgt.value}", from_status=cur.value, to_status=tgt.value
        )


class EventType(StrEnum):
    """The closed set of job events (the Motioness enum plus the lifecycle's own)."""

    QUEUED = "queued"
    STARTED = "started"
    VISION_STARTED = "vision_started"
    VISION_COMPLETED = "vision_completed"
    VISION_FAILED = "vision_failed"
    STAGE_STARTED = "stage_started"
    STAGE_COMPLETED = "stage_completed"
    STAGE_FAILED = "stage_failed"
    RETRY_SCHEDULED = "retry_scheduled"
    STORAGE_WRITE_COMPLETED = "storage_write_completed"
    WEBHOOK_DISPATCHED = "webhook_dispatched"
    WEBHOOK_DELIVERED = "webhook_delivered"
    WEBHOOK_FAILED = "webhook_failed"
    WEBHOOK_DEAD_LETTER = "webhook_dead_letter"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    CANCEL_REQUESTED = "cancel_requested"


#: The event written with each entry into a state.
STATUS_EVENT: dict[Status, EventType | None] = {
    Status.PENDING: None,
    Status.QUEUED: EventType.QUEUED,
    Status.RUNNING: EventType.STARTED,
    Status.COMPLETED: EventType.COMPLETED,
    Status.FAILED: EventType.FAILED,
    Status.CANCELLED: EventType.CANCELLED,
    Status.EXPIRED: EventType.EXPIRED,
}

#: Events after which a job's stream has nothing more to say (until an admin retry).
TERMINAL_EVENTS: frozenset[EventType] = frozenset(
    {EventType.COMPLETED, EventType.FAILED, EventType.CANCELLED, EventType.EXPIRED}
)

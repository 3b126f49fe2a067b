"""The durable outbox: delivery rows written by the same transaction as the events that cause them.

``store.unit.Unit`` hands every event it writes to :func:`enqueue` just after inserting them, so
a job's terminal event and its deliveries commit (or roll back) together, whichever code path wrote
the event (``Jobs.apply``, ``Queue.complete_many``, a cancel). Kept cheap for the common case:

* a terminal event (``job.completed|failed|cancelled|expired``) costs one indexed lookup of the
  project's enabled endpoints per transaction (batches included), plus the insert when anything
  matches; a job's own ``webhook_url`` gets its terminal events with no lookup at all;
* any other event is considered only for projects whose endpoints ask for more than the terminal
  types. That is learnt from a per-process summary of all endpoint filters, reloaded at most every
  ``INTEREST_TTL`` seconds and at once after an endpoint write in this process; so a filter saved
  by another process takes effect within that time for non-terminal types (terminal ones: at once).

Webhook outcome events (``webhook_delivered`` …) reach an endpoint only if its filter names them,
and the outcomes of delivering *those* are written with ``webhooks=False`` by the dispatcher, so a
delivery can never cause a chain of further deliveries.

A commit that created deliveries wakes dispatchers: in-process through :func:`wake` (registered
with :func:`on_created`) and, on PostgreSQL, through NOTIFY on ``WEBHOOKS_CHANNEL``.
"""

from __future__ import annotations

import time
import uuid
import weakref
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection

from genloom.lifecycle import TERMINAL_EVENTS, EventType, Status
from genloom.models import EventSpec
from genloom.store import statements as store_q
from genloom.store.writes import WriteConnection
from genloom.webhooks import statements as q

#: Every type an endpoint may subscribe to: ``job.<event type>``.
EVENT_TYPES: frozenset[str] = frozenset(f"job.{e.value}" for e in EventType)
#: What an endpoint gets unless it asks otherwise, and all a job's own webhook_url ever gets.
DEFAULT_EVENTS: tuple[str, ...] = tuple(f"job.{e.value}" for e in (
    EventType.COMPLETED, EventType.FAILED, EventType.CANCELLED, EventType.EXPIRED))
TERMINAL_TYPES: frozenset[str] = frozenset(f"job.{e.value}" for e in TERMINAL_EVENTS)
WEBHOOK_EVENTS: frozenset[EventType] = frozenset({
    EventType.WEBHOOK_DISPATCHED, EventType.WEBHOOK_DELIVERED, EventType.WEBHOOK_FAILED,
    EventType.WEBHOOK_DEAD_LETTER})
INTEREST_TTL = 1.0  # seconds a process trusts its summary of non-terminal subscriptions


@dataclass(frozen=True, slots=True)
class Trigger:
    """An event as written, with the job row it was written for (after the write)."""

    job: Mapping[Any, Any]
    spec: EventSpec
    ts: int
    request_id: str | None

    @property
    def type(self) -> str:
        return f"job.{self.spec.type.value}"


def db_key(conn: AsyncConnection | WriteConnection) -> str:
    """Which database a connection writes to (wake-ups and the interest summary are per database)."""
    engine = conn.engine.sync_engine
    key = _rendered.get(engine)
    if key is None:
        key = _rendered[engine] = str(engine.url)
    return key


# Each engine's URL as text: rendering one takes several microseconds and every queue write asks
# (a cache keyed by the URL itself would not help: a URL's hash renders it).
_rendered: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()


# -- the per-process summary of non-terminal subscriptions -----------------------------------------

@dataclass(frozen=True)
class _Interest:
    loaded_at: float
    extra: dict[str, frozenset[str]]  # project id -> non-terminal types some enabled endpoint wants


_interest: dict[str, _Interest] = {}


def forget_interest(key: str) -> None:
    """Drop the summary after an endpoint write, so this process applies the change at once."""
    _interest.pop(key, None)


async def _extra_interest(conn: AsyncConnection | WriteConnection) -> dict[str, frozenset[str]]:
    key = db_key(conn)
    now = time.monotonic()
    cached = _interest.get(key)
    if cached is None or now - cached.loaded_at > INTEREST_TTL:
        extra: dict[str, set[str]] = defaultdict(set)
        for project_id, types in (await conn.execute(q.endpoint_interest())).all():
            extra[project_id].update(t for t in types or () if t not in TERMINAL_TYPES)
        cached = _Interest(now, {p: frozenset(t) for p, t in extra.items() if t})
        _interest[key] = cached
    return cached.extra


async def interested(conn: AsyncConnection | WriteConnection, event_types: Collection[EventType]) -> bool:
    """Whether any project subscribes to one of these non-terminal events (the cached summary):
    a write of only events nobody wants owes no delivery rows, so it may skip ``enqueue``."""
    wanted = {f"job.{e.value}" for e in event_types}
    return any(types & wanted for types in (await _extra_interest(conn)).values())


# -- writing deliveries ----------------------------------------------------------------------------

async def enqueue(conn: WriteConnection, postgres: bool, triggers: Sequence[Trigger]) -> int:
    """Insert the deliveries ``triggers`` call for, inside the caller's transaction; returns how many."""
    wanted: list[Trigger] = []
    extra: dict[str, frozenset[str]] | None = None
    for t in triggers:
        if t.spec.type in TERMINAL_EVENTS:
            wanted.append(t)
            continue
        if extra is None:
            extra = await _extra_interest(conn)
        if t.type in extra.get(str(t.job["project_id"]), ()):
            wanted.append(t)
    if not wanted:
        return 0
    endpoints: dict[str, list[Mapping[Any, Any]]] = defaultdict(list)
    projects = {str(t.job["project_id"]) for t in wanted}
    if len(projects) == 1:
        found = await conn.fetch(q.project_endpoints(), {"e_project": next(iter(projects))})
    else:
        found = [dict(ep) for ep in (await conn.execute(q.enabled_endpoints(projects))).mappings()]
    for ep in found:
        endpoints[ep["project_id"]].append(ep)
    rows: list[dict[str, Any]] = []
    for t in wanted:
        body: dict[str, Any] | None = None
        targets = [(ep["id"], ep["url"]) for ep in endpoints.get(str(t.job["project_id"]), ())
                   if t.type in (ep["events"] or ())]
        if t.spec.type in TERMINAL_EVENTS and t.job.get("webhook_url"):
            targets.append((None, t.job["webhook_url"]))
        for endpoint_id, url in targets:
            body = body or payload(t)
            rows.append({
                "id": new_delivery_id(), "project_id": t.job["project_id"], "endpoint_id": endpoint_id,
                "job_id": t.job["id"], "url": url, "event_type": t.type, "payload": body, "status": "pending",
                "attempts": 0, "next_attempt_at": t.ts, "created_at": t.ts, "updated_at": t.ts,
            })
    if rows:
        await conn.execute(q.insert_deliveries(), rows)
    return len(rows)  # the caller announces them (see store.unit), with its other wake-ups


async def announce(conn: WriteConnection, postgres: bool) -> None:
    """Wake other processes' dispatchers when this transaction commits (PostgreSQL NOTIFY)."""
    if postgres:
        await conn.execute(store_q.notify((q.WEBHOOKS_CHANNEL, "")))


def new_delivery_id() -> str:
    """The delivery's id, sent as ``webhook-id`` on every attempt."""
    return f"msg_{uuid.uuid4().hex}"


def iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def payload(t: Trigger) -> dict[str, Any]:
    """The body receivers get: ``{"type", "timestamp", "data": {the job, and the event's details}}``."""
    job, spec = t.job, t.spec
    status = str(job.get("status") or "")
    failed = status in (Status.FAILED, Status.CANCELLED, Status.EXPIRED)
    completed_at = job.get("completed_at")
    data: dict[str, Any] = {
        "id": job["id"],
        "type": job.get("type"),
        "mode": job.get("mode"),
        "status": status,
        "project_id": job["project_id"],
        "user": job.get("user_id") or "",
        "attempt": job.get("attempt", 0),
        "cost": job.get("cost", 0),
        "result_url": f"/v1/jobs/{job['id']}/result" if status == Status.COMPLETED else None,
        "error_code": job.get("error_code") if failed else None,
        "error_message": job.get("error_message") if failed else None,
        "created_at": iso(int(job["created_at"])) if job.get("created_at") is not None else None,
        "completed_at": iso(int(completed_at)) if completed_at is not None else None,
        "request_id": t.request_id or job.get("request_id"),
    }
    event: dict[str, Any] = {k: v for k, v in (("stage", spec.stage), ("latency_ms", spec.latency_ms),
                               ("error_code", spec.error_code), ("error_msg", spec.error_msg)) if v is not None}
    if spec.data:
        event["data"] = spec.data
    if event:
        data["event"] = event
    return {"type": t.type, "timestamp": iso(t.ts), "data": data}


# -- in-process wake-ups ---------------------------------------------------------------------------

_wakers: dict[str, set[Callable[[], None]]] = defaultdict(set)


def on_created(key: str, callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback()`` after each commit in this process that created or replayed deliveries
    in database ``key``; returns the function that unregisters it. Callbacks must be thread-safe
    and quick (the dispatcher's hops onto its own loop)."""
    _wakers[key].add(callback)

    def off() -> None:
        _wakers[key].discard(callback)
        if not _wakers[key]:
            _wakers.pop(key, None)

    return off


def wake(key: str) -> None:
    for callback in tuple(_wakers.get(key, ())):
        callback()

"""The append-only event log: rows written inside the caller's transaction, read back after an id.

Ids are safe to resume from. Every writer of a job's events first takes that job's row (the
conditional UPDATE of a transition, or a fenced touch), so one job's events commit in id order;
the cross-job feed holds back rows of still-open transactions on PostgreSQL (statements.feed_after).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from genloom.models import Event, EventSpec
from genloom.store import statements as q
from genloom.store.engine import Database


def event_rows(
    job: Mapping[Any, Any], specs: Sequence[EventSpec], now: int, request_id: str | None = None
) -> list[dict[str, Any]]:
    """Rows for ``specs`` on ``job`` as it is after the write (attempt, request id)."""
    return [
        {
            "job_id": job["id"],
            "project_id": job["project_id"],
            "type": s.type.value,
            "ts": now,
            "attempt": job["attempt"],
            "stage": s.stage,
            "latency_ms": s.latency_ms,
            "error_code": s.error_code,
            "error_msg": s.error_msg,
            "request_id": request_id or job.get("request_id"),
            "data": s.data,
        }
        for s in specs
    ]


async def append(conn: AsyncConnection, postgres: bool, rows: Sequence[dict[str, Any]]) -> None:
    """One multi-row insert for all of a write's events, in commit order on PostgreSQL."""
    if rows:
        if postgres:
            await conn.execute(q.order_event_commits())
        await conn.execute(q.insert_events(), list(rows))


class EventLog:
    """Reads of the log: one job's events after an id, or a project's feed in commit order."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def after(self, job_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        async with self.db.read() as conn:
            rows = (await conn.execute(q.events_after(job_id, after, limit))).mappings().all()
        return [Event.from_row(r) for r in rows]

    async def feed(self, project_id: str | None, after: int = 0, limit: int = 1000) -> list[Event]:
        async with self.db.read() as conn:
            stmt = q.feed_after(project_id, after, limit)
            rows = (await conn.execute(stmt)).mappings().all()
        return [Event.from_row(r) for r in rows]

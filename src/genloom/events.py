"""The append-only event log: rows written inside the caller's transaction, read back after an id.

Ids are safe to resume from within a job: every writer of a job's events first takes that job's
row (the conditional UPDATE of a transition, or a fenced touch) and holds it to commit, so one job's
events commit in id order. Across jobs, PostgreSQL transactions commit out of id order; the
cross-job feed is read by (transaction id, event id) position and holds back what still-open
transactions may add (statements.feed_after), so no writer has to queue behind a global lock.
The price: the feed shows nothing newer than the oldest write transaction open anywhere in the
PostgreSQL cluster, so a long one (a bulk load, a frozen process) delays it; it never skips.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from genloom.models import Event, EventSpec
from genloom.store import statements as q
from genloom.store.engine import Database
from genloom.store.writes import WriteConnection


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


#: A place in the cross-job feed: (transaction id, event id); (0, id) on SQLite.
FeedPosition = tuple[int, int]


async def append(
    conn: WriteConnection, postgres: bool, rows: Sequence[dict[str, Any]], *, jobs_ready: bool = False,
) -> None:
    """One multi-row insert for all of a write's events; on PostgreSQL it also stamps the
    transaction and sends the events' NOTIFYs (and the claimers' one, when ``jobs_ready``)."""
    if not rows:
        return
    if postgres:
        (await conn.execute(q.insert_events(postgres, jobs_ready), list(rows))).all()  # the NOTIFYs are its RETURNING
    else:
        await conn.run(q.insert_events(postgres, jobs_ready), rows)


class EventLog:
    """Reads of the log: one job's events after an id, or a project's feed in commit order."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def after(self, job_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        async with self.db.read() as conn:
            rows = (await conn.execute(q.events_after(job_id, after, limit))).mappings().all()
        return [Event.from_row(r) for r in rows]

    async def latest_ids(self, job_ids: Sequence[str]) -> dict[str, int]:
        """Each job's latest event id (jobs without events left out): what a follower is behind on."""
        async with self.db.read() as conn:
            rows = await conn.execute(q.latest_event_ids(job_ids))
        return {str(job_id): int(last) for job_id, last in rows}

    async def feed(
        self, project_id: str | None, after: FeedPosition = (0, 0), limit: int = 1000,
    ) -> tuple[list[Event], FeedPosition]:
        """Events of every job (of a project) after ``after``, in commit order, and the position to
        read on from."""
        async with self.db.read() as conn:
            stmt = q.feed_after(project_id, after, limit, self.db.is_postgres)
            rows = (await conn.execute(stmt)).mappings().all()
        if rows:
            after = (int(rows[-1]["tx"] or 0), int(rows[-1]["id"]))
        return [Event.from_row(r) for r in rows], after

    async def feed_head(self, project_id: str) -> FeedPosition:
        """Where a project's feed ends now: reading on from here shows only what is new."""
        async with self.db.read() as conn:
            row = (await conn.execute(q.feed_head(project_id, self.db.is_postgres))).first()
        return (0, 0) if row is None else (int(row[0] or 0), int(row[1] or 0))

"""A unit of work: one write transaction plus the wake-ups and log lines it owes after commit."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from genloom import events
from genloom.models import EventSpec
from genloom.notify import Notifier
from genloom.store import statements as q
from genloom.store.engine import Database
from genloom.store.writes import WriteConnection
from genloom.webhooks import outbox
from genloom.webhooks import statements as webhook_q


@dataclass
class Unit:
    conn: WriteConnection
    postgres: bool
    jobs_ready: bool = False
    deliveries: bool = False
    event_jobs: set[str] = field(default_factory=set)
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    _events: list[dict[str, Any]] = field(default_factory=list)
    _triggers: list[outbox.Trigger] = field(default_factory=list)
    _notified_jobs: bool = False  # wake-ups the event insert already sent
    _notified_events: set[str] = field(default_factory=set)

    def add_events(
        self, job: Mapping[Any, Any], specs: Sequence[EventSpec], now: int, request_id: str | None = None,
        *, webhooks: bool = True,
    ) -> None:
        """Queue events for ``job``; the caller must already hold the job's row in this unit.
        ``webhooks=False``: these events create no webhook deliveries (the dispatcher's outcomes
        of delivering webhook events, which would otherwise loop)."""
        if specs:
            self._events.extend(events.event_rows(job, specs, now, request_id))
            self.event_jobs.add(str(job["id"]))
            if webhooks:
                self._triggers.extend(outbox.Trigger(job, s, now, request_id) for s in specs)

    async def flush(self) -> None:
        """Insert the queued events and, in the same transaction, the webhook deliveries they cause."""
        rows, self._events = self._events, []
        triggers, self._triggers = self._triggers, []
        await events.append(self.conn, self.postgres, rows, jobs_ready=self.jobs_ready)
        if rows and self.postgres:  # the insert sent these wake-ups itself
            self._notified_jobs |= self.jobs_ready
            self._notified_events.update(str(r["job_id"]) for r in rows)
        if triggers and await outbox.enqueue(self.conn, self.postgres, triggers):
            self.deliveries = True
            self.after_commit.append(functools.partial(outbox.wake, outbox.db_key(self.conn)))

    def notifications(self) -> list[tuple[str, str]]:
        """The NOTIFYs this write owes other processes (PostgreSQL): runnable jobs, the jobs that
        have new events, new webhook deliveries."""
        out = [(q.JOBS_CHANNEL, "")] if self.jobs_ready and not self._notified_jobs else []
        out += [(q.EVENTS_CHANNEL, payload) for payload in _chunks(sorted(self.event_jobs - self._notified_events))]
        if self.deliveries:
            out.append((webhook_q.WEBHOOKS_CHANNEL, ""))
        return out


@asynccontextmanager
async def unit(db: Database, notifier: Notifier) -> AsyncIterator[Unit]:
    """Run one write; events are inserted in one statement at the end, wake-ups sent on commit."""
    async with db.tx() as conn:
        u = Unit(conn=conn, postgres=db.is_postgres)
        yield u
        await u.flush()
        if u.postgres and (messages := u.notifications()):
            await conn.execute(q.notify(*messages))  # one round trip, sent at COMMIT
    if notifier.local_only:
        if u.jobs_ready:
            notifier.jobs_ready()
        if u.event_jobs:
            notifier.events_written(u.event_jobs)
    for fn in u.after_commit:
        fn()


def _chunks(ids: Sequence[str]) -> list[str]:
    out: list[str] = []
    cur: list[str] = []
    size = 0
    for i in ids:
        if cur and size + len(i) + 1 > q.NOTIFY_PAYLOAD:
            out.append(",".join(cur))
            cur, size = [], 0
        cur.append(i)
        size += len(i) + 1
    if cur:
        out.append(",".join(cur))
    return out

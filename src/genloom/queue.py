"""The jobs table as a queue: batched claims with fencing tokens, heartbeats, completion, retry.

Each claim hands out a fresh lease token; every later write of that worker for the job is
conditional on the token, so a worker that froze past its lease and wakes after a rescue has
all its writes refused (LeaseLost).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from genloom.clock import Clock, ms
from genloom.errors import LeaseLost
from genloom.group_commit import GroupCommit
from genloom.ids import new_lease_token
from genloom.jobs import Finish, Jobs
from genloom.lifecycle import EventType, Status
from genloom.models import EventSpec, Job
from genloom.observability import get_logger
from genloom.retry import Decision
from genloom.store import prepared
from genloom.store import statements as q
from genloom.store.engine import db_wide
from genloom.store.unit import unit
from genloom.webhooks import outbox

log = get_logger("genloom.queue")

#: The events a claim writes (``started`` and a first stage's start): while no webhook endpoint
#: subscribes to them, a PostgreSQL claim needs no delivery rows and runs as single statements.
_CLAIM_EVENTS = (EventType.STARTED, EventType.STAGE_STARTED, EventType.VISION_STARTED)


@dataclass(frozen=True)
class FirstStage:
    """The stage a claimed job starts on, and the event that says so (None: the stage has none)."""

    name: str
    event: EventSpec | None


class Queue:
    def __init__(self, jobs: Jobs, clock: Clock, *, lease_seconds: float = 30.0) -> None:
        self.jobs = jobs
        self.db, self.notifier = jobs.db, jobs.notifier
        self.clock = clock
        self.lease_ms = int(lease_seconds * 1000)
        # just-claimed jobs whose first stage's start is still being written (PostgreSQL)
        self._starting: dict[str, tuple[asyncio.Task[set[str]], FirstStage]] = {}
        self._finishes: GroupCommit[Finish, Job] = GroupCommit(jobs.finish_many, shared=db_wide)

    def _now(self) -> int:
        return ms(self.clock.now())

    async def claim(
        self, worker_id: str, types: Collection[str] | None = None, limit: int = 1,
        first_stage: Callable[[Job], FirstStage | None] | None = None,
    ) -> list[Job]:
        """Lease up to ``limit`` runnable jobs (highest priority, oldest first) to ``worker_id``.

        ``first_stage`` names the stage each job starts on (and its start event), written with the
        claim (in its transaction on SQLite; on PostgreSQL by a second statement that runs while
        the stages start and that the job's next write waits for): a returned job's ``stage`` is
        set when its start is recorded, or will be before any later write of the job."""
        now = self._now()
        token = new_lease_token()
        params = q.claim_params(worker_id=worker_id, token=token, now=now, lease_until=now + self.lease_ms,
                                limit=limit, types=types)
        if self.db.is_postgres:
            async with self.db.kept("claim") as conn:
                if not await outbox.interested(conn, _CLAIM_EVENTS):
                    return await self._claim_pg(conn, worker_id, params, first_stage)
        async with unit(self.db, self.notifier) as u:
            stmt = q.claim_prepared(u.postgres, types is not None)
            rows = await u.conn.fetch(stmt, params)
            stages: list[dict[str, Any]] = []
            claimed: list[Job] = []
            for row in rows:
                job = Job.from_row(row)
                specs = [EventSpec(EventType.STARTED, data={"worker": worker_id})]
                first = first_stage(job) if first_stage is not None else None
                if first is not None:
                    row["stage"] = first.name
                    job = replace(job, stage=first.name)
                    stages.append({"s_id": row["id"], "s_token": token, "s_stage": first.name})
                    specs += [first.event] if first.event is not None else []
                u.add_events(row, specs, now)
                claimed.append(job)
            if stages:
                await u.conn.run(q.set_first_stage(), stages)
        return self._logged(claimed, worker_id)

    async def _claim_pg(
        self, conn: AsyncConnection, worker_id: str, params: dict[str, Any],
        first_stage: Callable[[Job], FirstStage | None] | None,
    ) -> list[Job]:
        """The claim in one autocommitted statement (the leases with their ``started`` events);
        the first stages with theirs are written by a second one that runs while those stages
        start, and every later write of each job waits for it (``_after_start``)."""
        stmt = q.claim_started_pg("c_types" in params)
        rows = await prepared.fetch_pg(conn, stmt, params | {"c_started": {"worker": worker_id}})
        claimed = [Job.from_row(r) for r in rows]
        plan = [(i, first) for i, job in enumerate(claimed)
                if first_stage is not None and (first := first_stage(job)) is not None
                and (first.event is None or first.event.type in _CLAIM_EVENTS)]
        if plan:
            stages = _stages([(claimed[i].id, first) for i, first in plan], params["c_token"], params["c_now"])
            writing = asyncio.get_running_loop().create_task(self._start_stages(worker_id, stages))
            for i, first in plan:
                claimed[i] = replace(claimed[i], stage=first.name)
                self._starting[claimed[i].id] = (writing, first)
            writing.add_done_callback(self._started)
        return self._logged(claimed, worker_id)

    async def warm(self, worker_id: str, types: Collection[str] | None = None) -> None:
        """Run a worker's hot statements once on no jobs: a claim of none, a first stages' write
        (PostgreSQL's own statement) and a completion of none. Its first job then finds them
        compiled and described and their connections open; on PostgreSQL that was ~40 ms of CPU
        and latency, paid again by every worker process started."""
        await self.claim(worker_id, types, limit=0)
        if self.db.is_postgres:
            await self._start_stages(worker_id, _stages([], "", self._now()))
        await self.jobs.warm()

    async def _start_stages(self, worker_id: str, stages: dict[str, Any]) -> set[str]:
        """The first stages' write; the ids it recorded (none when it failed: each job then
        records its own start before its next write)."""
        await asyncio.sleep(0)  # the stages first: the statement's own preparation is ~0.4 ms of CPU
        try:
            async with self.db.kept("start") as conn:
                return {r["id"] for r in await prepared.fetch_pg(conn, q.start_stages_pg(), stages)}
        except Exception as exc:
            log.warning("queue.first_stage_failed", worker=worker_id, error=str(exc))
            return set()

    def _started(self, writing: asyncio.Task[set[str]]) -> None:
        """The jobs whose start that write recorded owe nothing more: forget them now, not at a
        next write that a job whose lease is lost may never make."""
        if writing.cancelled():
            return
        for job_id in writing.result():
            if self._starting.get(job_id, (None,))[0] is writing:
                del self._starting[job_id]

    async def _after_start(self, job: Job) -> None:
        """Before any write of a just-claimed job: its first stage's start is in the log (the
        claim's write has landed, or this writes it), so no event of the job overtakes it."""
        pending = self._starting.pop(job.id, None)
        if pending is None:
            return
        writing, first = pending
        try:
            await asyncio.wait([writing])  # its end, whatever it was (a cancelled write recorded nothing)
            if not writing.cancelled() and job.id in writing.result():
                return
            await self.touch(job, values={"stage": first.name}, events=[first.event] if first.event else [])
        except LeaseLost:
            raise  # nothing of this attempt will be written any more
        except BaseException:
            self._starting[job.id] = pending  # cancelled or failed here: the job's next write tries again
            raise

    def _logged(self, claimed: list[Job], worker_id: str) -> list[Job]:
        for job in claimed:
            log.info("job.transition", job_id=job.id, project_id=job.project_id, request_id=job.request_id,
                     from_status="queued", to_status="running", worker=worker_id, attempt=job.attempt)
        return claimed

    async def heartbeat(self, worker_id: str, leases: Sequence[tuple[str, str]]) -> set[str]:
        """Extend the leases still held; returns the job ids whose lease was lost."""
        if not leases:
            return set()
        now = self._now()
        async with self.db.tx() as conn:
            stmt = q.heartbeat_batch(worker_id, leases, now + self.lease_ms, now)
            kept = {r[0] for r in (await conn.execute(stmt)).all()}
        return {job_id for job_id, _ in leases} - kept

    async def touch(
        self, job: Job, *, values: dict[str, Any] | None = None, events: Sequence[EventSpec] = ()
    ) -> Job:
        """A fenced non-transition write (stage, progress, provider reference) plus its events."""
        assert job.lease_token is not None
        await self._after_start(job)
        now = self._now()
        async with unit(self.db, self.notifier) as u:
            stmt = q.fenced_touch(job.id, job.lease_token, (values or {}) | {"updated_at": now})
            row = (await u.conn.execute(stmt)).mappings().first()
            if row is None:
                raise LeaseLost(job_id=job.id)
            u.add_events(row, events, now)
        return Job.from_row(row)

    async def complete(
        self, job: Job, *, result_key: str | None = None, result: dict[str, Any] | None = None,
        events: Sequence[EventSpec] = (),
    ) -> Job:
        """Finish a job the caller holds (cancelled instead when a cancel was requested); the
        completions of this process's jobs that end together are written in one commit."""
        await self._after_start(job)
        return await self._finishes.submit(
            Finish(job.id, job.lease_token, result_key, result, tuple(events), job=job)
        )

    async def complete_many(self, jobs: Sequence[Job]) -> list[Job]:
        """Finish a batch of no-output jobs the caller holds, in one commit, as ``complete`` would
        each (on PostgreSQL one statement for those whose completion owes no webhook delivery).
        A job with a cancel request ends cancelled; one whose lease is lost is left out (logged)."""
        held: list[Job] = []
        for job in jobs:
            try:
                await self._after_start(job)
                held.append(job)
            except LeaseLost as exc:
                log.warning("job.write_refused", job_id=job.id, reason=exc.code)
        answers = await self.jobs.finish_many([Finish(j.id, j.lease_token, job=j) for j in held])
        for job, answer in zip(held, answers, strict=True):
            if isinstance(answer, Exception):
                log.warning("job.write_refused", job_id=job.id, reason=answer.code)
        return [a for a in answers if isinstance(a, Job)]

    async def fail(self, job: Job, decision: Decision, message: str, events: Sequence[EventSpec] = ()) -> Job:
        """Requeue with backoff (a ``retry_scheduled`` event) or fail for good (refunded)."""
        await self._after_start(job)
        if decision.retry:
            run_after = self._now() + int(decision.delay * 1000)
            retry = EventSpec(EventType.RETRY_SCHEDULED, error_code=decision.error_code, error_msg=message,
                              data={"delay_ms": int(decision.delay * 1000), "next_attempt": job.attempt + 1})
            return await self.jobs.transition(
                job.id, Status.QUEUED, lease_token=job.lease_token, values={"run_after": run_after},
                events=[*events, retry], error_code=decision.error_code, error_message=message,
            )
        return await self.jobs.transition(
            job.id, Status.FAILED, lease_token=job.lease_token, events=events,
            error_code=decision.error_code, error_message=message,
        )

    async def release(self, job: Job, delay: float = 0.0) -> Job:
        """Hand a job back to the queue untouched (graceful shutdown): the attempt is not spent."""
        await self._after_start(job)
        return await self.jobs.transition(
            job.id, Status.QUEUED, lease_token=job.lease_token,
            values={"attempt": max(0, job.attempt - 1), "run_after": self._now() + int(delay * 1000)},
        )

    async def cancelled(self, job: Job, events: Sequence[EventSpec] = ()) -> Job:
        """The worker acknowledges a cancel request at a checkpoint."""
        await self._after_start(job)
        return await self.jobs.transition(
            job.id, Status.CANCELLED, lease_token=job.lease_token, events=events,
            error_code="cancelled", error_message=job.error_message or "Job cancelled by user request",
        )

    async def next_due_in(self) -> float | None:
        """Seconds until the earliest delayed job becomes runnable."""
        now = self._now()
        [row] = await self.db.fetch(q.next_run_after(), {"n_now": now})
        at = row["at"]
        return None if at is None else max(0.0, (int(at) - now) / 1000)


def _stages(starts: Sequence[tuple[str, FirstStage]], token: str, now: int) -> dict[str, Any]:
    """``start_stages_pg``'s parameters: each (job id, first stage), written under lease ``token``."""
    return {"s_ids": [job_id for job_id, _ in starts], "s_stages": [f.name for _, f in starts],
            "s_events": [f.event.type.value if f.event else None for _, f in starts],
            "s_token": token, "s_now": now}

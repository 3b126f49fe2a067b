"""The one writer of jobs: create (idempotency + charge), transition, cancel and admin retry.

Each public method is one transaction: lock the row, check the graph (lifecycle.check), a
conditional UPDATE that repeats the allowed sources, its events and any ledger row, committed
together. Two racing writers never both win; the loser gets the typed error.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from sqlalchemy.exc import IntegrityError

from genloom import credits, lifecycle
from genloom.clock import Clock, ms
from genloom.errors import (
    IdempotencyKeyReused,
    InsufficientCredits,
    InvalidInput,
    InvalidTransition,
    LeaseLost,
    NotFound,
)
from genloom.group_commit import GroupCommit
from genloom.ids import JobId, fingerprint, new_job_id
from genloom.lifecycle import EventType, Status
from genloom.models import EventSpec, Job, Project
from genloom.notify import Notifier
from genloom.observability import Metrics, get_logger
from genloom.store import prepared
from genloom.store import statements as q
from genloom.store.engine import Database, db_wide
from genloom.store.schema import jobs as jobs_table
from genloom.store.unit import Unit, unit
from genloom.webhooks import outbox

log = get_logger("genloom.jobs")
CANCEL_MESSAGE = "Job cancelled by user request"


class Catalog(Protocol):
    """What the jobs service needs to know about job types (the pipeline registry provides it)."""

    def validate(self, type_: str, mode: str | None, input: dict[str, Any]) -> None: ...

    def is_sync(self, type_: str) -> bool: ...

    def cost(self, type_: str, mode: str | None) -> int: ...


@dataclass(frozen=True)
class JobSpec:
    type: str
    input: dict[str, Any]
    mode: str | None = None
    user: str = ""
    idempotency_key: str | None = None
    priority: int = 0
    webhook_url: str | None = None
    max_attempts: int | None = None
    job_id: str | None = None  # content-addressed ids (Motioness assets)
    delay_seconds: float = 0.0

    def params(self) -> dict[str, Any]:
        """What an idempotent repeat must match."""
        return {"type": self.type, "mode": self.mode, "input": self.input, "priority": self.priority,
                "webhook_url": self.webhook_url}


@dataclass(frozen=True)
class Finish:
    """One completion for ``Jobs.finish_many``: the job, the lease that runs it, its output and
    the events to write before ``completed``."""

    job_id: str
    lease_token: str | None
    result_key: str | None = None
    result: dict[str, Any] | None = None
    events: tuple[EventSpec, ...] = ()
    #: The lease holder's current copy of the job (all its writes of the attempt included), when
    #: it has one: the completed job is then built from it, not read back (``_completed``).
    job: Job | None = None


def _finish_params(f: Finish, now: int) -> dict[str, Any]:
    """``finish_prepared``'s parameters for ``f``."""
    return {"f_id": f.job_id, "f_token": f.lease_token, "f_now": now, "f_result_key": f.result_key,
            "f_result": f.result}


def _completed(f: Finish, now: int) -> dict[str, Any]:
    """The row of a job its fenced completion matched, from the lease holder's copy of it: that
    copy with what completing sets. Nobody but the lease holder writes a running job whose lease
    is held and that has no cancel request (the completion's WHERE checks both), so this is the
    row, and reading it back is saved: on SQLite RETURNING cost more than the UPDATE itself
    (28 us a job against 12), on PostgreSQL it is 37 columns a job to send and decode."""
    assert f.job is not None
    return f.job.__dict__ | q.finished(now, f.result_key, f.result)


class Jobs:
    def __init__(
        self, db: Database, notifier: Notifier, clock: Clock, catalog: Catalog, *,
        max_attempts: int = 3, metrics: Metrics | None = None,
    ) -> None:
        self.db, self.notifier, self.clock, self.catalog = db, notifier, clock, catalog
        self.max_attempts = max_attempts
        self.metrics = metrics
        self._inserts: GroupCommit[dict[str, Any], None] = GroupCommit(self._insert_many, shared=db_wide)
        # a result as its column stores it (JSON text), for statements that take it inside JSON
        dialect = db.engine.dialect
        self._stored_result = cast(Callable[[Any], Any],
                                   jobs_table.c.result.type.dialect_impl(dialect).bind_processor(dialect))

    def _now(self) -> int:
        return ms(self.clock.now())

    # -- reads ---------------------------------------------------------------
    async def get(self, job_id: str, project_id: str | None = None) -> Job:
        async with self.db.read() as conn:
            row = (await conn.execute(q.select_job(job_id, project_id))).mappings().first()
        if row is None:
            raise NotFound("no such job", job_id=job_id)
        return Job.from_row(row)

    async def queue_position(self, job: Job) -> int | None:
        if job.status not in (Status.QUEUED, Status.PENDING):
            return None
        async with self.db.read() as conn:
            n = (await conn.execute(q.queue_position(job.__dict__))).scalar_one()
        return int(n)

    async def list(
        self, project_id: str, *, status: str | None = None, type_: str | None = None,
        user: str | None = None, before: tuple[int, str] | None = None, limit: int = 50,
    ) -> list[Job]:
        async with self.db.read() as conn:
            stmt = q.list_jobs(project_id, status=status, type_=type_, user=user, before=before, limit=limit)
            rows = (await conn.execute(stmt)).mappings().all()
        return [Job.from_row(r) for r in rows]

    # -- create --------------------------------------------------------------
    async def create(self, project: Project, spec: JobSpec, request_id: str | None = None) -> tuple[Job, bool]:
        """Create a job and charge for it, or return the existing one for a repeated key or id.
        Returns (job, created)."""
        self.catalog.validate(spec.type, spec.mode, spec.input)
        params_hash = fingerprint(spec.params())
        for _ in range(3):
            try:
                return await self._create(project, spec, params_hash, request_id)
            except IntegrityError:
                continue  # a concurrent duplicate won; the next pass finds and returns it
        raise InvalidInput("could not create the job: concurrent duplicates kept colliding")

    async def _existing(self, u: Unit, project: Project, spec: JobSpec, params_hash: str) -> Job | None:
        if spec.job_id:
            found = await u.conn.fetch(q.job_in_project(), {"j_id": spec.job_id, "j_project": project.id})
        elif spec.idempotency_key:
            found = await u.conn.fetch(q.select_by_idempotency(), {
                "k_project": project.id, "k_user": spec.user, "k_key": spec.idempotency_key})
        else:
            return None
        if not found:
            return None
        row = found[0]
        if row["params_hash"] != params_hash:
            raise IdempotencyKeyReused(
                "this idempotency key was already used with different parameters", job_id=row["id"]
            )
        return Job.from_row(row)

    async def _create(
        self, project: Project, spec: JobSpec, params_hash: str, request_id: str | None
    ) -> tuple[Job, bool]:
        now = self._now()
        sync = self.catalog.is_sync(spec.type)
        cost = self.catalog.cost(spec.type, spec.mode)
        job_id = JobId(spec.job_id or new_job_id())
        billed = project.billing_enabled and cost > 0
        values = self._row(job_id, project, spec, params_hash, request_id, now, sync, cost, billed)
        keyless = not (spec.job_id or spec.idempotency_key)  # nothing to look up, no duplicate to wait on
        if keyless and not self.db.is_postgres:
            await self._inserts.submit(values)  # one commit with the creates that arrive alongside
            return self._created(values, project, request_id, sync)
        if keyless and not sync:
            # PostgreSQL: one statement, charge included, on a kept connection: concurrent creates
            # (an API's requests) each get one, up to ``kept_width``.
            async with self.db.kept("create", width=self.db.kept_width) as conn:
                if not await outbox.interested(conn, (EventType.QUEUED,)):
                    params = {f"j_{k}": v for k, v in values.items()}
                    if not await prepared.fetch_pg(conn, q.create_pg(tuple(values), billed), params):
                        raise credits.insufficient(cost)
                    return self._created(values, project, request_id, sync)
        async with unit(self.db, self.notifier) as u:
            existing = await self._existing(u, project, spec, params_hash)
            if existing is not None:
                return existing, False
            # The row goes in before the charge: a concurrent duplicate then waits on its unique
            # key (and finds this job) instead of being refused by a balance this job has spent.
            await u.conn.run(q.insert_job(), values)
            if billed:
                await credits.charge(u, project_id=project.id, user_id=spec.user, job_id=job_id,
                                     round_=0, amount=cost, now=now)
            u.jobs_ready = True
            if not sync:
                u.add_events(values, [EventSpec(EventType.QUEUED)], now, request_id)
        return self._created(values, project, request_id, sync)

    async def _insert_many(self, rows: Sequence[dict[str, Any]]) -> Sequence[InsufficientCredits | None]:
        """SQLite: key-less creates in one transaction: their charges (a refusal writes nothing and
        is that create's answer), then the accepted rows in one insert, then their events."""
        async with unit(self.db, self.notifier) as u:
            billed = [row for row in rows if row["charged"]]
            took: dict[str, bool] = {}  # billed job id -> charged; unbilled jobs always go in
            if billed:
                charges = [credits.Charge(row["project_id"], row["user_id"], row["id"], row["cost"], row["created_at"])
                           for row in billed]
                took = dict(zip((row["id"] for row in billed), await credits.charge_many(u, charges), strict=True))
            accepted = [row for row in rows if took.get(row["id"], True)]
            if accepted:
                await u.conn.run(q.insert_job(), accepted)
                u.jobs_ready = True
                for row in accepted:
                    if row["status"] == Status.QUEUED.value:
                        u.add_events(row, [EventSpec(EventType.QUEUED)], row["created_at"], row["request_id"])
        return [None if took.get(row["id"], True) else credits.insufficient(row["cost"]) for row in rows]

    def _row(
        self, job_id: JobId, project: Project, spec: JobSpec, params_hash: str, request_id: str | None,
        now: int, sync: bool, cost: int, billed: bool,
    ) -> dict[str, Any]:
        return {
            "id": job_id, "project_id": project.id, "user_id": spec.user, "type": spec.type,
            "mode": spec.mode, "input": spec.input, "params_hash": params_hash,
            "status": (Status.PENDING if sync else Status.QUEUED).value, "attempt": 0,
            "max_attempts": spec.max_attempts or self.max_attempts, "round": 0,
            "priority": spec.priority, "idempotency_key": spec.idempotency_key, "cost": cost,
            "charged": billed, "run_after": now + int(spec.delay_seconds * 1000),
            "webhook_url": spec.webhook_url, "request_id": request_id, "created_at": now,
            "queued_at": None if sync else now, "updated_at": now, "progress": 0.0,
        }

    def _created(
        self, values: dict[str, Any], project: Project, request_id: str | None, sync: bool
    ) -> tuple[Job, bool]:
        job = Job.from_row(values | _NULLS | values)
        log.info("job.created", job_id=job.id, project_id=project.id, request_id=request_id,
                 type=job.type, cost=job.cost, charged=job.charged)
        if not sync:
            self._logged(job, Status.PENDING, Status.QUEUED, request_id)
        return job, True

    # -- transitions ---------------------------------------------------------
    async def transition(
        self, job_id: str, to: Status, *, lease_token: str | None = None, project_id: str | None = None,
        values: dict[str, Any] | None = None, events: Sequence[EventSpec] = (),
        error_code: str | None = None, error_message: str | None = None,
        request_id: str | None = None, lease_expired_before: int | None = None,
    ) -> Job:
        """Move one job to ``to`` (fenced by ``lease_token`` when a worker asks)."""
        async with unit(self.db, self.notifier) as u:
            row = await self.lock(u, job_id, project_id)
            if lease_expired_before is not None and not (
                row["status"] == Status.RUNNING and row["lease_expires_at"] is not None
                and row["lease_expires_at"] < lease_expired_before
            ):
                raise InvalidTransition("the job's lease is current", job_id=job_id)
            new = await self.apply(u, row, to, lease_token=lease_token, values=values, events=events,
                                   error_code=error_code, error_message=error_message,
                                   request_id=request_id)
        return new

    async def by_provider_ref(self, provider: str, ref: str) -> Job | None:
        """The job waiting on a provider's prediction (a callback that names only the prediction)."""
        async with self.db.read() as conn:
            row = (await conn.execute(q.select_by_provider_ref(provider, ref))).mappings().first()
        return Job.from_row(row) if row is not None else None

    async def finish(
        self, job_id: str, *, lease_token: str | None, result_key: str | None = None,
        result: dict[str, Any] | None = None, events: Sequence[EventSpec] = (), provider_ref: str | None = None,
    ) -> Job:
        """Complete a running job, unless a cancel was requested meanwhile: then the result is
        discarded and the job ends cancelled. ``provider_ref`` (a callback, no lease) must match."""
        finish = Finish(job_id, lease_token, result_key, result, tuple(events))
        if lease_token is not None and provider_ref is None:
            done = (await self.finish_many([finish]))[0]
            if isinstance(done, Exception):
                raise done
            return done
        async with unit(self.db, self.notifier) as u:
            return await self._finish_in(u, finish, provider_ref)

    async def finish_many(self, finishes: Sequence[Finish]) -> Sequence[Job | InvalidTransition | NotFound]:
        """Workers' completions of many jobs in one commit (on PostgreSQL one statement for the
        jobs that owe no webhook delivery, then one transaction for the rest; on SQLite one
        transaction, the held jobs' completions one statement). Each answer is the
        job as written (cancelled when a cancel was requested meanwhile) or the error that
        refused it (a lost lease): one job's refusal never holds back the others."""
        out: dict[int, Job | InvalidTransition | NotFound] = {}
        if self.db.is_postgres and finishes:
            out |= await self._finish_quiet(finishes)
        rest = sorted((i for i in range(len(finishes)) if i not in out), key=lambda i: finishes[i].job_id)
        if rest:  # row locks taken in id order: two batches never wait on each other in a cycle
            now = self._now()
            async with unit(self.db, self.notifier) as u:
                batched = await self._finish_batch(u, [finishes[i] for i in rest], now)
                for i in rest:
                    f = finishes[i]
                    if batched is None:
                        row = await self._finish_one(u, f, now)
                    else:
                        row = _completed(f, now) if f.job_id in batched else None
                    if row is not None:  # the common case: one prepared statement (or the batch's)
                        out[i] = job = Job.from_row(row)
                        u.add_events(row, [*f.events, EventSpec(EventType.COMPLETED)], now)
                        u.after_commit.append(functools.partial(
                            self._logged, job, Status.RUNNING, Status.COMPLETED, None))
                        continue
                    try:  # a cancel request, a lost lease: the checked path says which
                        out[i] = await self._finish_in(u, f)
                    except (InvalidTransition, NotFound) as exc:  # raised before it wrote anything
                        out[i] = exc
        return [out[i] for i in range(len(finishes))]

    async def warm(self) -> None:
        """Run the statements that complete a worker's held jobs once, on no job: a new worker's
        first completion then finds them compiled and described and their connection open."""
        if self.db.is_postgres:
            await self._finish_quiet([])
        now = self._now()
        async with unit(self.db, self.notifier) as u:  # one job, or one owed a webhook (PostgreSQL)
            await u.conn.run(q.finish_prepared(returning=False), _finish_params(Finish("", None), now))
            if not u.postgres and q.sqlite_has_json():
                await u.conn.fetch(q.finish_batch_sqlite(), {"f_batch": "[]", "f_now": now})

    async def _finish_batch(self, u: Unit, finishes: Sequence[Finish], now: int) -> set[str] | None:
        """SQLite: complete many held jobs with one fenced UPDATE; the ids it completed (the
        rest matched nothing: a cancel request or a lost lease), or None when these are not
        for one statement (PostgreSQL's rest, one job, a job not held or named twice, a result
        key with a control character, an SQLite without its JSON functions)."""
        if (u.postgres or len(finishes) < 2 or not q.sqlite_has_json()
                or any(f.job is None or not (f.result_key is None or f.result_key.isprintable()) for f in finishes)
                or len({f.job_id for f in finishes}) < len(finishes)):
            return None  # json_extract ends a text at a NUL, and stores a lone surrogate as is
        stored = self._stored_result
        batch = json.dumps([[f.job_id, f.lease_token, f.result_key, stored(f.result)] for f in finishes])
        return {r["id"] for r in await u.conn.fetch(q.finish_batch_sqlite(), {"f_batch": batch, "f_now": now})}

    async def _finish_one(self, u: Unit, f: Finish, now: int) -> dict[str, Any] | None:
        """Complete one job with its fenced UPDATE; the completed row, or None when the UPDATE
        matched nothing (a cancel request or a lost lease: the caller's checked path says which).
        Given the lease holder's copy of the job the row is not read back (see ``_completed``)."""
        params = _finish_params(f, now)
        if f.job is None:
            found = await u.conn.fetch(q.finish_prepared(), params)
            return found[0] if found else None
        if await u.conn.run(q.finish_prepared(returning=False), params) != 1:
            return None
        return _completed(f, now)

    async def _finish_in(self, u: Unit, f: Finish, provider_ref: str | None = None) -> Job:
        row = await self.lock(u, f.job_id)
        if provider_ref is not None and (row["provider_ref"] != provider_ref or row["lease_token"]):
            raise InvalidTransition("the job is no longer waiting on this prediction", job_id=f.job_id)
        if row["cancel_requested"] and row["status"] == Status.RUNNING:
            return await self.apply(u, row, Status.CANCELLED, lease_token=f.lease_token,
                                    error_code="cancelled", error_message=row["error_message"] or CANCEL_MESSAGE)
        return await self.apply(u, row, Status.COMPLETED, lease_token=f.lease_token, events=f.events,
                                values={"result_key": f.result_key, "result": f.result} | _COMPLETED)

    async def _finish_quiet(self, finishes: Sequence[Finish]) -> dict[int, Job]:
        """PostgreSQL: the completions ``finish_quiet_pg`` can write in one statement, by index;
        the others (a cancel request, a webhook owed, a lost lease) are left out."""
        if len({f.job_id for f in finishes}) < len(finishes):
            return {}  # one job twice: the transaction completes the first and refuses the second
        specs = [(f.job_id, e) for f in finishes for e in (*f.events, EventSpec(EventType.COMPLETED))]
        now = self._now()
        params = {
            "f_ids": [f.job_id for f in finishes], "f_tokens": [f.lease_token for f in finishes],
            "f_result_keys": [f.result_key for f in finishes],
            "f_results": [None if f.result is None else json.dumps(f.result) for f in finishes],
            "f_now": now,
            "e_ids": [j for j, _ in specs], "e_types": [e.type.value for _, e in specs],
            "e_stages": [e.stage for _, e in specs], "e_latency": [e.latency_ms for _, e in specs],
            "e_codes": [e.error_code for _, e in specs], "e_msgs": [e.error_msg for _, e in specs],
            "e_data": [json.dumps(e.data) for _, e in specs]}
        held = all(f.job is not None for f in finishes)  # then the statement returns only ids
        async with self.db.kept("finish") as conn:
            if await outbox.interested(conn, {e.type for _, e in specs}):
                return {}
            rows = await prepared.fetch_pg(conn, q.finish_quiet_pg(rows=not held), params)
            if held:
                ids = {r["id"] for r in rows}
                done = {f.job_id: Job.from_row(_completed(f, now)) for f in finishes if f.job_id in ids}
            else:
                done = {str(r["id"]): Job.from_row(r) for r in rows}
        for job in done.values():
            self._logged(job, Status.RUNNING, Status.COMPLETED, None)
        return {i: done[f.job_id] for i, f in enumerate(finishes) if f.job_id in done}

    async def lock(self, u: Unit, job_id: str, project_id: str | None = None) -> dict[str, Any]:
        found = await u.conn.fetch(q.lock_job(u.postgres), {"l_id": job_id})
        if not found or (project_id is not None and found[0]["project_id"] != project_id):
            raise NotFound("no such job", job_id=job_id)
        return found[0]

    async def apply(
        self, u: Unit, row: dict[str, Any], to: Status, *, lease_token: str | None = None,
        values: dict[str, Any] | None = None, events: Sequence[EventSpec] = (),
        error_code: str | None = None, error_message: str | None = None, request_id: str | None = None,
    ) -> Job:
        """The transition inside an open unit whose row is already locked."""
        now = self._now()
        current = Status(row["status"])
        if lease_token is not None and row["lease_token"] != lease_token:
            log.warning("job.transition_denied", job_id=row["id"], project_id=row["project_id"],
                        from_status=current.value, to_status=to.value, reason="lease_lost",
                        request_id=request_id)
            raise LeaseLost(job_id=row["id"])
        _check(row, to, request_id)
        sets = _entering(to, now) | (values or {}) | {"status": to.value, "updated_at": now}
        if error_code is not None or error_message is not None:
            sets |= {"error_code": error_code, "error_message": error_message}
        refunding = to in lifecycle.REFUNDED and row["charged"]
        if refunding:
            sets["charged"] = False
        res = await u.conn.execute(q.guarded_transition(row["id"], lifecycle.sources(to), sets, lease_token))
        new = res.mappings().first()
        if new is None:  # unreachable while we hold the row; kept as the write's own guard
            raise InvalidTransition(f"cannot move a {current.value} job to {to.value}")
        if refunding:
            await credits.refund(u, dict(new) | {"cost": row["cost"]}, now, note=to.value)
        status_event = lifecycle.STATUS_EVENT[to]
        specs = list(events)
        if status_event is not None:
            specs.append(EventSpec(status_event, error_code=error_code if to == Status.FAILED else None,
                                   error_msg=error_message if to == Status.FAILED else None,
                                   data={"refunded": row["cost"]} if refunding else {}))
        u.add_events(new, specs, now, request_id)
        if to in (Status.QUEUED, Status.PENDING):
            u.jobs_ready = True
        job = Job.from_row(new)
        u.after_commit.append(lambda: self._logged(job, current, to, request_id))
        return job

    def _logged(self, job: Job, frm: Status, to: Status, request_id: str | None) -> None:
        log.info("job.transition", job_id=job.id, project_id=job.project_id, request_id=request_id,
                 from_status=frm.value, to_status=to.value)
        if to == Status.COMPLETED:
            log.info("job.completed", job_id=job.id, project_id=job.project_id, request_id=request_id,
                     result_key=job.result_key)
        elif to == Status.FAILED:
            log.info("job.failed", job_id=job.id, project_id=job.project_id, request_id=request_id,
                     error_code=job.error_code, error_message=job.error_message)
        if self.metrics is not None:
            self.metrics.transitioned(job.type, to.value)

    # -- cancel and retry ----------------------------------------------------
    async def cancel(
        self, job_id: str, project_id: str | None = None, request_id: str | None = None,
        reason: str = CANCEL_MESSAGE,
    ) -> Job:
        """Pending, queued and parked jobs are cancelled at once; a running job is flagged and its
        worker stops at the next checkpoint. A terminal job is an InvalidTransition."""
        async with unit(self.db, self.notifier) as u:
            row = await self.lock(u, job_id, project_id)
            status = Status(row["status"])
            held = status == Status.RUNNING and row["lease_token"] is not None
            if status in (Status.PENDING, Status.QUEUED) or (status == Status.RUNNING and not held):
                return await self.apply(u, row, Status.CANCELLED, values={"cancel_requested": True},
                                        error_code="cancelled", error_message=reason,
                                        request_id=request_id)
            if not held:
                _check(row, Status.CANCELLED, request_id)  # raises and logs for terminal states
            if row["cancel_requested"]:
                return Job.from_row(row)
            now = self._now()
            new = (await u.conn.execute(q.guarded_transition(
                job_id, [Status.RUNNING.value], {"cancel_requested": True, "error_message": reason,
                                                 "updated_at": now}))).mappings().one()
            u.add_events(new, [EventSpec(EventType.CANCEL_REQUESTED)], now, request_id)
            return Job.from_row(new)

    async def admin_retry(self, job_id: str, request_id: str | None = None) -> Job:
        """failed|expired -> pending (a new billing round, charged again) -> queued."""
        async with unit(self.db, self.notifier) as u:
            row = await self.lock(u, job_id)
            prow = (await u.conn.execute(q.select_project(row["project_id"]))).mappings().one()
            project = Project.from_row(prow)
            now = self._now()
            new_round = row["round"] + 1
            charged = False
            if Status(row["status"]) in (Status.FAILED, Status.EXPIRED) and project.billing_enabled \
                    and row["cost"] > 0:
                await credits.charge(u, project_id=row["project_id"], user_id=row["user_id"], job_id=job_id,
                                     round_=new_round, amount=row["cost"], now=now)
                charged = True
            job = await self.apply(u, row, Status.PENDING, request_id=request_id, values={
                "round": new_round, "attempt": 0, "charged": charged, "cancel_requested": False,
                "error_code": None, "error_message": None, "result_key": None, "result": None,
                "completed_at": None, "started_at": None, "provider": None, "provider_ref": None,
                "provider_since": None, "deadline": None, "progress": 0.0, "stage": None,
                "run_after": now,
            })
            if not self.catalog.is_sync(job.type):
                job = await self.apply(u, dict(job.__dict__), Status.QUEUED, request_id=request_id)
        return job


#: What a completion sets besides the result, however it is written.
_COMPLETED: dict[str, Any] = {"progress": 1.0, "error_code": None, "error_message": None}


def _entering(to: Status, now: int) -> dict[str, Any]:
    """Columns every entry into ``to`` sets, whatever the caller adds."""
    release = {"lease_owner": None, "lease_token": None, "lease_expires_at": None}
    if to == Status.QUEUED:
        return release | {"queued_at": now, "run_after": now, "stage": None}
    if to in lifecycle.TERMINAL:
        return release | {"completed_at": now, "stage": None}
    if to == Status.RUNNING:
        return {"started_at": now}
    return release


_NULLS: dict[str, Any] = {
    k: None for k in (
        "stage", "result_key", "result", "error_code", "error_message", "lease_owner", "lease_token",
        "lease_expires_at", "provider", "provider_ref", "provider_since", "deadline", "started_at",
        "completed_at", "cancel_requested",
    )
} | {"cancel_requested": False}


def _check(row: dict[str, Any], to: Status, request_id: str | None) -> None:
    """The lifecycle's verdict on this row, with the denial logged where it happens."""
    current = Status(row["status"])
    try:
        lifecycle.check(current, to)
    except InvalidTransition:
        log.warning("job.transition_denied", job_id=row["id"], project_id=row["project_id"],
                    from_status=current.value, to_status=to.value, request_id=request_id)
        raise

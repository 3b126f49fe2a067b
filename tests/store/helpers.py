"""Helpers for store tests: projects with credits, raw rows as the database holds them, jobs
driven into a given state, and worker processes run as real OS processes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select

from genloom.clock import ms
from genloom.ids import fingerprint, new_job_id
from genloom.jobs import JobSpec
from genloom.lifecycle import EventType, Status
from genloom.models import EventSpec, Job, Project
from genloom.retry import Decision
from genloom.runtime import Core
from genloom.store.schema import credit_ledger, job_events, jobs
from genloom.store.unit import unit

ROOT = Path(__file__).resolve().parents[2]


async def make_project(core: Core, *, billing: bool = True, credits: int = 0, user: str = "") -> Project:
    project = (await core.projects.create("test", billing=billing)).project
    if credits:
        await core.credits.grant(project.id, user, credits)
    return project


async def job_row(core: Core, job_id: str) -> dict[str, Any]:
    async with core.db.read() as conn:
        return dict((await conn.execute(select(jobs).where(jobs.c.id == job_id))).mappings().one())


async def all_job_rows(core: Core) -> list[dict[str, Any]]:
    async with core.db.read() as conn:
        return [dict(r) for r in (await conn.execute(select(jobs).order_by(jobs.c.id))).mappings()]


async def event_rows(core: Core, job_id: str | None = None) -> list[dict[str, Any]]:
    stmt = select(job_events).order_by(job_events.c.id)
    if job_id is not None:
        stmt = stmt.where(job_events.c.job_id == job_id)
    async with core.db.read() as conn:
        return [dict(r) for r in (await conn.execute(stmt)).mappings()]


async def ledger_rows(core: Core, job_id: str | None = None) -> list[dict[str, Any]]:
    stmt = select(credit_ledger).order_by(credit_ledger.c.id)
    if job_id is not None:
        stmt = stmt.where(credit_ledger.c.job_id == job_id)
    async with core.db.read() as conn:
        return [dict(r) for r in (await conn.execute(stmt)).mappings()]


async def count_jobs(core: Core) -> int:
    async with core.db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(jobs))).scalar_one())


async def claim_exactly(core: Core, job_id: str, worker: str = "w_test") -> Job:
    """Claim the one runnable job, which must be ``job_id``."""
    claimed = await core.queue.claim(worker, limit=2)
    assert [j.id for j in claimed] == [job_id]
    return claimed[0]


async def in_state(core: Core, project: Project, status: Status, *, user: str = "", **spec: Any) -> Job:
    """A fresh job in ``status``, got there the way it happens in practice. Jobs that pass through
    running are claimed, so no other runnable job may be waiting when this is called."""
    if status == Status.PENDING:
        job, _ = await core.jobs.create(project, JobSpec(type="sync", input={}, user=user, **spec))
        return job
    job, _ = await core.jobs.create(project, JobSpec(type="noop", input={}, user=user, **spec))
    if status == Status.QUEUED:
        return job
    if status == Status.CANCELLED:
        return await core.jobs.cancel(job.id)
    if status == Status.FAILED:
        return await core.jobs.transition(job.id, Status.FAILED, error_code="boom", error_message="boom")
    running = await claim_exactly(core, job.id)
    if status == Status.RUNNING:
        return running
    if status == Status.COMPLETED:
        return await core.queue.complete(running, result_key="k")
    assert status == Status.EXPIRED
    return await core.jobs.transition(job.id, Status.EXPIRED, lease_token=running.lease_token)


async def seed_queue(core: Core, project: Project, n: int) -> set[str]:
    """``n`` queued, unbilled noop jobs with their ``queued`` events, in one transaction: the rows
    Jobs.create writes, a thousand at a time (creating them one by one dominates a claim test)."""
    now = ms(core.clock.now())
    rows = []
    for i in range(n):
        spec = JobSpec(type="noop", input={"i": i})
        rows.append({
            "id": new_job_id(), "project_id": project.id, "user_id": "", "type": spec.type, "mode": None,
            "input": spec.input, "params_hash": fingerprint(spec.params()), "status": Status.QUEUED.value,
            "attempt": 0, "max_attempts": 3, "round": 0, "priority": 0, "idempotency_key": None, "cost": 1,
            "charged": False, "run_after": now, "webhook_url": None, "request_id": None, "created_at": now,
            "queued_at": now, "updated_at": now, "progress": 0.0,
        })
    async with unit(core.db, core.notifier) as u:
        await u.conn.execute(insert(jobs), rows)
        for row in rows:
            u.add_events(row, [EventSpec(EventType.QUEUED)], now)
        u.jobs_ready = True
    return {r["id"] for r in rows}


def permanent(code: str = "boom") -> Decision:
    return Decision(False, 0.0, code)


async def run_procs(argvs: Sequence[Sequence[str]], within: float = 60.0) -> list[dict[str, Any]]:
    """Run ``python -m tests.store.procs <argv>`` once per argv, release them together once all
    are ready, and return each one's JSON result."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENLOOM_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.store.procs", *argv, cwd=ROOT, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        for argv in argvs
    ]
    try:
        async with asyncio.timeout(within):
            for p in procs:
                assert p.stdout is not None
                line = await p.stdout.readline()
                if line.strip() != b"ready":
                    _, err = await p.communicate()
                    raise AssertionError(f"worker process did not start: {line!r} {err.decode()[-3000:]}")
            for p in procs:
                assert p.stdin is not None
                p.stdin.write(b"go\n")
                await p.stdin.drain()
            outs = await asyncio.gather(*(p.communicate() for p in procs))
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    results = []
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()[-3000:]
        lines = [ln for ln in out.decode().splitlines() if ln.startswith("RESULT ")]
        assert lines, err.decode()[-3000:]
        results.append(json.loads(lines[-1][len("RESULT "):]))
    return results

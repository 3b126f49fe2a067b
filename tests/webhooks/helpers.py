"""Helpers for webhook tests: waiting on the database, reading the outbox, finishing jobs."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from genloom.jobs import JobSpec
from genloom.models import Job, Project
from genloom.runtime import Core
from genloom.store.schema import webhook_attempts, webhook_deliveries
from tests.support import eventually as until


async def delivery_rows(core: Core, **where: Any) -> list[dict[str, Any]]:
    stmt = select(webhook_deliveries).order_by(webhook_deliveries.c.created_at, webhook_deliveries.c.id)
    for k, v in where.items():
        stmt = stmt.where(webhook_deliveries.c[k] == v)
    async with core.db.read() as conn:
        return [dict(r) for r in (await conn.execute(stmt)).mappings()]


async def attempt_rows(core: Core, delivery_id: str) -> list[dict[str, Any]]:
    stmt = select(webhook_attempts).where(webhook_attempts.c.delivery_id == delivery_id).order_by(
        webhook_attempts.c.id)
    async with core.db.read() as conn:
        return [dict(r) for r in (await conn.execute(stmt)).mappings()]


async def settled(core: Core, n: int, status: str = "delivered", within: float = 10.0) -> list[dict[str, Any]]:
    """Wait until ``n`` deliveries have ``status``; all delivery rows."""

    async def check() -> list[dict[str, Any]] | None:
        rows = await delivery_rows(core)
        return rows if sum(r["status"] == status for r in rows) >= n else None

    result: list[dict[str, Any]] = await until(check, within)
    return result


async def completed_jobs(core: Core, project: Project, n: int = 1, **spec: Any) -> list[Job]:
    """``n`` jobs taken through create -> claim -> the batch completion path."""
    for i in range(n):
        await core.jobs.create(project, JobSpec(type="noop", input={"i": i}, **spec))
    claimed = await core.queue.claim("w_test", limit=n)
    assert len(claimed) == n
    return await core.queue.complete_many(claimed)


async def completed_job(core: Core, project: Project, **spec: Any) -> Job:
    return (await completed_jobs(core, project, 1, **spec))[0]

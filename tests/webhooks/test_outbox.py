"""The outbox: deliveries written in the event's own transaction, for matching enabled endpoints
and the job's webhook_url, on every write path; nothing (and no query) when nothing listens."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest
from sqlalchemy import func, select

from genloom.jobs import JobSpec
from genloom.lifecycle import EventType, Status
from genloom.models import EventSpec
from genloom.queue import FirstStage
from genloom.store.schema import webhook_deliveries
from genloom.store.unit import unit
from genloom.webhooks import outbox
from genloom.webhooks.endpoints import Endpoints
from tests.store.helpers import claim_exactly, in_state, job_row, make_project
from tests.webhooks.helpers import completed_jobs, delivery_rows

pytestmark = pytest.mark.anyio
HOOK = "http://127.0.0.1:9/hook"


async def test_an_event_write_that_rolls_back_leaves_no_delivery(core: Any, endpoints: Endpoints) -> None:
    project = await make_project(core, billing=False)
    await endpoints.create(project.id, HOOK)
    job, _ = await core.jobs.create(project, JobSpec(type="noop", input={}, webhook_url=HOOK + "/job"))
    running = await claim_exactly(core, job.id)
    with pytest.raises(RuntimeError, match="after the flush"):
        async with unit(core.db, core.notifier) as u:
            row = await core.jobs.lock(u, job.id)
            await core.jobs.apply(u, row, Status.COMPLETED, lease_token=running.lease_token)
            await u.flush()
            inside = (await u.conn.execute(select(func.count()).select_from(webhook_deliveries))).scalar_one()
            assert inside == 2  # the endpoint's and the job's own, in this very transaction
            raise RuntimeError("after the flush")
    assert await delivery_rows(core) == []
    assert (await job_row(core, job.id))["status"] == Status.RUNNING
    await core.queue.complete(running)
    rows = await delivery_rows(core)
    assert sorted((r["endpoint_id"] is None, r["event_type"], r["job_id"]) for r in rows) == [
        (False, "job.completed", job.id), (True, "job.completed", job.id)]


async def test_every_terminal_path_writes_deliveries(core: Any, endpoints: Endpoints) -> None:
    project = await make_project(core, billing=False)
    ep = (await endpoints.create(project.id, HOOK)).endpoint
    batch = await completed_jobs(core, project, 3)  # Queue.complete_many's one-statement path
    failed = await in_state(core, project, Status.FAILED)
    cancelled = await in_state(core, project, Status.CANCELLED)
    expired = await in_state(core, project, Status.EXPIRED)
    single = await in_state(core, project, Status.COMPLETED)  # Jobs.finish
    rows = await delivery_rows(core)
    assert all(r["endpoint_id"] == ep.id and r["status"] == "pending" for r in rows)
    got = {(r["job_id"], r["event_type"]) for r in rows}
    assert got == {(j.id, "job.completed") for j in [*batch, single]} | {
        (failed.id, "job.failed"), (cancelled.id, "job.cancelled"), (expired.id, "job.expired")}
    body = next(r["payload"] for r in rows if r["job_id"] == failed.id)
    assert body["type"] == "job.failed" and body["data"]["status"] == "failed"
    assert body["data"]["error_code"] == "boom" and body["data"]["result_url"] is None
    done = next(r["payload"] for r in rows if r["job_id"] == single.id)
    assert done["data"]["result_url"] == f"/v1/jobs/{single.id}/result" and done["data"]["error_code"] is None
    assert done["timestamp"].endswith("Z") and done["data"]["type"] == "noop"


async def test_filters_decide_who_gets_what(core: Any, endpoints: Endpoints) -> None:
    project = await make_project(core, billing=False)
    other = await make_project(core, billing=False)
    terminal = (await endpoints.create(project.id, HOOK + "/all")).endpoint
    failures = (await endpoints.create(project.id, HOOK + "/fail", events=["job.failed"])).endpoint
    starts = (await endpoints.create(project.id, HOOK + "/start", events=["job.started", "job.completed"])).endpoint
    await endpoints.create(project.id, HOOK + "/off", enabled=False)
    elsewhere = (await endpoints.create(other.id, HOOK + "/other")).endpoint
    done = (await completed_jobs(core, project, 1))[0]
    failed = await in_state(core, project, Status.FAILED)
    rows = await delivery_rows(core)
    got = sorted((r["endpoint_id"], r["job_id"], r["event_type"]) for r in rows)
    assert got == sorted([
        (terminal.id, done.id, "job.completed"), (starts.id, done.id, "job.started"),
        (starts.id, done.id, "job.completed"), (terminal.id, failed.id, "job.failed"),
        (failures.id, failed.id, "job.failed"),
    ])
    assert elsewhere.id not in {r["endpoint_id"] for r in rows}


async def test_a_job_url_gets_terminal_events_only(core: Any) -> None:
    project = await make_project(core, billing=False)
    job = (await completed_jobs(core, project, 1, webhook_url=HOOK + "?job=1"))[0]
    [row] = await delivery_rows(core)
    assert (row["endpoint_id"], row["url"], row["job_id"], row["event_type"]) == (
        None, HOOK + "?job=1", job.id, "job.completed")


@asynccontextmanager
async def traced(core: Any, seen: Callable[[str], None]) -> AsyncIterator[None]:
    """Every statement this process sends while inside, at the driver: on SQLite those on the write
    connection, SQLAlchemy's and the prepared ones it runs on sqlite3 directly; on PostgreSQL every
    one a psycopg cursor executes, SQLAlchemy's and the prepared ones run on psycopg directly."""
    if not core.db.is_postgres:
        async with core.db.engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection.raw
        raw.set_trace_callback(seen)
        try:
            yield
        finally:
            raw.set_trace_callback(None)
        return

    original = psycopg.AsyncCursor.execute

    async def execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        seen(query if isinstance(query, str) else query.as_string(self))
        return await original(self, query, *args, **kwargs)

    psycopg.AsyncCursor.execute = execute  # type: ignore[method-assign]
    try:
        yield
    finally:
        psycopg.AsyncCursor.execute = original  # type: ignore[method-assign]


async def test_no_listener_means_no_query(core: Any, endpoints: Endpoints) -> None:
    """Non-terminal events of a project without extra subscriptions touch no webhook table (once
    the interest summary is loaded); a terminal event costs one endpoint lookup and no insert
    (on PostgreSQL, inside the completion's own statement)."""
    project = await make_project(core, billing=False)
    listening = await make_project(core, billing=False)
    await endpoints.create(listening.id, HOOK, events=["job.started"])  # other projects' interest
    await completed_jobs(core, project, 1)  # warms the summary
    seen: list[str] = []

    def count(statement: str) -> None:
        if any(t in statement for t in ("webhook_endpoints", "webhook_deliveries", "webhook_project")):
            seen.append(statement.split()[0])

    async with traced(core, count):
        await core.jobs.create(project, JobSpec(type="noop", input={}))
        [job] = await core.queue.claim("w", limit=1)
        assert seen == []
        await core.queue.complete_many([job])
        # SQLite looks the endpoints up; PostgreSQL's completion statement checks for them itself
        assert seen == (["WITH"] if core.db.is_postgres else ["SELECT"])
    assert await delivery_rows(core) == []


async def test_a_new_subscription_applies_at_once_in_this_process(core: Any, endpoints: Endpoints) -> None:
    project = await make_project(core, billing=False)
    await completed_jobs(core, project, 1)  # the summary now says: nobody wants job.started
    ep = (await endpoints.create(project.id, HOOK, events=["job.started"])).endpoint
    await completed_jobs(core, project, 1)
    assert [(r["endpoint_id"], r["event_type"]) for r in await delivery_rows(core)] == [(ep.id, "job.started")]
    assert outbox.INTEREST_TTL <= 1.0


async def test_subscribers_to_queued_and_start_events_get_them(core: Any, endpoints: Endpoints) -> None:
    """A create and a claim whose events somebody subscribed to write their deliveries too (on
    PostgreSQL they then leave the one-statement path for a transaction that can)."""
    project = await make_project(core, billing=False)
    ep = (await endpoints.create(project.id, HOOK, events=["job.queued", "job.started", "job.stage_started"])).endpoint
    job, _ = await core.jobs.create(project, JobSpec(type="noop", input={}))
    start = FirstStage("probe", EventSpec(EventType.STAGE_STARTED, stage="probe"))
    [claimed] = await core.queue.claim("w", limit=1, first_stage=lambda _job: start)
    assert claimed.stage == "probe"
    rows = await delivery_rows(core)
    assert sorted((r["endpoint_id"], r["job_id"], r["event_type"]) for r in rows) == sorted(
        (ep.id, job.id, t) for t in ("job.queued", "job.started", "job.stage_started"))

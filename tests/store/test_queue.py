"""The jobs table as a queue: claim order, delays, batches, heartbeats, fencing, release,
batched completion, and two workers sharing one queue (two processes on PostgreSQL)."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from sqlalchemy import select, text, update
from sqlalchemy.dialects import postgresql

from genloom.clock import ms
from genloom.errors import LeaseLost
from genloom.jobs import Finish, JobSpec
from genloom.lifecycle import EventType, Status
from genloom.models import EventSpec
from genloom.queue import FirstStage
from genloom.retry import Decision
from genloom.runtime import open_core
from genloom.store import prepared
from genloom.store import statements as q
from genloom.store.schema import jobs as jobs_table
from genloom.store.schema import webhook_deliveries
from tests.store.helpers import (
    all_job_rows,
    claim_exactly,
    event_rows,
    in_state,
    job_row,
    make_project,
    permanent,
    run_procs,
    seed_queue,
)
from tests.support import TestCatalog

pytestmark = pytest.mark.anyio

LEASE_MS = 30_000  # Settings.lease_seconds


async def create(core: Any, project: Any, **spec: Any) -> Any:
    spec.setdefault("input", {})
    job, _ = await core.jobs.create(project, JobSpec(type=spec.pop("type", "noop"), **spec))
    return job


async def test_claim_order_is_priority_then_oldest(manual: Any) -> None:
    project = await make_project(manual, billing=False)
    made = []
    for name, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 10), ("e", 5), ("f", -1)]:
        made.append((name, priority, await create(manual, project, input={"n": name}, priority=priority)))
        manual.clock.advance(1)
    by_id = {job.id: name for name, _, job in made}
    order = []
    while claimed := await manual.queue.claim("w", limit=1):
        order.append(by_id[claimed[0].id])
    assert order == ["d", "b", "e", "a", "c", "f"]


async def test_a_batch_comes_in_claim_order(manual: Any) -> None:
    project = await make_project(manual, billing=False)
    names = {}
    for name, priority in [("a", 0), ("b", 1), ("c", 0), ("d", 2)]:
        names[(await create(manual, project, input={"n": name}, priority=priority)).id] = name
        manual.clock.advance(0.01)
    claimed = await manual.queue.claim("w", limit=10)
    assert sorted(names[j.id] for j in claimed) == ["a", "b", "c", "d"]
    assert [j.attempt for j in claimed] == [1, 1, 1, 1]
    assert len({j.lease_token for j in claimed}) == 1  # one token per claim


async def test_run_after_is_respected(manual: Any) -> None:
    project = await make_project(manual, billing=False)
    later = await create(manual, project, delay_seconds=10, priority=100)
    assert await manual.queue.claim("w", limit=5) == []
    assert await manual.queue.next_due_in() == 10.0
    now_job = await create(manual, project)
    assert [j.id for j in await manual.queue.claim("w", limit=5)] == [now_job.id]
    manual.clock.advance(9.999)
    assert await manual.queue.claim("w", limit=5) == []
    manual.clock.advance(0.001)
    assert [j.id for j in await manual.queue.claim("w", limit=5)] == [later.id]
    assert await manual.queue.next_due_in() is None


async def test_claims_come_in_batches_of_at_most_limit(core: Any) -> None:
    project = await make_project(core, billing=False)
    created = {(await create(core, project, input={"i": i})).id for i in range(25)}
    sizes, seen = [], []
    while claimed := await core.queue.claim("w", limit=10):
        sizes.append(len(claimed))
        seen += [j.id for j in claimed]
    assert sizes == [10, 10, 5]
    assert sorted(seen) == sorted(created)


async def test_claim_filters_by_type(core: Any) -> None:
    project = await make_project(core, billing=False)
    noop = await create(core, project)
    motion = await create(core, project, type="motion")
    assert [j.id for j in await core.queue.claim("w", types=["motion"], limit=5)] == [motion.id]
    assert await core.queue.claim("w", types=["motion"], limit=5) == []
    assert [j.id for j in await core.queue.claim("w", types=["noop", "sync"], limit=5)] == [noop.id]


async def test_claim_writes_started_and_leases(manual: Any) -> None:
    project = await make_project(manual, billing=False)
    job = await create(manual, project)
    [claimed] = await manual.queue.claim("w_a", limit=1)
    now = ms(manual.clock.now())
    assert claimed.status == Status.RUNNING
    assert (claimed.lease_owner, claimed.lease_expires_at, claimed.started_at) == ("w_a", now + LEASE_MS, now)
    events = await event_rows(manual, job.id)
    assert [(e["type"], e["attempt"], e["data"]) for e in events] == [
        ("queued", 0, {}), ("started", 1, {"worker": "w_a"})
    ]


async def test_warm_runs_the_hot_statements_on_nothing(core: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``warm`` (a worker's start) leaves the queue as it was, and a first claim, first-stage
    write and completion after it compile none of their statements: warm paid for that."""
    project = await make_project(core, billing=False)
    jobs = [await create(core, project), await create(core, project)]
    monkeypatch.setattr(prepared, "_PLANS", {})  # as in a new process
    await core.queue.warm("w_a")
    for job in jobs:
        assert (await job_row(core, job.id))["status"] == Status.QUEUED
        assert [e["type"] for e in await event_rows(core, job.id)] == ["queued"]
    compiled: list[Any] = []
    real = prepared._compile
    monkeypatch.setattr(prepared, "_compile", lambda stmt, *a: compiled.append(stmt) or real(stmt, *a))
    start = FirstStage("probe", EventSpec(EventType.STAGE_STARTED, stage="probe"))
    first, second = await core.queue.claim("w_a", limit=2, first_stage=lambda _job: start)
    await core.queue.complete(first)  # alone
    await core.queue.complete_many([second, replace(first, id="job_gone")])  # a batch
    hot = [q.claim_prepared(core.db.is_postgres, False), q.finish_prepared(returning=False)]
    hot += [q.claim_started_pg(False), q.start_stages_pg(), q.finish_quiet_pg(rows=False)] if core.db.is_postgres \
        else [q.finish_batch_sqlite()]
    assert not [stmt for stmt in compiled if any(stmt is h for h in hot)]
    for job in jobs:
        assert (await job_row(core, job.id))["status"] == Status.COMPLETED


async def test_a_claim_can_start_each_job_on_its_first_stage(core: Any) -> None:
    project = await make_project(core, billing=False)
    first, second = await create(core, project), await create(core, project)
    starts = {first.id: FirstStage("vision", EventSpec(EventType.VISION_STARTED, stage="vision")),
              second.id: FirstStage("store", None)}
    claimed = await core.queue.claim("w_a", limit=2, first_stage=lambda job: starts[job.id])
    assert {j.id: j.stage for j in claimed} == {first.id: "vision", second.id: "store"}
    progress = EventSpec(EventType.STAGE_COMPLETED, stage="probe")
    for job in claimed:  # the job's next write comes after its start (on PostgreSQL it may be in flight)
        await core.queue.touch(job, values={"progress": 0.5}, events=[progress])
        assert (await job_row(core, job.id))["stage"] == job.stage
    assert [(e["type"], e["stage"]) for e in await event_rows(core, first.id)] == [
        ("queued", None), ("started", None), ("vision_started", "vision"), ("stage_completed", "probe")]
    assert [e["type"] for e in await event_rows(core, second.id)] == ["queued", "started", "stage_completed"]


async def test_a_first_stage_the_claim_could_not_record_is_recorded_by_the_jobs_next_write(
    core: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL writes a claim's first stages while they start; when that write fails (here
    the database refuses the statement), each job's next write records its start first. (SQLite
    records them in the claim's own transaction, which this statement is not part of.)"""
    project = await make_project(core, billing=False)
    job = await create(core, project)
    start = FirstStage("vision", EventSpec(EventType.VISION_STARTED, stage="vision"))
    monkeypatch.setattr(q, "start_stages_pg", lambda: text("SELECT 1 / 0"))
    [claimed] = await core.queue.claim("w_a", limit=1, first_stage=lambda _: start)
    await core.queue.touch(claimed, values={"progress": 0.5}, events=[EventSpec(EventType.STAGE_COMPLETED,
                                                                                stage="vision")])
    assert (await job_row(core, job.id))["stage"] == "vision"
    assert [(e["type"], e["stage"]) for e in await event_rows(core, job.id)] == [
        ("queued", None), ("started", None), ("vision_started", "vision"), ("stage_completed", "vision")]


async def test_a_first_stage_write_cancelled_before_it_ran_is_recorded_by_the_jobs_next_write(
    core: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first-stage write ended cancelled (its loop going away): the job's next write records
    the start itself, and is not cancelled in turn."""
    project = await make_project(core, billing=False)
    job = await create(core, project)
    start = FirstStage("vision", EventSpec(EventType.VISION_STARTED, stage="vision"))

    async def cancelled(*_: Any) -> set[str]:
        raise asyncio.CancelledError

    monkeypatch.setattr(type(core.queue), "_start_stages", cancelled)
    [claimed] = await core.queue.claim("w_a", limit=1, first_stage=lambda _: start)
    await core.queue.touch(claimed, values={"progress": 0.5})
    assert [(e["type"], e["stage"]) for e in await event_rows(core, job.id)] == [
        ("queued", None), ("started", None), ("vision_started", "vision")]


async def test_sync_jobs_are_created_pending_and_claimed_pending_to_running(core: Any) -> None:
    project = await make_project(core, credits=1)
    job = await create(core, project, type="sync")
    assert job.status == Status.PENDING and job.queued_at is None
    assert await event_rows(core, job.id) == []
    running = await claim_exactly(core, job.id)
    assert (running.status, running.attempt) == (Status.RUNNING, 1)
    assert [e["type"] for e in await event_rows(core, job.id)] == ["started"]
    done = await core.queue.complete(running)
    assert done.status == Status.COMPLETED


async def test_heartbeat_extends_held_leases_and_reports_lost_ones(manual: Any) -> None:
    project = await make_project(manual, billing=False)
    a = await create(manual, project, input={"n": 1})
    b = await create(manual, project, input={"n": 2})
    claimed = await manual.queue.claim("w_a", limit=2)
    assert {j.id for j in claimed} == {a.id, b.id}
    token = claimed[0].lease_token
    manual.clock.advance(20)
    lost = await manual.queue.heartbeat("w_a", [(a.id, token), (b.id, token)])
    assert lost == set()
    for j in (a, b):
        assert (await job_row(manual, j.id))["lease_expires_at"] == ms(manual.clock.now()) + LEASE_MS
    # a wrong token, another worker's name, or a job that is no longer running: lost
    assert await manual.queue.heartbeat("w_a", [(a.id, "wrong")]) == {a.id}
    assert await manual.queue.heartbeat("w_b", [(a.id, token)]) == {a.id}
    await manual.queue.complete(next(j for j in claimed if j.id == b.id))
    assert await manual.queue.heartbeat("w_a", [(a.id, token), (b.id, token)]) == {b.id}
    assert await manual.queue.heartbeat("w_a", []) == set()


async def stale_and_fresh(core: Any, project: Any, expire: Any) -> tuple[Any, Any]:
    """Worker A claims, its lease runs out and is rescued, worker B claims the job again."""
    job = await create(core, project)
    [a] = await core.queue.claim("w_a", limit=1)
    await expire(a)
    rescued = await core.jobs.transition(job.id, Status.QUEUED, lease_expired_before=ms(core.clock.now()))
    assert rescued.status == Status.QUEUED and rescued.lease_token is None
    [b] = await core.queue.claim("w_b", limit=1)
    assert b.id == job.id and b.attempt == 2 and b.lease_token != a.lease_token
    return a, b


async def assert_stale_worker_is_fenced(core: Any, a: Any, b: Any) -> None:
    before = await job_row(core, a.id)
    b_started = max(e["id"] for e in await event_rows(core, a.id) if e["type"] == "started")
    ev = [EventSpec(EventType.STAGE_STARTED, stage="stale")]
    with pytest.raises(LeaseLost):
        await core.queue.touch(a, values={"stage": "stale", "progress": 0.5}, events=ev)
    with pytest.raises(LeaseLost):
        await core.queue.complete(a, result_key="stale")
    with pytest.raises(LeaseLost):
        await core.queue.fail(a, permanent(), "stale")
    with pytest.raises(LeaseLost):
        await core.queue.fail(a, Decision(True, 1.0, "transient_error"), "stale")
    with pytest.raises(LeaseLost):
        await core.queue.release(a)
    with pytest.raises(LeaseLost):
        await core.queue.cancelled(a)
    assert await core.queue.heartbeat("w_a", [(a.id, a.lease_token)]) == {a.id}
    assert await core.queue.complete_many([a]) == []
    assert await job_row(core, a.id) == before
    assert [e for e in await event_rows(core, a.id) if e["id"] > b_started] == []
    # B's writes still go through
    await core.queue.touch(b, values={"stage": "fresh"}, events=[EventSpec(EventType.STAGE_STARTED, stage="fresh")])
    assert await core.queue.heartbeat("w_b", [(b.id, b.lease_token)]) == set()
    done = await core.queue.complete(b, result_key="fresh")
    assert (done.status, done.result_key, done.attempt) == (Status.COMPLETED, "fresh", 2)
    types = [(e["type"], e["attempt"]) for e in await event_rows(core, a.id)]
    assert types == [("queued", 0), ("started", 1), ("queued", 1), ("started", 2),
                     ("stage_started", 2), ("completed", 2)]


async def test_fencing_with_a_manual_clock(manual: Any) -> None:
    project = await make_project(manual, credits=1)

    async def expire(_: Any) -> None:
        manual.clock.advance(LEASE_MS / 1000 + 1)

    a, b = await stale_and_fresh(manual, project, expire)
    await assert_stale_worker_is_fenced(manual, a, b)


async def test_fencing_after_the_lease_is_set_in_the_past(core: Any) -> None:
    project = await make_project(core, credits=1)

    async def expire(a: Any) -> None:
        async with core.db.tx() as conn:
            await conn.execute(update(jobs_table).where(jobs_table.c.id == a.id)
                               .values(lease_expires_at=ms(core.clock.now()) - 1000))

    a, b = await stale_and_fresh(core, project, expire)
    await assert_stale_worker_is_fenced(core, a, b)


async def test_release_gives_the_attempt_back(manual: Any) -> None:
    project = await make_project(manual, billing=False)
    job = await create(manual, project)
    running = await claim_exactly(manual, job.id)
    released = await manual.queue.release(running, delay=5)
    assert (released.status, released.attempt, released.lease_token) == (Status.QUEUED, 0, None)
    assert released.run_after == ms(manual.clock.now()) + 5000
    assert await manual.queue.claim("w", limit=1) == []
    manual.clock.advance(5)
    again = await claim_exactly(manual, job.id)
    assert again.attempt == 1


async def test_transient_failure_requeues_with_backoff(manual: Any) -> None:
    project = await make_project(manual, credits=1)
    job = await create(manual, project)
    running = await claim_exactly(manual, job.id)
    requeued = await manual.queue.fail(running, Decision(True, 4.0, "transient_error"), "timeout talking to x")
    assert (requeued.status, requeued.attempt, requeued.error_code) == (Status.QUEUED, 1, "transient_error")
    assert requeued.run_after == ms(manual.clock.now()) + 4000 and requeued.charged
    retry = [e for e in await event_rows(manual, job.id) if e["type"] == "retry_scheduled"]
    assert [(r["error_code"], r["data"]) for r in retry] == [
        ("transient_error", {"delay_ms": 4000, "next_attempt": 2})
    ]
    assert await manual.queue.claim("w", limit=1) == []
    manual.clock.advance(4)
    assert (await claim_exactly(manual, job.id)).attempt == 2


async def test_complete_many(core: Any) -> None:
    project = await make_project(core, billing=False)
    for i in range(5):
        await create(core, project, input={"i": i})
    claimed = await core.queue.claim("w", limit=5)
    done = await core.queue.complete_many(claimed)
    assert sorted(j.id for j in done) == sorted(j.id for j in claimed)
    for j in done:
        assert (j.status, j.progress, j.lease_token) == (Status.COMPLETED, 1.0, None)
        assert j.completed_at is not None
        assert [e["type"] for e in await event_rows(core, j.id)] == ["queued", "started", "completed"]
    assert await core.queue.complete_many(claimed) == []  # a second time changes nothing
    assert await core.queue.complete_many([]) == []


async def test_a_completed_job_is_returned_as_the_database_holds_it(core: Any) -> None:
    """On SQLite a completion builds the job it returns from the worker's copy instead of reading
    the row back: it must be the row, whatever the attempt wrote before it (a provider
    reference, progress, a stage)."""
    project = await make_project(core, billing=False)
    for i in range(3):
        await create(core, project, input={"i": i, "nested": {"ok": [1, 2.5, None]}})
    a, b, c = await core.queue.claim("w", limit=3)
    a = await core.queue.touch(a, values={"stage": "vision", "progress": 0.4, "provider": "local",
                                          "provider_ref": "pred_1", "provider_since": 5})
    done = await core.queue.complete(a, result_key="out/a.mp4", result={"frames": 48, "tags": ["x"]})
    assert done == await core.jobs.get(a.id)
    assert (done.status, done.provider_ref, done.result) == (Status.COMPLETED, "pred_1", {"frames": 48, "tags": ["x"]})
    for job in await core.queue.complete_many([b, c]):
        assert job == await core.jobs.get(job.id)


async def test_completions_together_store_their_result_keys_whole(core: Any) -> None:
    """Held jobs completed together (on SQLite one statement that takes them as JSON) store
    exactly their result keys, including one with a character JSON extraction would cut at."""
    project = await make_project(core, billing=False)
    for i in range(3):
        await create(core, project, input={"i": i})
    claimed = await core.queue.claim("w", limit=3)
    odd = "out/a\tb.mp4" if core.db.is_postgres else "out/a\x00b.mp4"  # PostgreSQL text holds no NUL
    keys = {claimed[0].id: "out/plain.mp4", claimed[1].id: odd, claimed[2].id: "out/ünï.mp4"}
    done = await core.jobs.finish_many([Finish(j.id, j.lease_token, result_key=keys[j.id], job=j) for j in claimed])
    assert {j.id: j.result_key for j in done} == keys
    assert {j.id: (await job_row(core, j.id))["result_key"] for j in claimed} == keys


async def test_complete_many_honours_a_cancel_request(core: Any) -> None:
    """Like complete(): a job whose cancel was requested ends cancelled (and refunded)."""
    project = await make_project(core, credits=2)
    await create(core, project, input={"i": 1})
    await create(core, project, input={"i": 2})
    claimed = await core.queue.claim("w", limit=2)
    await core.jobs.cancel(claimed[0].id)
    await core.queue.complete_many(claimed)
    assert (await job_row(core, claimed[0].id))["status"] == "cancelled"
    assert (await job_row(core, claimed[1].id))["status"] == "completed"
    assert await core.credits.balance(project.id, "") == 1


async def test_completions_that_end_together_share_one_commit(core: Any) -> None:
    """Queue.complete from many tasks at once (a worker's batch ending together): each job gets
    its own answer: completed with its result and events, cancelled when a cancel was requested
    (refunded, result discarded), LeaseLost for a stale lease; a webhook-owed job completes with
    its delivery. On PostgreSQL the quiet completions are one statement: one transaction id."""
    project = await make_project(core, credits=10)
    for i in range(5):
        await create(core, project, input={"i": i})
    await create(core, project, input={"i": "hook"}, webhook_url="https://example.com/hook")
    claimed = {j.input["i"]: j for j in await core.queue.claim("w", limit=6)}
    await core.jobs.cancel(claimed[1].id)
    stale = replace(claimed[2], lease_token="stale-token")
    stage_done = EventSpec(EventType.STAGE_COMPLETED, stage="render", latency_ms=5)
    order = [claimed[0], claimed[1], stale, claimed[3], claimed[4], claimed["hook"]]
    answers = await asyncio.gather(
        *(core.queue.complete(j, result_key=f"k{n}", result={"n": n}, events=[stage_done])
          for n, j in enumerate(order)),
        return_exceptions=True,
    )
    assert isinstance(answers[2], LeaseLost)
    assert (await job_row(core, stale.id))["status"] == "running"
    assert [e["type"] for e in await event_rows(core, stale.id)] == ["queued", "started"]
    cancelled = await job_row(core, claimed[1].id)
    assert (cancelled["status"], cancelled["result_key"]) == ("cancelled", None)
    assert [e["type"] for e in await event_rows(core, claimed[1].id)] == ["queued", "started", "cancel_requested",
                                                                          "cancelled"]
    for n in (0, 3, 4, 5):
        job = answers[n]
        assert not isinstance(job, BaseException)
        row = await job_row(core, job.id)
        assert (row["status"], row["result_key"], row["result"]) == ("completed", f"k{n}", {"n": n})
        assert (job.status, job.result_key, job.lease_token) == (Status.COMPLETED, f"k{n}", None)
        events = await event_rows(core, job.id)
        assert [e["type"] for e in events] == ["queued", "started", "stage_completed", "completed"]
        assert (events[2]["stage"], events[2]["latency_ms"]) == ("render", 5)
    async with core.db.read() as conn:
        owed = (await conn.execute(select(webhook_deliveries.c.job_id))).scalars().all()
    assert owed == [claimed["hook"].id]
    assert await core.credits.balance(project.id, "") == 10 - 6 + 1  # the cancelled job's refund
    if core.db.is_postgres:
        quiet = [answers[n].id for n in (0, 3, 4)]  # type: ignore[union-attr]
        txs = {e["tx"] for j in quiet for e in await event_rows(core, j) if e["type"] == "completed"}
        assert len(txs) == 1


async def test_one_job_completed_twice_at_once_is_completed_once(core: Any) -> None:
    project = await make_project(core, billing=False)
    await create(core, project)
    [job] = await core.queue.claim("w", limit=1)
    answers = await asyncio.gather(core.queue.complete(job, result_key="a"), core.queue.complete(job, result_key="b"),
                                   return_exceptions=True)
    assert sorted(type(a).__name__ for a in answers) == ["Job", "LeaseLost"]
    assert [e["type"] for e in await event_rows(core, job.id)] == ["queued", "started", "completed"]


async def test_claim_never_takes_a_running_or_terminal_job(core: Any) -> None:
    project = await make_project(core, credits=10)
    for s in (Status.RUNNING, Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.EXPIRED):
        await in_state(core, project, s)
    assert await core.queue.claim("w", limit=10) == []


N_JOBS = 1000
BATCH = 25


async def claim_loop(core: Any, worker: str) -> dict[str, list[Any]]:
    claimed: list[str] = []
    completed: list[str] = []
    batches: list[int] = []
    while jobs := await core.queue.claim(worker, limit=BATCH):
        batches.append(len(jobs))
        claimed += [j.id for j in jobs]
        completed += [j.id for j in await core.queue.complete_many(jobs)]
        await asyncio.sleep(0)
    return {"claimed": claimed, "completed": completed, "batches": batches}


async def test_two_workers_share_one_queue(core: Any, settings: Any, db_url: str) -> None:
    """Every job runs exactly once: in one process on SQLite, in two OS processes on PostgreSQL."""
    ids = await seed_queue(core, await make_project(core, billing=False), N_JOBS)
    if core.db.is_postgres:
        results = await run_procs([["work", db_url, "w_one", str(BATCH)], ["work", db_url, "w_two", str(BATCH)]])
    else:
        other = await open_core(settings, TestCatalog())
        try:
            results = list(await asyncio.gather(claim_loop(core, "w_one"), claim_loop(other, "w_two")))
        finally:
            await other.close()
    claimed = [j for r in results for j in r["claimed"]]
    completed = [j for r in results for j in r["completed"]]
    assert len(claimed) == len(set(claimed)) == N_JOBS
    assert set(claimed) == ids
    assert sorted(completed) == sorted(claimed)
    assert all(0 < b <= BATCH for r in results for b in r["batches"])
    assert all(r["claimed"] for r in results), "both workers should have got work"
    events = await event_rows(core)
    for kind in ("started", "completed"):
        per_job = [e["job_id"] for e in events if e["type"] == kind]
        assert len(per_job) == len(set(per_job)) == N_JOBS, kind
    for w, r in zip(("w_one", "w_two"), results, strict=True):
        mine = {e["job_id"] for e in events if e["type"] == "started" and e["data"] == {"worker": w}}
        assert mine == set(r["claimed"])
    assert {row["status"] for row in await all_job_rows(core)} == {"completed"}
    assert [e["type"] for e in await event_rows(core, claimed[0])] == ["queued", "started", "completed"]


def generic_plan(db_url: str, stmt: Any, params: dict[str, Any]) -> list[tuple[str, str]]:
    """(scan node, index or table) of PostgreSQL's *generic* plan for ``stmt`` as psycopg prepares
    it (on its fifth use), so parameters are unknown to the planner (``params`` only expand lists)."""
    compiled = stmt.compile(dialect=postgresql.psycopg.dialect()).construct_expanded_state(params)
    names: list[str] = []

    def placeholder(m: re.Match[str]) -> str:
        if m.group(1) not in names:
            names.append(m.group(1))
        return f"${names.index(m.group(1)) + 1}"

    sql = re.sub(r"%\((\w+)\)s", placeholder, compiled.statement)
    found: list[tuple[str, str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "Scan" in str(node.get("Node Type", "")):
                found.append((node["Node Type"], node.get("Index Name") or node.get("Relation Name") or ""))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute(f"PREPARE claim AS {sql}")  # type: ignore[arg-type]
        nulls = ", ".join(["NULL"] * len(names))
        walk(conn.execute(f"EXPLAIN (FORMAT JSON) EXECUTE claim({nulls})").fetchone()[0])  # type: ignore[arg-type, index]
    return found


@pytest.mark.postgresql_only
@pytest.mark.parametrize("types", [None, ["noop", "motion"]], ids=["any-type", "by-type"])
async def test_a_prepared_claim_keeps_the_claim_index(core: Any, db_url: str, types: list[str] | None) -> None:
    """The queue's claim statement once psycopg has prepared it: the claimable states are SQL
    literals, so even the generic plan proves the partial claim index's predicate (with them as
    parameters it scanned the whole table twice, history included)."""
    async with core.db.tx() as conn:
        await conn.execute(text(
            "INSERT INTO jobs (id, project_id, user_id, type, input, params_hash, status, priority, run_after,"
            " created_at, updated_at) SELECT 'job_' || g, 'prj', '', 'noop', '{}', 'x',"
            " CASE WHEN g % 100 = 0 THEN 'queued' ELSE 'completed' END, 0, g, g, g"
            " FROM generate_series(1, 20000) AS g"))
    async with core.db.engine.connect() as conn:
        await (await conn.execution_options(isolation_level="AUTOCOMMIT")).execute(text("ANALYZE jobs"))
    # claim_batch: the statement the queue prepares (claim_prepared), built by the same code with values
    stmt = q.claim_batch(postgres=True, worker_id="w", token="t" * 24, now=10**9, lease_until=10**9 + 1,
                         limit=16, types=types)
    # and the one PostgreSQL runs: that claim with its started events, in one statement
    params = q.claim_params(worker_id="w", token="t" * 24, now=10**9, lease_until=10**9 + 1, limit=16, types=types)
    one_statement = q.claim_started_pg(types is not None)
    for statement, values in ((stmt, {}), (one_statement, params | {"c_started": {"worker": "w"}})):
        found = generic_plan(db_url, statement, values)
        assert ("Seq Scan", "jobs") not in found, found
        assert any(name == "ix_jobs_claim" for _, name in found), found


@pytest.mark.parametrize("typed", [False, True], ids=["any-type", "by-type"])
def test_a_sqlite_claim_walks_the_claim_index_and_stops_at_its_limit(
    sqlite_template: Any, tmp_path: Any, typed: bool,
) -> None:
    """SQLite's planner, left to itself, took the status index and sorted every runnable job on
    each claim (O(queue depth)); the claim names the claim index (PostgreSQL: the test above)."""
    import sqlite3

    from sqlalchemy.dialects import sqlite

    path = sqlite_template.clone(tmp_path).removeprefix("sqlite:///")
    stmt = q.claim_batch(postgres=False, worker_id="w", token="t" * 24, now=10**9, lease_until=10**9 + 1,
                         limit=16, types=["noop", "motion"] if typed else None)
    sql = str(stmt.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
    with sqlite3.connect(path) as conn:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
    assert any("ix_jobs_claim" in step for step in plan), plan
    assert not any("TEMP B-TREE" in step for step in plan), plan


@pytest.mark.postgresql_only
async def test_creates_and_claims_announce_themselves_to_other_processes(core: Any, db_url: str) -> None:
    """The one-statement create and claim send their NOTIFYs from inside the statement: a create
    wakes claimers and the job's followers, a claim (its started and first-stage events) the followers."""
    from tests.dbs import libpq

    project = await make_project(core, billing=False)
    async with await psycopg.AsyncConnection.connect(libpq(db_url), autocommit=True) as listener:
        await listener.execute(f"LISTEN {q.JOBS_CHANNEL}")
        await listener.execute(f"LISTEN {q.EVENTS_CHANNEL}")

        async def heard() -> list[tuple[str, str]]:
            return [(n.channel, n.payload) async for n in listener.notifies(timeout=0.5)]

        job = await create(core, project)
        assert sorted(await heard()) == sorted([(q.JOBS_CHANNEL, ""), (q.EVENTS_CHANNEL, job.id)])
        start = FirstStage("probe", EventSpec(EventType.STAGE_STARTED, stage="probe"))
        [claimed] = await core.queue.claim("w", limit=1, first_stage=lambda _job: start)
        assert claimed.stage == "probe"
        assert await heard() == [(q.EVENTS_CHANNEL, job.id)] * 2  # the lease's statement, then the stage's
    assert [(e["type"], e["stage"]) for e in await event_rows(core, job.id)] == [
        ("queued", None), ("started", None), ("stage_started", "probe")]


@pytest.mark.postgresql_only
async def test_a_batch_announces_its_jobs_in_one_notification(core: Any, db_url: str) -> None:
    """Every listening process reads every notification: a batch's claim and its completion each
    send one naming all their jobs, not one per job."""
    from tests.dbs import libpq

    project = await make_project(core, billing=False)
    made = {(await create(core, project)).id for _ in range(5)}
    async with await psycopg.AsyncConnection.connect(libpq(db_url), autocommit=True) as listener:
        await listener.execute(f"LISTEN {q.EVENTS_CHANNEL}")

        async def heard() -> list[set[str]]:
            return [set(n.payload.split(",")) async for n in listener.notifies(timeout=0.5)]

        claimed = await core.queue.claim("w", limit=5)
        assert await heard() == [made]
        assert len(await core.queue.complete_many(claimed)) == 5
        assert await heard() == [made]
    for job_id in made:
        assert [e["type"] for e in await event_rows(core, job_id)] == ["queued", "started", "completed"]


@pytest.mark.postgresql_only
async def test_a_batch_too_big_for_one_notification_announces_each_job(core: Any, db_url: str) -> None:
    """A NOTIFY payload must stay under 8000 bytes: past that a batch notifies job by job
    instead of failing its write."""
    from tests.dbs import libpq

    project = await make_project(core, billing=False)
    made = {(await create(core, project)).id for _ in range(q.NOTIFY_PAYLOAD // 32 + 20)}
    async with await psycopg.AsyncConnection.connect(libpq(db_url), autocommit=True) as listener:
        await listener.execute(f"LISTEN {q.EVENTS_CHANNEL}")
        claimed = await core.queue.claim("w", limit=len(made))
        assert len(claimed) == len(made)
        heard = [n.payload async for n in listener.notifies(timeout=0.5)]
    assert sorted(heard) == sorted(made)

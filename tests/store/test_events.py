"""The event log: per-job ids strictly increase, and a reader following ``after`` or ``feed``
with a cursor never misses an event and never goes backwards, under concurrent writers."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from genloom.clock import ms
from genloom.events import FeedPosition
from genloom.jobs import JobSpec
from genloom.lifecycle import EventType, Status
from genloom.models import EventSpec
from genloom.store.unit import unit
from tests.store.helpers import claim_exactly, event_rows, make_project, run_procs

pytestmark = pytest.mark.anyio


async def settled_feed(core: Any, project_id: str, n: int) -> tuple[list[Any], FeedPosition]:
    """The project's feed once it shows ``n`` events. On PostgreSQL the feed holds back events
    while any older write transaction in the cluster is open (other tests' servers share it)."""
    async with asyncio.timeout(30):
        while True:
            feed, head = await core.events.feed(project_id)
            if len(feed) >= n:
                return feed, head
            await asyncio.sleep(0.05)


def stage_events(i: int) -> list[EventSpec]:
    return [
        EventSpec(EventType.STAGE_STARTED, stage=f"s{i}"),
        EventSpec(EventType.STAGE_COMPLETED, stage=f"s{i}", latency_ms=i, data={"i": i}),
    ]


async def test_ids_strictly_increase_per_job_and_after_resumes(core: Any) -> None:
    project = await make_project(core, billing=False)
    job, _ = await core.jobs.create(project, JobSpec(type="noop", input={}))
    running = await claim_exactly(core, job.id)
    for i in range(5):
        await core.queue.touch(running, values={"stage": f"s{i}"}, events=stage_events(i))
    await core.queue.complete(running)
    events = await core.events.after(job.id)
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) == 13
    assert [e.type for e in events][:2] == [EventType.QUEUED, EventType.STARTED]
    assert events[-1].type == EventType.COMPLETED
    assert [e.id for e in await core.events.after(job.id, ids[6])] == ids[7:]
    assert await core.events.after(job.id, ids[-1]) == []
    assert [e.id for e in await core.events.after(job.id, 0, limit=4)] == ids[:4]
    feed, head = await settled_feed(core, project.id, len(ids))
    assert [e.id for e in feed] == ids
    assert head == await core.events.feed_head(project.id)
    assert await core.events.feed(project.id, head) == ([], head)
    assert await core.events.feed("prj_other") == ([], (0, 0))


async def test_every_event_row_carries_job_type_ts_attempt_and_request_id(manual: Any) -> None:
    project = await make_project(manual, billing=False)
    t0 = ms(manual.clock.now())
    job, _ = await manual.jobs.create(project, JobSpec(type="noop", input={}), request_id="req-create")
    manual.clock.advance(1)
    running = await claim_exactly(manual, job.id)
    await manual.queue.touch(running, events=[EventSpec(EventType.STAGE_STARTED, stage="render")])
    manual.clock.advance(1)
    await manual.jobs.transition(job.id, Status.FAILED, lease_token=running.lease_token, error_code="boom",
                                 error_message="it broke", request_id="req-fail")
    rows = await event_rows(manual, job.id)
    assert [(r["job_id"], r["project_id"], r["type"], r["ts"], r["attempt"], r["request_id"]) for r in rows] == [
        (job.id, project.id, "queued", t0, 0, "req-create"),
        (job.id, project.id, "started", t0 + 1000, 1, "req-create"),
        (job.id, project.id, "stage_started", t0 + 1000, 1, "req-create"),
        (job.id, project.id, "failed", t0 + 2000, 1, "req-fail"),
    ]
    assert rows[2]["stage"] == "render"
    assert (rows[3]["error_code"], rows[3]["error_msg"]) == ("boom", "it broke")
    assert rows[3]["data"] == {}  # billing off: nothing refunded
    events = await manual.events.after(job.id)
    assert events[3].as_dict() == {"id": rows[3]["id"], "job_id": job.id, "type": "failed", "ts": t0 + 2000,
                                   "attempt": 1, "error_code": "boom", "error_msg": "it broke",
                                   "request_id": "req-fail"}


async def test_refund_is_recorded_on_the_terminal_event(core: Any) -> None:
    project = await make_project(core, credits=5)
    job, _ = await core.jobs.create(project, JobSpec(type="noop", input={}))
    await core.jobs.cancel(job.id)
    [cancelled] = [r for r in await event_rows(core, job.id) if r["type"] == "cancelled"]
    assert cancelled["data"] == {"refunded": 1}


async def test_a_write_that_fails_leaves_no_events(core: Any) -> None:
    project = await make_project(core, billing=False)
    job, _ = await core.jobs.create(project, JobSpec(type="noop", input={}))
    with pytest.raises(RuntimeError):
        async with unit(core.db, core.notifier) as u:
            row = await core.jobs.lock(u, job.id)
            await core.jobs.apply(u, row, Status.CANCELLED)
            raise RuntimeError("rolled back")
    assert [r["type"] for r in await event_rows(core, job.id)] == ["queued"]
    assert (await core.jobs.get(job.id)).status == Status.QUEUED


JOBS = 8
ROUNDS = 6
PROCS = 3


class Follower:
    """A reader that follows the feed and every job's stream with cursors, checking as it goes."""

    def __init__(self, core: Any, job_ids: list[str]) -> None:
        self.core = core
        self.feed_cursor: FeedPosition = (0, 0)
        self.feed_seen: list[int] = []
        self.feed_positions: list[FeedPosition] = []
        self.job_cursor = dict.fromkeys(job_ids, 0)
        self.job_seen: dict[str, list[int]] = {j: [] for j in job_ids}

    async def poll(self) -> None:
        events, cursor = await self.core.events.feed(None, self.feed_cursor)
        assert cursor >= self.feed_cursor, "the feed went backwards"
        self.feed_cursor = cursor
        self.feed_seen += [e.id for e in events]
        self.feed_positions.append(cursor)
        for job_id in list(self.job_cursor):
            for event in await self.core.events.after(job_id, self.job_cursor[job_id]):
                assert event.job_id == job_id
                assert event.id > self.job_cursor[job_id], "a job's stream went backwards"
                self.job_cursor[job_id] = event.id
                self.job_seen[job_id].append(event.id)

    async def follow(self, done: asyncio.Event) -> None:
        while not done.is_set():
            await self.poll()
            await asyncio.sleep(0)
        await self.poll()

    async def check(self) -> None:
        rows = await event_rows(self.core)
        async with asyncio.timeout(30):  # held back while an older write transaction is open somewhere
            while len(self.feed_seen) < len(rows):
                await asyncio.sleep(0.05)
                await self.poll()
        assert sorted(self.feed_positions) == self.feed_positions
        assert len(set(self.feed_seen)) == len(self.feed_seen), "the feed repeated an event"
        missed = sorted({r["id"] for r in rows} - set(self.feed_seen))
        assert missed == [], f"the feed missed {len(missed)} events: {missed[:20]}"
        assert len(self.feed_seen) == len(rows)
        for job_id, seen in self.job_seen.items():
            assert seen == [r["id"] for r in rows if r["job_id"] == job_id]


async def running_jobs(core: Any, project: Any, n: int) -> list[Any]:
    for i in range(n):
        await core.jobs.create(project, JobSpec(type="noop", input={"i": i}))
    claimed = await core.queue.claim("w", limit=n)
    assert len(claimed) == n
    return claimed


async def write_stages(core: Any, job: Any, rounds: int) -> None:
    for i in range(rounds):
        await core.queue.touch(job, values={"stage": f"s{i}", "progress": i / rounds}, events=stage_events(i))
        await asyncio.sleep(0)


async def test_a_cursor_reader_never_misses_an_event_under_concurrent_writers(core: Any) -> None:
    project = await make_project(core, credits=100)
    jobs = await running_jobs(core, project, JOBS)
    follower = Follower(core, [j.id for j in jobs])
    done = asyncio.Event()
    reader = asyncio.create_task(follower.follow(done))

    async def lifecycle_writer() -> None:  # creates, claims and finishes interleave with the touches
        for i in range(10):
            job, _ = await core.jobs.create(project, JobSpec(type="noop", input={"extra": i}, priority=-1))
            follower.job_cursor.setdefault(job.id, 0)
            follower.job_seen.setdefault(job.id, [])
            await core.jobs.cancel(job.id)

    try:
        await asyncio.gather(
            *(write_stages(core, j, ROUNDS) for j in jobs for _ in range(3)), lifecycle_writer()
        )
        await asyncio.gather(*(core.queue.complete(j) for j in jobs))
    finally:
        done.set()
        await reader
    await follower.check()
    assert len(follower.feed_seen) == JOBS * (2 + 3 * ROUNDS * 2 + 1) + 10 * 2


@pytest.mark.postgresql_only  # several writer processes are the PostgreSQL deployment; SQLite: the test above
async def test_a_cursor_reader_never_misses_an_event_written_by_other_processes(core: Any, db_url: str) -> None:
    project = await make_project(core, credits=100)
    jobs = await running_jobs(core, project, JOBS)
    ids = [j.id for j in jobs]
    follower = Follower(core, ids)
    done = asyncio.Event()
    reader = asyncio.create_task(follower.follow(done))
    try:
        results, *_ = await asyncio.gather(
            run_procs([["touch", db_url, str(ROUNDS), *ids] for _ in range(PROCS)]),
            *(write_stages(core, j, ROUNDS) for j in jobs),
        )
    finally:
        done.set()
        await reader
    assert sum(r["written"] for r in results) == PROCS * JOBS * ROUNDS * 2
    await follower.check()
    assert len(follower.feed_seen) == JOBS * (2 + (PROCS + 1) * ROUNDS * 2)


@pytest.mark.postgresql_only  # SQLite has one writer at a time: this interleaving cannot happen there
async def test_the_feed_never_skips_an_event_of_a_transaction_still_committing(core: Any) -> None:
    """Two writers on different jobs: B locks its job first (so its transaction id is older) but
    A inserts its events first (so A's event id is smaller) and commits last. A reader that read
    B's event must still be shown A's afterwards."""
    project = await make_project(core, billing=False)
    job_a, job_b = await running_jobs(core, project, 2)
    follower = Follower(core, [job_a.id, job_b.id])
    await follower.poll()
    b_locked, a_flushed, b_committed, a_may_commit = (asyncio.Event() for _ in range(4))

    async def writer_b() -> None:
        async with unit(core.db, core.notifier) as u:
            row = await core.jobs.lock(u, job_b.id)
            await core.jobs.apply(u, row, Status.COMPLETED, lease_token=job_b.lease_token)
            b_locked.set()
            await a_flushed.wait()
        b_committed.set()

    async def writer_a() -> None:
        await b_locked.wait()
        async with unit(core.db, core.notifier) as u:
            row = await core.jobs.lock(u, job_a.id)
            await core.jobs.apply(u, row, Status.COMPLETED, lease_token=job_a.lease_token)
            await u.flush()  # what the unit does on exit, just before its NOTIFY and COMMIT
            a_flushed.set()
            await a_may_commit.wait()

    async def reader() -> None:
        with contextlib.suppress(TimeoutError):  # a store that orders commits may keep B waiting on A
            async with asyncio.timeout(1):
                await b_committed.wait()
        await follower.poll()
        a_may_commit.set()

    async with asyncio.timeout(20):
        await asyncio.gather(writer_b(), writer_a(), reader())
    await follower.poll()
    await follower.check()

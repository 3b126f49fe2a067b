"""The per-job feed behind SSE streams and ``Prefer: wait``, in-process on both databases: streams
with any cursor (behind the feed's base, inside it, far past it) get exactly the rest, once, in
order; the tail is trimmed and laggards fall back to the database; the last subscriber leaving
stops the reader; a failing reader retries while streams keep their heartbeats; closing ends all.
And what a full connection pool answers: 503 busy, not "database unreachable"."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import exc as sa_exc

from genloom.api import errors, fanout
from genloom.api.fanout import Fanout, JobFeed
from genloom.api.routes import events as routes
from genloom.api.waiting import until_terminal
from genloom.clock import ms
from genloom.ids import EventId, JobId, ProjectId
from genloom.jobs import JobSpec
from genloom.lifecycle import EventType
from genloom.models import Event, EventSpec, Job
from genloom.runtime import Core
from genloom.store.unit import unit

pytestmark = pytest.mark.anyio
ID = re.compile(rb"^id: (\d+)$", re.MULTILINE)


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small pages and tail, so a few dozen events cross every boundary."""
    monkeypatch.setattr(fanout, "START_PAGE", 8)
    monkeypatch.setattr(fanout, "PAGE", 5)
    monkeypatch.setattr(fanout, "TAIL_MAX", 16)
    monkeypatch.setattr(fanout, "TAIL_KEEP", 8)
    monkeypatch.setattr(fanout, "RETRY_FIRST", 0.05)
    monkeypatch.setattr(routes, "PAGE", 5)


async def new_job(core: Core) -> Job:
    project = (await core.projects.create("fanout", billing=False)).project
    job, _ = await core.jobs.create(project, JobSpec(type="noop", input={}))
    return job


async def emit(core: Core, job_id: str, n: int, *, per_commit: int = 1) -> None:
    """``n`` stage events on the job, ``per_commit`` to a transaction, as every writer writes them."""
    for i in range(0, n, per_commit):
        async with unit(core.db, core.notifier) as u:
            row = await core.jobs.lock(u, job_id)
            specs = [EventSpec(EventType.STAGE_STARTED, stage="t", data={"i": i + k}) for k in range(per_commit)]
            u.add_events(row, specs[: n - i], ms(core.clock.now()))


async def logged(core: Core, job_id: str) -> list[int]:
    return [e.id for e in await core.events.after(job_id, 0, 100_000)]


class Reader:
    """One SSE body consumed in a task: event ids and heartbeats as they come, and whether it ended."""

    def __init__(self, body: AsyncIterator[bytes]) -> None:
        self.ids: list[int] = []
        self.pings = 0
        self.writes = 0
        self.task = asyncio.create_task(self._read(body))

    async def _read(self, body: AsyncIterator[bytes]) -> None:
        async for chunk in body:
            self.writes += 1
            self.ids += [int(m) for m in ID.findall(chunk)]
            self.pings += chunk.count(b": ping")

    async def ended(self, within: float = 10.0) -> list[int]:
        await asyncio.wait_for(asyncio.shield(self.task), within)
        return self.ids


def follow(core: Core, feeds: Fanout, job: Job, cursor: int, heartbeat: float = 30.0) -> Reader:
    app: Any = SimpleNamespace(core=core)
    return Reader(routes.stream(app, feeds, job, cursor, heartbeat))


async def until(check: Callable[[], bool], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_every_cursor_gets_exactly_the_rest(core: Core, small: None) -> None:
    job = await new_job(core)
    await emit(core, job.id, 30, per_commit=3)  # more than START_PAGE: the feed starts near the end
    before = await logged(core, job.id)
    feeds = Fanout(core, poll=0.2)
    huge = routes.MAX_ID
    cursors = [0, before[3], before[-2], before[-1], huge, huge]  # behind base, at it, past it, absurd
    readers = [follow(core, feeds, job, c) for c in cursors]
    await until(lambda: job.id in feeds.feeds and feeds.feeds[job.id].ready)
    feed = feeds.feeds[job.id]
    assert feed.base == before[-1] - 1, "base comes from the database, not from any cursor"
    await emit(core, job.id, 25)  # live, one commit each: crosses TAIL_MAX, so the tail is trimmed
    await emit(core, job.id, 12, per_commit=4)
    await core.jobs.cancel(job.id)
    await emit(core, job.id, 2)  # after the terminal event (as an admin retry would write)
    everything = await logged(core, job.id)
    cancelled = everything[-3]
    for cursor, reader in zip(cursors, readers, strict=True):
        got = await reader.ended()
        want = [i for i in everything if cursor < i <= cancelled]
        assert got == want, cursor
    assert feed.base > before[-1] and len(feed.ids) <= fanout.TAIL_MAX  # trimmed along the way
    await until(lambda: not feeds.feeds)  # every stream ended: no feed left
    await feeds.close()


async def test_a_lagging_subscriber_falls_back_to_the_database(core: Core, small: None) -> None:
    job = await new_job(core)
    feeds = Fanout(core, poll=0.2)
    with feeds.subscribe(job.id) as feed:  # keeps the feed alive while nobody reads
        await until(lambda: feed.ready)
        assert feed.base == 0
        await emit(core, job.id, 40)
        last = (await logged(core, job.id))[-1]
        await until(lambda: feed.last == last)
        assert feed.base > 0 and len(feed.ids) <= fanout.TAIL_MAX  # trimmed: the oldest are gone
        late = follow(core, feeds, job, 0)  # starts behind base: pages from the database, then memory
        await emit(core, job.id, 5)
        await core.jobs.cancel(job.id)
        everything = await logged(core, job.id)
        assert await late.ended() == everything
    await feeds.close()


async def test_one_read_and_one_write_per_change_for_many_subscribers(core: Core, monkeypatch: pytest.MonkeyPatch
                                                                      ) -> None:
    job = await new_job(core)
    reads = 0
    after = core.events.after

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return await after(*args, **kwargs)

    monkeypatch.setattr(core.events, "after", counted)
    feeds = Fanout(core, poll=30.0)  # no poll: only wake-ups read
    queued = (await logged(core, job.id))[-1]
    readers = [follow(core, feeds, job, queued) for _ in range(200)]
    await until(lambda: job.id in feeds.feeds and feeds.feeds[job.id].ready and feeds.subscribers == 200)
    reads = 0
    await emit(core, job.id, 4, per_commit=4)
    await until(lambda: all(len(r.ids) == 4 for r in readers))
    assert reads == 1, "one read for every subscriber"
    assert {r.writes for r in readers} == {2}, "retry line, then all four events in one write"
    await core.jobs.cancel(job.id)
    for r in readers:
        assert len(await r.ended()) == 5
    await feeds.close()


async def test_one_poll_a_second_finds_writes_the_notifier_missed(core: Core, monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    """Writers in another process on SQLite, or a LISTEN connection that was down: no wake-up
    comes, and the fanout's one poll (all followed jobs, one query) finds the new events."""
    jobs = [await new_job(core) for _ in range(5)]
    monkeypatch.setattr(core.notifier, "subscribe", lambda job_id, cb: lambda: None)  # deaf feeds
    feeds = Fanout(core, poll=0.1)
    polls = reads = 0
    latest, after = feeds._latest, core.events.after

    async def counted_latest(job_ids: list[str]) -> dict[str, int]:
        nonlocal polls
        polls += 1
        return await latest(job_ids)

    async def counted_after(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return await after(*args, **kwargs)

    monkeypatch.setattr(feeds, "_latest", counted_latest)
    monkeypatch.setattr(core.events, "after", counted_after)
    readers = [follow(core, feeds, job, 0) for job in jobs for _ in range(10)]
    await until(lambda: len(feeds.feeds) == 5 and all(f.ready for f in feeds.feeds.values()))
    polls = reads = 0
    await asyncio.sleep(1.0)
    assert reads == 0 and 5 <= polls <= 12, (reads, polls)  # quiet: one query a tick for all five jobs
    for job in jobs:
        await emit(core, job.id, 2)
        await core.jobs.cancel(job.id)
    for r in readers:
        await r.ended()
    assert reads <= 10  # a read or two per job, for fifty streams
    for r, job in zip(readers, [j for j in jobs for _ in range(10)], strict=True):
        assert r.ids == await logged(core, job.id)
    await until(lambda: feeds._poller is None)  # nobody follows anything: the poll stops too
    await feeds.close()


async def test_the_last_subscriber_leaving_stops_the_reader(core: Core) -> None:
    job = await new_job(core)
    feeds = Fanout(core, poll=0.05)
    a = follow(core, feeds, job, 0)
    b = follow(core, feeds, job, 0)
    await until(lambda: feeds.subscribers == 2 and feeds.feeds[job.id].ready)
    feed = feeds.feeds[job.id]
    a.task.cancel()  # the client went away
    await until(lambda: feeds.subscribers == 1)
    assert feeds.feeds[job.id] is feed and not feed.closed
    b.task.cancel()
    await until(lambda: not feeds.feeds and feed.closed)
    await until(lambda: not feeds._tasks)  # the reader has finished
    with feeds.subscribe(job.id) as again:  # a new subscriber starts a new feed
        assert again is not feed and feeds.subscribers == 1
    await feeds.close()


async def test_a_failing_reader_retries_and_streams_keep_their_heartbeats(core: Core, small: None,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    job = await new_job(core)
    failing = True
    after = core.events.after

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        if failing:
            raise sa_exc.OperationalError("SELECT", {}, Exception("connection reset"))
        return await after(*args, **kwargs)

    feeds = Fanout(core, poll=0.1)
    queued = (await logged(core, job.id))[-1]
    monkeypatch.setattr(core.events, "after", flaky)
    reader = follow(core, feeds, job, queued, heartbeat=0.05)
    await until(lambda: job.id in feeds.feeds and feeds.feeds[job.id].failures >= 3)
    assert not feeds.feeds[job.id].ready and reader.pings >= 2 and not reader.task.done()
    failing = False
    await until(lambda: feeds.feeds[job.id].ready)
    await emit(core, job.id, 3)
    failing = True  # and again, now that it runs
    await emit(core, job.id, 2)
    await asyncio.sleep(0.3)
    failing = False
    await core.jobs.cancel(job.id)
    assert await reader.ended() == [i for i in await logged(core, job.id) if i > queued]
    await feeds.close()


async def test_prefer_wait_ends_on_the_terminal_event_or_the_deadline(core: Core) -> None:
    job = await new_job(core)
    feeds = Fanout(core, poll=30.0)
    app: Any = SimpleNamespace(core=core)
    t0 = asyncio.get_running_loop().time()
    timed_out = await until_terminal(app, feeds, job, 0.3)
    assert not timed_out.terminal and asyncio.get_running_loop().time() - t0 >= 0.3
    waiting = asyncio.create_task(until_terminal(app, feeds, job, 10))
    await until(lambda: feeds.subscribers == 1)
    await emit(core, job.id, 3)
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await core.jobs.cancel(job.id)
    done = await asyncio.wait_for(waiting, 5)
    assert done.terminal and done.status.value == "cancelled"
    await until(lambda: not feeds.feeds)
    await feeds.close()


async def test_closing_ends_streams_and_waits_at_once(core: Core) -> None:
    job = await new_job(core)
    feeds = Fanout(core, poll=30.0)
    app: Any = SimpleNamespace(core=core)
    reader = follow(core, feeds, job, 0)
    waiting = asyncio.create_task(until_terminal(app, feeds, job, 30))
    await until(lambda: feeds.subscribers == 2 and len(reader.ids) == 1)
    await asyncio.wait_for(feeds.close(), 5)
    assert len(await reader.ended(5)) == 1  # the queued event, then the end
    assert not (await asyncio.wait_for(waiting, 5)).terminal
    late = follow(core, feeds, job, 0)  # after the drain began: nothing follows any more
    assert await late.ended(5) == []
    assert not feeds.feeds and not feeds._tasks


async def test_a_terminal_job_is_replayed_without_a_feed(core: Core, small: None) -> None:
    job = await new_job(core)
    await emit(core, job.id, 12)
    done = await core.jobs.cancel(job.id)
    feeds = Fanout(core)
    everything = await logged(core, job.id)
    for cursor in (0, everything[4], everything[-1], routes.MAX_ID):
        assert await follow(core, feeds, done, cursor).ended() == [i for i in everything if i > cursor]
    assert not feeds.feeds
    await feeds.close()


async def test_frames_are_rendered_once_per_frame_function(core: Core) -> None:
    job = await new_job(core)
    calls: dict[str, int] = {"a": 0, "b": 0}

    def counting(name: str) -> Callable[[Any], bytes]:
        def render(event: Any) -> bytes:
            calls[name] += 1
            return routes.frame(event)
        return render

    a, b = counting("a"), counting("b")
    feeds = Fanout(core, poll=30.0)
    queued = (await logged(core, job.id))[-1]
    app: Any = SimpleNamespace(core=core)
    readers = [Reader(routes.stream(app, feeds, job, queued, 30, frame=f)) for f in [a] * 20 + [b] * 20]
    await until(lambda: feeds.subscribers == 40 and feeds.feeds[job.id].ready)
    await emit(core, job.id, 5)
    await core.jobs.cancel(job.id)
    for r in readers:
        assert len(await r.ended()) == 6
    assert calls == {"a": 7, "b": 7}  # queued, 5, cancelled: each once per function, not per stream
    await feeds.close()


def ev(i: int, t: EventType) -> Event:
    return Event(id=EventId(i), job_id=JobId("j"), project_id=ProjectId("p"), type=t, ts=0, attempt=0, stage=None,
                 latency_ms=None, error_code=None, error_msg=None, request_id=None, data={})


async def test_since_stops_at_the_first_terminal_event_and_a_retry_reopens(core: Core) -> None:
    feed = JobFeed(core, "j")  # filled by hand: the slicing rules alone
    feed._append([ev(2, EventType.QUEUED), ev(5, EventType.FAILED), ev(7, EventType.QUEUED),
                  ev(9, EventType.STARTED), ev(11, EventType.COMPLETED), ev(12, EventType.WEBHOOK_DELIVERED)])
    chunk, cursor, ended = feed.since(0, routes.frame)
    assert (ID.findall(chunk), cursor, ended) == ([b"2", b"5"], 5, True)
    chunk, cursor, ended = feed.since(5, routes.frame)
    assert (ID.findall(chunk), cursor, ended) == ([b"7", b"9", b"11"], 11, True)
    chunk, cursor, ended = feed.since(11, routes.frame)
    assert (ID.findall(chunk), cursor, ended) == ([b"12"], 12, False)
    assert feed.finished(12) and feed.finished(routes.MAX_ID) and not feed.finished(10)
    assert feed.since(100, routes.frame) == (b"", 100, False)
    feed._append([ev(13, EventType.QUEUED)])  # an admin retry: the job is live again
    assert not feed.finished(13)
    feed.stop()


# --- a full connection pool is "busy", not an outage --------------------------------------------

async def test_a_full_pool_is_503_busy() -> None:
    api = FastAPI()
    errors.install(api)

    @api.get("/pool")
    async def pool() -> None:
        raise sa_exc.TimeoutError("QueuePool limit of size 10 overflow 10 reached")

    @api.get("/down")
    async def down() -> None:
        raise sa_exc.OperationalError("SELECT 1", {}, Exception("could not connect to server"))

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t") as http:
        busy, gone = await http.get("/pool"), await http.get("/down")
    assert busy.status_code == gone.status_code == 503
    assert busy.json()["error"]["code"] == "busy" and "busy" in busy.json()["error"]["message"]
    assert gone.json()["error"]["code"] == "unavailable"
    assert int(busy.headers["retry-after"]) > 0 and int(gone.headers["retry-after"]) > 0

"""One reader per job per process for everything that follows a job (SSE streams, ``Prefer: wait``).

A ``JobFeed`` reads a job's new events once, when the notifier says some were written (LISTEN/NOTIFY
on PostgreSQL, in-process on SQLite) or the fanout's poll finds it behind, keeps them in a bounded
in-memory tail and wakes its subscribers: a thousand streams on one job cost one query per change
instead of a thousand queries a second. ``Fanout`` (one per app) holds the feeds: made by a job's
first subscriber, stopped when its last one leaves, all closed when the server drains; its one poll
a second (the latest event id of every followed job, one query) covers other processes on SQLite
and a lost LISTEN.

The tail holds every event of the job with ``id > base``. ``base`` comes from the database when the
feed starts, never from a client (a cursor is untrusted input): 0 when the job has few events, else
just below its latest event id. A job's event ids commit in increasing order (its writers hold its
row to commit), so a subscriber behind ``base`` catches up from the database in pages, and since an
event above ``base`` is already committed, the first short page takes it past ``base``; from there
it is served from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from bisect import bisect_right
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from prometheus_client import Gauge
from starlette.requests import Request

from genloom.lifecycle import TERMINAL_EVENTS, EventType
from genloom.models import Event
from genloom.observability import Metrics, get_logger
from genloom.runtime import Core

Frame = Callable[[Event], bytes]

log = get_logger("genloom.api")
POLL_SECONDS = 1.0  # the fallback check: other processes on SQLite, a lost LISTEN connection
POLL_CHUNK = 500  # job ids per poll query
PAGE = 1000
START_PAGE = 200  # a job with fewer events (most jobs) is held whole from the start
TAIL_MAX = 512  # past this many events the oldest are dropped, down to TAIL_KEEP: a few hundred KiB a job
TAIL_KEEP = 256
RETRY_FIRST, RETRY_MAX = 0.2, 5.0  # backoff after a failed read
MAX_RENDERERS = 4  # frame functions rendered once and kept (the API's and the compat layers')
#: Events that put a job back to work after a terminal one (an admin retry).
REOPENING = frozenset({EventType.QUEUED, EventType.STARTED})


class JobFeed:
    """A job's events with ``id > base`` in id order, read by one task and shared by its subscribers.

    A subscriber looks at the feed, then (with no await in between, so no change can fall between
    the two) takes a ``waiter``, a future of its own that the next change resolves, and awaits it;
    its own, so cancelling one subscriber's wait cancels nobody else's.
    """

    def __init__(self, core: Core, job_id: str) -> None:
        self.core, self.job_id = core, job_id
        self.base = 0
        self.last = 0  # the highest id read (base before the first event)
        self.ready = False  # base is known
        self.closed = False
        self.failures = 0  # reads that failed, in all
        self.subscribers = 0
        #: The latest terminal event's id when no event since has reopened the job, else None.
        self.finished_at: int | None = None
        self.ids: list[int] = []
        self.events: list[Event] = []
        self._terminal_ids: list[int] = []
        self._frames: dict[Frame, list[bytes]] = {}
        self._waiters: set[asyncio.Future[None]] = set()
        self._woke = asyncio.Event()
        self._halt = asyncio.Event()
        self._unsubscribe = core.notifier.subscribe(job_id, lambda _: self.wake())

    def waiter(self) -> asyncio.Future[None]:
        """A future resolved at the next change (new events, ready, closed); ``forget`` it after."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.closed:
            fut.set_result(None)
        else:
            self._waiters.add(fut)
        return fut

    def forget(self, fut: asyncio.Future[None]) -> None:
        self._waiters.discard(fut)

    def since(self, cursor: int, frame: Frame) -> tuple[bytes, int, bool]:
        """(the frames of the events after ``cursor`` up to and including the first terminal one,
        the new cursor, whether a terminal event was among them); ``cursor >= base`` expected."""
        start = bisect_right(self.ids, cursor)
        if start == len(self.ids):
            return b"", cursor, False
        stop, ended = len(self.ids), False
        k = bisect_right(self._terminal_ids, cursor)
        if k < len(self._terminal_ids):
            stop, ended = bisect_right(self.ids, self._terminal_ids[k]), True
        frames = self._rendered(frame)
        if frames is None:
            return b"".join(frame(e) for e in self.events[start:stop]), self.ids[stop - 1], ended
        return b"".join(frames[start:stop]), self.ids[stop - 1], ended

    def finished(self, cursor: int) -> bool:
        """True when the job's last word so far is a terminal event the subscriber already has."""
        return self.finished_at is not None and self.finished_at <= cursor

    def _rendered(self, frame: Frame) -> list[bytes] | None:
        frames = self._frames.get(frame)
        if frames is None:
            if len(self._frames) >= MAX_RENDERERS:
                return None
            frames = self._frames[frame] = []
        frames.extend(frame(e) for e in self.events[len(frames):])
        return frames

    # -- the reader ------------------------------------------------------------
    def wake(self) -> None:
        """New events may be there (the notifier, or the fanout's poll): read once more."""
        self._woke.set()

    async def run(self) -> None:
        """Read when woken, until stopped; a failed read is logged and retried with backoff
        (subscribers keep their heartbeats meanwhile), so one bad moment of the database never
        ends the feed."""
        delay = RETRY_FIRST
        while not self.closed:
            try:
                if self.ready:
                    await self._read()
                else:
                    await self._start()
            except Exception as exc:  # whatever it was, the feed outlives it
                self.failures += 1
                log.warning("sse.feed_read_failed", job_id=self.job_id, error=type(exc).__name__, retry_in=delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._halt.wait(), delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_FIRST
            await self._woke.wait()
            self._woke.clear()  # before the read: a wake-up during it means another read

    async def _start(self) -> None:
        first = await self.core.events.after(self.job_id, 0, START_PAGE)
        if len(first) < START_PAGE:
            base, tail = 0, first
        else:  # a long history: hold from the latest event on, older readers go to the database
            base = (await self.core.events.latest_ids([self.job_id])).get(self.job_id, 0) - 1
            tail = await self.core.events.after(self.job_id, base, PAGE)
        if self.closed:
            return
        self.base = self.last = base
        self.ready = True
        self._append(tail)
        self._bump()

    async def _read(self) -> None:
        while not self.closed:
            batch = await self.core.events.after(self.job_id, self.last, PAGE)
            if self.closed:
                return
            if batch:
                self._append(batch)
                self._bump()
            if len(batch) < PAGE:
                return

    def _append(self, batch: list[Event]) -> None:
        for event in batch:
            if event.id <= self.last:
                continue
            self.ids.append(event.id)
            self.events.append(event)
            self.last = event.id
            if event.type in TERMINAL_EVENTS:
                self._terminal_ids.append(event.id)
                self.finished_at = event.id
            elif event.type in REOPENING:
                self.finished_at = None
        if len(self.ids) > TAIL_MAX:
            self._trim(len(self.ids) - TAIL_KEEP)

    def _trim(self, drop: int) -> None:
        """Forget the oldest ``drop`` events: ``base`` rises to the last one dropped."""
        self.base = self.ids[drop - 1]
        del self.ids[:drop], self.events[:drop]
        for frames in self._frames.values():
            del frames[:drop]
        del self._terminal_ids[:bisect_right(self._terminal_ids, self.base)]

    def _bump(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def stop(self) -> None:
        """End the reader (after a read in flight) and wake every subscriber to see ``closed``."""
        if self.closed:
            return
        self.closed = True
        self._unsubscribe()
        self._halt.set()
        self._woke.set()
        self._bump()


class Fanout:
    """The app's feeds, by job id; ``subscribe`` is the only way in.

    One poll for the whole process, about every second while any job is followed: the latest
    event id of every followed job in one query, and a wake-up for each feed that is behind. It
    covers what the notifier cannot (writers in other processes on SQLite, a LISTEN connection
    that was down), so idle feeds cost one query a second in all, not one each.
    """

    def __init__(self, core: Core, *, poll: float = POLL_SECONDS) -> None:
        self.core, self.poll = core, poll
        self.feeds: dict[str, JobFeed] = {}
        self.closed = False
        self.poll_failures = 0
        self._closing = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def subscribers(self) -> int:
        return sum(f.subscribers for f in self.feeds.values())

    @contextlib.contextmanager
    def subscribe(self, job_id: str) -> Iterator[JobFeed]:
        """The job's feed, started if nobody follows the job yet; left (and stopped, for the
        last subscriber) on exit. Once the fanout is closed, a feed that is closed already."""
        feed = self.feeds.get(job_id)
        if feed is None:
            feed = JobFeed(self.core, job_id)
            if self.closed:
                feed.stop()
            else:
                self.feeds[job_id] = feed
                self._spawn(feed.run(), f"genloom-feed-{job_id}")
                if self._poller is None:
                    self._poller = self._spawn(self._poll(), "genloom-feed-poll")
        feed.subscribers += 1
        try:
            yield feed
        finally:
            feed.subscribers -= 1
            if feed.subscribers == 0:
                feed.stop()
                if self.feeds.get(job_id) is feed:
                    del self.feeds[job_id]

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _poll(self) -> None:
        """Runs while any job is followed (the next first subscriber starts it again)."""
        try:
            while self.feeds and not self.closed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), self.poll)
                feeds = [f for f in self.feeds.values() if f.ready and not f.closed]
                if not feeds or self.closed:
                    continue
                try:
                    latest = await self._latest([f.job_id for f in feeds])
                except Exception as exc:  # the next round tries again; the feeds keep what they have
                    self.poll_failures += 1
                    log.warning("sse.poll_failed", feeds=len(feeds), error=type(exc).__name__)
                    continue
                for feed in feeds:
                    if latest.get(feed.job_id, 0) > feed.last:
                        feed.wake()
        finally:
            self._poller = None

    async def _latest(self, job_ids: list[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for i in range(0, len(job_ids), POLL_CHUNK):
            out.update(await self.core.events.latest_ids(job_ids[i:i + POLL_CHUNK]))
        return out

    async def close(self, grace: float = 2.0) -> None:
        """Close every feed (their subscribers end) and wait for the readers, cancelling stragglers."""
        self.closed = True
        self._closing.set()
        for feed in list(self.feeds.values()):
            feed.stop()
        self.feeds.clear()
        tasks = set(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def close_when(self, draining: asyncio.Event) -> None:
        """Close once the server starts draining (the lifespan runs this as a task)."""
        await draining.wait()
        await self.close()


def fanout_gauges(fanout: Fanout, metrics: Metrics) -> None:
    """Scrape-time gauges of the feeds, and of the loop's tasks (what a leak would grow)."""
    loop = asyncio.get_running_loop()
    reg = metrics.registry
    Gauge("genloom_sse_feeds", "Jobs this process follows (one reader each)",
          registry=reg).set_function(lambda: len(fanout.feeds))
    Gauge("genloom_sse_subscribers", "SSE streams and Prefer: wait holds following those jobs",
          registry=reg).set_function(lambda: fanout.subscribers)
    Gauge("genloom_sse_feed_events", "Events the feeds hold in memory",
          registry=reg).set_function(lambda: sum(len(f.ids) for f in fanout.feeds.values()))
    Gauge("genloom_event_loop_tasks", "Tasks on the server's event loop",
          registry=reg).set_function(lambda: len(asyncio.all_tasks(loop)))


def fanout_of(request: Request) -> Fanout:
    fanout: Fanout = request.app.state.fanout
    return fanout

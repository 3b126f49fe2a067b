"""Wake-ups: new runnable jobs and new events, in-process on SQLite, LISTEN/NOTIFY on PostgreSQL.

One listener per process. A job wake-up wakes one waiting claimer, not all of them (the
thundering herd costs more than half the throughput); event wake-ups go to every subscriber of
that job, and every subscriber of the firehose (dashboards). A polling fallback covers other
processes on SQLite and a lost LISTEN connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterable

import psycopg

from genloom.observability import get_logger
from genloom.store.statements import EVENTS_CHANNEL, JOBS_CHANNEL

EventCallback = Callable[[str], None]
log = get_logger("genloom.notify")


class Notifier:
    """In-process wake-ups; the base of the PostgreSQL notifier, which feeds it from LISTEN."""

    def __init__(self) -> None:
        self._jobs = asyncio.Condition()
        self._pending_job_wakes = 0
        self._event_subs: dict[str, set[EventCallback]] = defaultdict(set)
        self._tasks: set[asyncio.Task[None]] = set()
        self._firehose: set[EventCallback] = set()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    # -- jobs ----------------------------------------------------------------
    def jobs_ready(self) -> None:
        """Called after a commit made jobs runnable (locally, or from a NOTIFY)."""
        task = asyncio.get_running_loop().create_task(self._wake_one())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wake_one(self) -> None:
        async with self._jobs:
            self._pending_job_wakes += 1
            self._jobs.notify(1)

    async def wait_for_jobs(self, timeout: float, settle: float = 0.0) -> bool:  # noqa: ASYNC109 - a wake-up
        """Sleep until woken or ``timeout``; True when woken. A wake that came while nobody was
        waiting is kept, so none is lost between a claim and the next wait. ``settle``: once woken,
        wait this much longer, so that the wakes of a burst are answered by one claim (the
        caller's last claim found nothing: other processes are taking the jobs)."""
        async with self._jobs:
            if not self._pending_job_wakes:
                try:
                    await asyncio.wait_for(self._jobs.wait(), timeout)
                except TimeoutError:
                    return False
            self._pending_job_wakes = 0
        if settle > 0:
            await asyncio.sleep(settle)
            self._pending_job_wakes = 0  # the claim that follows sees what these announced
        return True

    # -- events --------------------------------------------------------------
    def events_written(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            for cb in tuple(self._event_subs.get(job_id, ())):
                cb(job_id)
            for cb in tuple(self._firehose):
                cb(job_id)

    def wake_everyone(self) -> None:
        """Wake a claimer and every event subscriber, as if each had been notified: after LISTEN
        was lost, whatever was sent meanwhile is gone, so each re-reads what it waits on."""
        self.jobs_ready()
        for job_id, subscribers in list(self._event_subs.items()):
            for cb in tuple(subscribers):
                cb(job_id)
        for cb in tuple(self._firehose):
            cb("")  # no one job: any may have changed

    def subscribe(self, job_id: str | None, cb: EventCallback) -> Callable[[], None]:
        """Call ``cb(job_id)`` when events are written for ``job_id`` (None: any job)."""
        target = self._firehose if job_id is None else self._event_subs[job_id]
        target.add(cb)

        def unsubscribe() -> None:
            target.discard(cb)
            if job_id is not None and not self._event_subs.get(job_id):
                self._event_subs.pop(job_id, None)

        return unsubscribe

    @property
    def local_only(self) -> bool:
        """True when commits must wake this process directly (no NOTIFY round trip)."""
        return True


class PgNotifier(Notifier):
    """LISTEN on one dedicated connection; reconnects with backoff and then wakes everyone,
    since notifications sent while it was away are lost."""

    def __init__(self, conninfo: str) -> None:
        super().__init__()
        self._conninfo = conninfo
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    @property
    def local_only(self) -> bool:
        return False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="genloom-listen")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connected.wait(), 10)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _listen(self) -> None:
        delay = 0.2
        lost = False
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {JOBS_CHANNEL}")
                    await conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    self.connected.set()
                    log.info("notify.listening", reconnected=lost)
                    delay = 0.2
                    if lost:
                        self.wake_everyone()  # what was sent while we were away is lost
                    else:
                        await self._wake_one()  # anything queued before we listened
                    lost = False
                    async for note in conn.notifies():
                        if note.channel == JOBS_CHANNEL:
                            await self._wake_one()
                        elif note.payload:
                            self.events_written(note.payload.split(","))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.connected.clear()
                lost = True
                log.warning("notify.listen_lost", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

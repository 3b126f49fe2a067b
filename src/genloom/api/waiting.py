"""Holding a request open for a job: wake on the job's events (the notifier, LISTEN/NOTIFY on
PostgreSQL) with a polling fallback, so waiting costs no query while nothing happens."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from genloom.app import App
from genloom.models import Job

T = TypeVar("T")

POLL_SECONDS = 1.0


async def uncancelled(aw: Awaitable[T]) -> T:
    """Finish a database read even if the client goes away meanwhile: a read cancelled halfway
    leaves its pooled connection to be torn down (aiosqlite then leaks a pending close task)."""
    return await asyncio.shield(aw)


class JobWatch:
    """A subscription to one job's events; ``wait`` returns on a wake-up, a timeout or a drain."""

    def __init__(self, app: App, job_id: str, draining: asyncio.Event | None) -> None:
        self.app, self.job_id, self.draining = app, job_id, draining
        self.woke = asyncio.Event()
        self._unsubscribe: Callable[[], None] | None = None

    def __enter__(self) -> JobWatch:
        self._unsubscribe = self.app.core.notifier.subscribe(self.job_id, lambda _: self.woke.set())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()

    @property
    def stopping(self) -> bool:
        return self.draining is not None and self.draining.is_set()

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109 - a wake-up, not a deadline
        waits = [asyncio.ensure_future(self.woke.wait())]
        if self.draining is not None:
            waits.append(asyncio.ensure_future(self.draining.wait()))
        try:
            await asyncio.wait(waits, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await w
        self.woke.clear()


async def until_terminal(app: App, job: Job, seconds: float, draining: asyncio.Event | None) -> Job:
    """The job once terminal, or as it is after ``seconds`` (or when the server starts draining)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    with JobWatch(app, job.id, draining) as watch:
        while not job.terminal and not watch.stopping:
            left = deadline - loop.time()
            if left <= 0:
                break
            await watch.wait(min(left, POLL_SECONDS))
            job = await uncancelled(app.core.jobs.get(job.id))
    return job

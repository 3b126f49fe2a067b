"""Holding a request open for a job (``Prefer: wait``): wait on the job's feed (the one reader per
job per process, see fanout.py) for a terminal event, so waiting costs no query while nothing
happens, and read the job once at the end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from genloom.api.fanout import Fanout
from genloom.app import App
from genloom.models import Job

T = TypeVar("T")


async def uncancelled(aw: Awaitable[T]) -> T:
    """Finish a database read even if the client goes away meanwhile: a read cancelled halfway
    leaves its pooled connection to be torn down (aiosqlite then leaks a pending close task)."""
    return await asyncio.shield(aw)


async def until_terminal(app: App, feeds: Fanout, job: Job, seconds: float) -> Job:
    """The job once terminal, or as it is after ``seconds`` (or when the server starts draining).

    The job is read again only when the feed has seen a terminal event (any it had seen before we
    came counts once, for a job that finished between its read and the subscription)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    checked = 0
    with feeds.subscribe(job.id) as feed:
        while not job.terminal and not feed.closed:
            if feed.finished_at is not None and feed.finished_at > checked:
                checked = feed.finished_at
                job = await uncancelled(app.core.jobs.get(job.id))
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            change = feed.waiter()
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(change, left)
            finally:
                feed.forget(change)
    if job.terminal:
        return job
    return await uncancelled(app.core.jobs.get(job.id))  # as it is now: stage, progress

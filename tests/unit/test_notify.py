"""The in-process notifier's job wake-ups: none lost between a claim and the next wait, and a
settle after an empty claim that one claim answers for every wake of the burst."""

from __future__ import annotations

import asyncio
import time

import pytest

from genloom.notify import Notifier

pytestmark = pytest.mark.anyio


async def test_a_wake_with_nobody_waiting_is_kept_for_the_next_wait() -> None:
    notifier = Notifier()
    notifier.jobs_ready()
    await asyncio.sleep(0)
    t0 = time.monotonic()
    assert await notifier.wait_for_jobs(5.0) is True
    assert time.monotonic() - t0 < 0.5
    assert await notifier.wait_for_jobs(0.02) is False  # used up


async def test_a_settled_wait_returns_after_the_settle_and_absorbs_the_bursts_wakes() -> None:
    notifier = Notifier()
    waiting = asyncio.create_task(notifier.wait_for_jobs(5.0, settle=0.2))
    await asyncio.sleep(0.02)
    t0 = time.monotonic()
    notifier.jobs_ready()
    await asyncio.sleep(0.05)
    assert not waiting.done()  # woken, and settling
    notifier.jobs_ready()  # more of the burst: the claim after the settle sees these jobs too
    notifier.jobs_ready()
    assert await waiting is True
    assert time.monotonic() - t0 >= 0.2
    assert await notifier.wait_for_jobs(0.05) is False  # nothing left over for an empty claim


async def test_a_wait_that_times_out_does_not_settle() -> None:
    notifier = Notifier()
    t0 = time.monotonic()
    assert await notifier.wait_for_jobs(0.05, settle=5.0) is False
    assert time.monotonic() - t0 < 1.0

"""Real worker processes: SIGTERM mid-job drains within the grace period and exits 0; a worker
frozen (SIGSTOP) past its lease is rescued around, and once resumed every write of its stale
attempt is refused."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from genloom.app import App
from genloom.config import Settings
from genloom.lifecycle import Status
from tests.store.helpers import event_rows, job_row, ledger_rows, make_project
from tests.worker.conftest import eventually, running, submit, wait_status
from tests.worker.procs import freeze, log_lines_about, spawn, stop_all

pytestmark = pytest.mark.anyio


async def held_by(app: App, job_id: str, worker_id: str, stage: str) -> bool:
    row = await job_row(app.core, job_id)
    return bool(row["status"] == "running" and row["lease_owner"] == worker_id and row["stage"] == stage)


async def test_sigterm_finishes_or_hands_back_what_the_worker_holds(app: App, tmp_path: Path) -> None:
    settings = app.settings.model_copy(update={"shutdown_grace_seconds": 1.0})
    project = await make_project(app.core, credits=2)
    short = await submit(app.core, project, input={"stages": [{"name": "short", "ms": 500}]})
    long = await submit(app.core, project, input={"stages": [{"name": "render", "render": 30}, {"name": "never"}]})
    worker = await spawn(settings, tmp_path / "worker.log", concurrency=2)
    await eventually(lambda: held_by(app, short.id, worker.worker_id, "short"))
    await eventually(lambda: held_by(app, long.id, worker.worker_id, "render"))
    t0 = time.monotonic()
    worker.signal(signal.SIGTERM)
    code = await worker.wait(within=10)
    took = time.monotonic() - t0
    assert code == 0, worker.logs()[-3000:]
    assert took < settings.shutdown_grace_seconds + 2.0, took
    assert worker.lines[-1] == "stopped"
    finished = await app.core.jobs.get(short.id)
    assert finished.status == Status.COMPLETED  # done within the grace period
    handed_back = await app.core.jobs.get(long.id)
    assert handed_back.status == Status.QUEUED and handed_back.lease_token is None
    assert handed_back.attempt == 0  # the interrupted attempt is not counted against it
    assert log_lines_about(worker.logs(), long.id, "job.released")
    assert [r["amount"] for r in await ledger_rows(app.core, short.id)] == [-1]


@pytest.mark.parametrize("rounds", [3])
async def test_a_frozen_worker_is_rescued_around_and_its_stale_writes_are_refused(
    app: App, tmp_path: Path, rounds: int
) -> None:
    settings: Settings = app.settings.model_copy(update={"lease_seconds": 0.6, "heartbeat_seconds": 0.1,
                                                         "poll_seconds": 0.05})
    project = await make_project(app.core, credits=rounds)
    zombie = await spawn(settings, tmp_path / "zombie.log", concurrency=1)
    reconciler = app.reconciler()
    try:
        for n in range(rounds):
            job = await submit(app.core, project, input={"stages": [
                {"name": "work", "first_ms": 1000, "deaf": True, "probe": True}, {"name": "after"}]})
            async def holding(job_id: str = job.id) -> bool:
                return await held_by(app, job_id, zombie.worker_id, "work")

            await eventually(holding)
            await freeze(zombie, settings.database_url, job.id)

            async def rescued(job_id: str = job.id) -> bool:
                return (await reconciler.tick())["rescued"] == 1

            await eventually(rescued, within=5, every=0.1)  # once its lease ran out
            async with running(app):  # another worker runs attempt 2 to the end
                done = await wait_status(app.core, job.id, Status.COMPLETED, within=10)
            assert done.attempt == 2 and done.result is not None and done.result["pid"] == os.getpid()
            zombie.signal(signal.SIGCONT)
            async def refusals(job_id: str = job.id) -> list[str]:
                return log_lines_about(zombie.logs(), job_id, "job.lease_lost", "job.write_refused")

            refused = await eventually(refusals, within=5)
            assert refused, f"round {n}"
            print(f"round {n}: the resumed worker logged", [ln.split('"event": ')[-1][:40] for ln in refused])
            await asyncio.sleep(0.3)  # whatever else the stale attempt tries, it tries now
            events = await event_rows(app.core, job.id)
            second_claim = [i for i, e in enumerate(events) if e["type"] == "started"][1]
            stale = [e for e in events[second_claim:] if (e["data"] or {}).get("pid") == zombie.pid]
            assert stale == [], stale
            assert [e["type"] for e in events].count("completed") == 1
            assert (await app.core.jobs.get(job.id)).status == Status.COMPLETED
            assert not log_lines_about(zombie.logs(), job.id, '"to_status": "completed"', '"job.completed"')
    finally:
        codes = await stop_all([zombie])
    assert codes == [0], zombie.logs()[-3000:]
    assert sum(r["amount"] for r in await ledger_rows(app.core)) == 0  # grant, less `rounds` completed jobs


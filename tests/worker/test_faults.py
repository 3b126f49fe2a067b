"""Fault injection: real worker processes over a queue of 200 jobs, SIGKILLed at random moments and
restarted, with a reconciler rescuing what they held. At the end every job is terminal, none is
lost or completed twice, and every project's ledger is what the terminal states imply."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from genloom.app import App
from genloom.lifecycle import REFUNDED, TERMINAL, Status
from tests.store.helpers import all_job_rows, event_rows, ledger_rows, make_project
from tests.worker.conftest import submit
from tests.worker.procs import ForkedWorker, fork_worker, stop_all

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

JOBS = 200
KILLS = 20
SLOTS = 2  # worker processes running at once
GRANT = 1000


async def test_killed_workers_lose_no_job_and_complete_none_twice(app: App, tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    settings = app.settings.model_copy(update={
        "lease_seconds": 1.0, "heartbeat_seconds": 0.2, "poll_seconds": 0.05, "max_attempts": 20})
    projects = [await make_project(app.core, credits=GRANT) for _ in range(2)]
    for i in range(JOBS):
        stages = [{"name": f"s{k}", "ms": rng.randint(5, 50)} for k in range(rng.randint(2, 4))]
        await submit(app.core, projects[i % 2], input={"stages": stages})

    reconciler_stop = asyncio.Event()
    reconciler = asyncio.create_task(app.reconciler().run(reconciler_stop))
    logs = iter(tmp_path / f"worker-{n}.log" for n in range(1000))
    everyone: list[ForkedWorker] = []

    async def fresh() -> ForkedWorker:
        proc = await fork_worker(settings, next(logs), concurrency=2)
        everyone.append(proc)
        return proc

    t0 = time.monotonic()
    kills = kills_holding = 0
    try:
        current = [await fresh() for _ in range(SLOTS)]
        while kills < KILLS:
            await asyncio.sleep(rng.uniform(0.05, 0.4))
            slot = rng.randrange(SLOTS)
            victim = current[slot]
            held = sum(1 for r in await all_job_rows(app.core)
                       if r["lease_owner"] == victim.worker_id and r["status"] == "running")
            victim.signal(signal.SIGKILL)
            assert await victim.wait() == -signal.SIGKILL
            kills += 1
            kills_holding += held > 0
            current[slot] = await fresh()
        killing = time.monotonic() - t0

        async def all_terminal() -> bool:
            return all(Status(r["status"]) in TERMINAL for r in await all_job_rows(app.core))

        deadline = time.monotonic() + 40
        while not await all_terminal():
            assert time.monotonic() < deadline, "jobs still not terminal"
            await asyncio.sleep(0.1)
        elapsed = time.monotonic() - t0
    finally:
        live = [p for p in everyone if p.alive]
        codes = await stop_all(live)
        reconciler_stop.set()
        await reconciler

    rows = await all_job_rows(app.core)
    events = await event_rows(app.core)
    by_job = Counter((e["job_id"], e["type"]) for e in events)
    statuses = Counter(r["status"] for r in rows)
    rescued = sum(1 for e in events if e["type"] == "retry_scheduled" and e["error_code"] == "worker_lost")
    refused = sum(p.logs().count('"job.write_refused"') + p.logs().count('"job.lease_lost"') for p in everyone)
    print(f"\nfault test (seed {seed}): {len(rows)} jobs, {dict(statuses)}, {kills} kills "
          f"({kills_holding} while holding jobs), {rescued} rescues, {refused} lease-lost lines in worker logs, "
          f"{len(everyone)} worker processes, {killing:.1f} s killing, {elapsed:.1f} s in all")

    assert codes == [0] * len(live)
    assert len(rows) == JOBS  # none lost
    assert all(Status(r["status"]) in TERMINAL for r in rows)
    assert kills >= KILLS and kills_holding >= KILLS // 2
    for r in rows:
        completed = by_job[(r["id"], "completed")]
        assert completed == (1 if r["status"] == "completed" else 0), (r["id"], r["status"], completed)
        assert r["lease_token"] is None
    for project in projects:
        mine = [r for r in rows if r["project_id"] == project.id]
        kept = sum(r["cost"] for r in mine if Status(r["status"]) not in REFUNDED)
        balance = await app.core.credits.balance(project.id, "")
        assert balance == GRANT - kept == await app.core.credits.ledger_sum(project.id, "")
        for r in mine:
            amounts = sorted(x["amount"] for x in await ledger_rows(app.core, r["id"]))
            assert amounts == ([-1, 1] if Status(r["status"]) in REFUNDED else [-1]), (r["id"], r["status"], amounts)

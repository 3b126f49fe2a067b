"""SIGTERM drain: a worker process holding three running jobs is sent SIGTERM with a grace period
(4 s) four times its lease (1 s). Two of its jobs need 2.5 s more, the third far longer. While it
drains, a reconciler ticks every 100 ms and a second worker process waits for work: the draining
worker keeps heartbeating to the end of the grace period, so no lease lapses and none of its jobs is
rescued or claimed elsewhere while it runs them; the two finish there, the third is handed back
(attempt unspent) when the grace period ends, and the process exits 0. ``pytest -s`` shows the figures."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path

import pytest

from genloom.app import App
from genloom.clock import ms
from genloom.lifecycle import Status
from tests.store.helpers import event_rows, job_row, ledger_rows, make_project
from tests.worker.conftest import app, control, eventually, fast_settings, submit  # noqa: F401 - fixtures
from tests.worker.procs import spawn, stop_all

pytestmark = pytest.mark.anyio

LEASE, HEARTBEAT, GRACE = 1.0, 0.2, 4.0
AFTER_SIGTERM = 2.5  # seconds the two short jobs still need once the signal comes


async def test_sigterm_drain(app: App, tmp_path: Path) -> None:  # noqa: F811 - the imported fixture
    settings = app.settings.model_copy(update={"lease_seconds": LEASE, "heartbeat_seconds": HEARTBEAT,
                                               "shutdown_grace_seconds": GRACE, "poll_seconds": 0.1})
    project = await make_project(app.core, credits=3)
    other = await spawn(settings.model_copy(update={"shutdown_grace_seconds": 0.5}), tmp_path / "other.log",
                        wait_go=True)  # started now, working only once the first worker holds the three jobs
    work_ms = int((AFTER_SIGTERM + 0.6) * 1000)  # from the claim: about 0.6 s pass before the signal
    jobs = [await submit(app.core, project, input={"stages": [{"name": "work", "ms": work_ms}, {"name": "after"}]})
            for _ in range(2)]
    jobs.append(await submit(app.core, project, input={"stages": [{"name": "work", "ms": 120_000}]}))
    ids = [j.id for j in jobs]
    workers = [other]
    try:
        draining = await spawn(settings, tmp_path / "draining.log", concurrency=3)
        workers.insert(0, draining)
        async def held() -> bool:
            rows = [await job_row(app.core, j) for j in ids]
            return all(r["lease_owner"] == draining.worker_id and r["stage"] == "work" for r in rows)

        await eventually(held)
        await other.go()
        reconciler = app.reconciler()
        rescued = 0
        leases: dict[str, list[int]] = {j: [] for j in ids}  # lease_expires_at as seen while the first worker held it
        lapsed: list[tuple[str, int]] = []

        async def watch() -> None:
            nonlocal rescued
            while True:
                rescued += (await reconciler.tick())["rescued"]
                now = ms(app.core.clock.now())
                for j in ids:
                    row = await job_row(app.core, j)
                    if row["lease_owner"] == draining.worker_id:
                        if row["lease_expires_at"] <= now:
                            lapsed.append((j, now - row["lease_expires_at"]))
                        if not leases[j] or leases[j][-1] != row["lease_expires_at"]:
                            leases[j].append(row["lease_expires_at"])
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0.5)
        before = {j: len(v) for j, v in leases.items()}
        t0 = time.monotonic()
        draining.signal(signal.SIGTERM)
        code = await draining.wait(within=GRACE + 10)
        took = time.monotonic() - t0
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    finally:
        codes = await stop_all(workers)
    heartbeats = {j: len(leases[j]) - before[j] for j in ids}
    rows = {j: await job_row(app.core, j) for j in ids}
    events = {j: await event_rows(app.core, j) for j in ids}
    print(f"\nSIGTERM drain (lease {LEASE:g} s, heartbeat {HEARTBEAT:g} s, grace {GRACE:g} s): exit {code} after "
          f"{took:.2f} s; heartbeats seen during the grace period per job {list(heartbeats.values())}; leases lapsed "
          f"{len(lapsed)}; rescues {rescued}; outcomes {[rows[j]['status'] for j in ids]}")
    assert code == 0 and codes[0] == 0, draining.logs()[-3000:]
    assert rescued == 0 and lapsed == []
    assert GRACE - 0.2 <= took <= GRACE + 2.0, took  # it drained for the whole grace period (the long job)
    for j in ids[:2]:  # finished where they ran, charged once, never started elsewhere
        assert rows[j]["status"] == Status.COMPLETED and rows[j]["result"]["pid"] == draining.pid, rows[j]
        assert [e["type"] for e in events[j]].count("started") == 1
        assert heartbeats[j] >= int(AFTER_SIGTERM / HEARTBEAT) // 2, heartbeats
        assert [r["amount"] for r in await ledger_rows(app.core, j)] == [-1]
    long = ids[2]
    assert heartbeats[long] >= int(GRACE / HEARTBEAT) // 2, heartbeats  # to the end of the grace period
    types = [e["type"] for e in events[long]]
    claimed, released = types.index("started"), types.index("queued", 1)
    assert "started" not in types[claimed + 1:released], types  # nobody else had it meanwhile
    assert events[long][released]["attempt"] == 0, events[long][released]  # handed back, the attempt unspent
    assert not any(e["type"] == "retry_scheduled" for j in ids for e in events[j])

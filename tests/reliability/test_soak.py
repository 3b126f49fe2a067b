"""The soak, fast variant (bench/soak.py is the long one, run by hand): 300 mixed jobs from 10
concurrent HTTP clients through one API process and two `python -m genloom worker` processes, on
SQLite and on PostgreSQL, with a Replicate stand-in answering in 0-200 ms. Afterwards every job is
terminal exactly once, event ids are strictly increasing per job as clients received them, every
ledger matches its job's terminal state, no request got a 5xx and no log says "database is locked".
``pytest -s`` shows the figures."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.soak import SoakReplicate, check, drive, grant, grants_for, make_plans

from tests.api.conftest import ADMIN_TOKEN, ApiServer, make_project, provider_env, run

JOBS = 300
CLIENTS = 10
WORKERS = 2
SEED = 20240611
#: A lighter share of rendering than the long soak: two cores run everything here.
MIX = {"copy": (0.45, "completed"), "static_ad": (0.25, "completed"), "static_ad_fail": (0.05, "failed"),
       "motion": (0.15, "completed"), "motion_bad": (0.10, "failed")}


@pytest.fixture
def replicate() -> Iterator[SoakReplicate]:
    with SoakReplicate() as fake:
        yield fake


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "genloom", "worker", "--concurrency", "4"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_soak(db_url: str, tmp_path: Path, replicate: SoakReplicate) -> None:
    settings = provider_env(replicate) | {
        "GENLOOM_ADMIN_TOKEN": ADMIN_TOKEN, "GENLOOM_RATE_LIMIT_PER_MINUTE": "1000000",
        "GENLOOM_RECONCILE_SECONDS": "5",
    }
    data = tmp_path / "data"
    api = ApiServer(db_url, data, background=False, env=settings)
    workers: list[subprocess.Popen[bytes]] = []
    logs = [api.log_path]
    try:
        api.wait_ready()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GENLOOM_")} | settings | {
            "GENLOOM_DATABASE_URL": db_url, "GENLOOM_DATA_DIR": str(data), "GENLOOM_PUBLIC_URL": api.url,
            "GENLOOM_CONFIG": str(data / "absent.toml"), "GENLOOM_LOG_LEVEL": "info", "GENLOOM_POLL_SECONDS": "0.2",
            "GENLOOM_SHUTDOWN_GRACE_SECONDS": "2",
        }
        for i in range(WORKERS):
            logs.append(tmp_path / f"worker-{i}.log")
            workers.append(start_worker(env, logs[-1]))
        keys = make_project(db_url, billing=True, name="soak")
        plans = make_plans(JOBS, SEED, mix=MIX, follow=0.15)
        grants = grants_for(plans)
        run(lambda: grant(api.url, ADMIN_TOKEN, keys.project.id, grants))
        result = run(lambda: drive(api.url, keys.secret_key, plans, CLIENTS, within=90))
        assert all(w.poll() is None for w in workers), "a worker process died"
    finally:
        for w in workers:
            if w.poll() is None:
                w.terminate()
        codes = []
        for w in workers:
            try:
                codes.append(w.wait(20))
            except subprocess.TimeoutExpired:
                w.kill()
                codes.append(w.wait(5))
        api.stop()
    report = check(db_url, keys.project.id, grants, result, logs, replicate.callback_statuses())
    report.counts["worker exit codes"] = str(codes)
    print(f"\nsoak on {db_url.split(':', 1)[0]}: {JOBS} jobs, {CLIENTS} clients, 1 API + {WORKERS} workers")
    print("\n".join(report.lines()))
    assert codes == [0] * WORKERS, "workers exit 0 on SIGTERM"
    assert report.ok, "\n".join(report.lines())

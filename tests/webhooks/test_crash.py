"""A dispatcher process SIGKILLed mid-delivery: another one finishes after the lease runs out.
Every terminal event arrives at least once, and the copies of one carry one webhook-id."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from genloom.lifecycle import Status
from genloom.webhooks.dispatcher import Dispatcher
from genloom.webhooks.endpoints import Endpoints
from tests.store.helpers import ROOT, in_state, make_project
from tests.webhooks.conftest import SCHEDULE
from tests.webhooks.helpers import completed_jobs, settled
from tests.webhooks.receiver import Answer, Receiver

pytestmark = pytest.mark.anyio
LEASE = 1.0


def _opened(path: Path) -> BinaryIO:
    return path.open("wb")


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]


async def spawn_dispatcher(db_url: str, log: Path) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENLOOM_")}
    env |= {
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")]),
        "GENLOOM_FETCH_ALLOW_NETWORKS": json.dumps(["127.0.0.0/8"]),
        "GENLOOM_WEBHOOK_TIMEOUT_SECONDS": "10",
        "GENLOOM_WEBHOOK_SCHEDULE_SECONDS": json.dumps(SCHEDULE),
        "GENLOOM_LOG_LEVEL": "warning",
    }
    with _opened(log) as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.webhooks.procs", db_url, str(LEASE), cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=err,
        )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if line.strip() != b"ready":
        proc.kill()
        await proc.wait()
        raise AssertionError(f"dispatcher process did not start: {line!r} {_tail(log)}")
    return proc


@pytest.mark.slow
async def test_a_killed_dispatcher_loses_nothing(
    core: Any, db_url: str, endpoints: Endpoints, receiver: Receiver,
    dispatch: Callable[..., Awaitable[Dispatcher]], tmp_path: Path,
) -> None:
    project = await make_project(core, billing=False)
    await endpoints.create(project.id, receiver.url)
    receiver.set_default(Answer(204, delay=3.0))  # held long enough to be killed mid-delivery
    proc = await spawn_dispatcher(db_url, tmp_path / "dispatcher.log")
    try:
        # Written after the process started: it learns of them by NOTIFY (PostgreSQL) or polling.
        jobs = await completed_jobs(core, project, 8)
        jobs += [await in_state(core, project, s) for s in (Status.FAILED, Status.CANCELLED, Status.EXPIRED)]
        in_flight = await receiver.wait_for(4, within=10)
        os.kill(proc.pid, signal.SIGKILL)
        assert await asyncio.wait_for(proc.wait(), 10) == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert len(in_flight) == 4 and receiver.count() == 4  # its whole concurrency, none answered
    receiver.set_default(Answer(204))
    await dispatch(lease_seconds=LEASE)
    rows = await settled(core, len(jobs), within=20)

    by_id: dict[str, set[str]] = defaultdict(set)  # webhook-id -> the job ids its copies named
    for arrival in receiver.got():
        by_id[arrival.webhook_id].add(arrival.body()["data"]["id"])
    assert set(by_id) == {r["id"] for r in rows}  # every delivery arrived
    assert all(len(named) == 1 for named in by_id.values())
    assert {next(iter(n)) for n in by_id.values()} == {j.id for j in jobs}  # every terminal event
    resent = {a.webhook_id for a in in_flight}
    assert receiver.count() == len(jobs) + len(resent)  # the interrupted ones again, same webhook-id
    assert {r["event_type"] for r in rows} == {"job.completed", "job.failed", "job.cancelled", "job.expired"}

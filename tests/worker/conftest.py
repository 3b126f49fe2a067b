"""Worker fixtures: fast settings (short leases, heartbeats, polls and backoff), an App over the
test registry on both databases, a worker running as a task, and waiting on the database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from genloom.app import App, open_app
from genloom.clock import ManualClock
from genloom.config import Settings
from genloom.jobs import JobSpec
from genloom.lifecycle import Status
from genloom.models import Job, Project
from genloom.runtime import Core
from genloom.testing import FakeReplicate, ReplicateScript
from genloom.worker import Worker
from tests.support import eventually
from tests.worker.pipelines import Control, make_registry

PNG = b"\x89PNG\r\n\x1a\n stand-in output"
FAST = {
    "lease_seconds": 2.0,
    "heartbeat_seconds": 0.2,
    "poll_seconds": 0.2,
    "shutdown_grace_seconds": 1.0,
    "backoff_base_seconds": 0.05,
    "backoff_cap_seconds": 0.2,
    "reconcile_seconds": 0.1,
    "provider_requery_after_seconds": 0.0,
    "concurrency": 4,
}


@pytest.fixture
def fast_settings(settings: Settings) -> Settings:
    return settings.model_copy(update=FAST)


@pytest.fixture
def control() -> Control:
    return Control()


@pytest.fixture
async def app(fast_settings: Settings, control: Control) -> AsyncIterator[App]:
    a = await open_app(fast_settings, make_registry(control), migrate=False)
    yield a
    await a.close()


@pytest.fixture
def fake() -> Iterator[FakeReplicate]:
    """A Replicate stand-in whose predictions hang until a test scripts otherwise."""
    with FakeReplicate(files={"out.png": PNG}, script=ReplicateScript(outcome="hang")) as server:
        yield server


@pytest.fixture
def replicate_settings(fast_settings: Settings, fake: FakeReplicate) -> Settings:
    """The "replicate" provider pointed at the stand-in (and loopback fetches allowed)."""
    assert fake.token is not None
    return fast_settings.model_copy(update={
        "replicate_url": fake.url, "replicate_token": SecretStr(fake.token), "fetch_allow_networks": ["127.0.0.0/8"],
    })


@pytest.fixture
async def rapp(replicate_settings: Settings, control: Control) -> AsyncIterator[App]:
    a = await open_app(replicate_settings, make_registry(control), migrate=False)
    yield a
    await a.close()


@pytest.fixture
async def mapp(replicate_settings: Settings, control: Control) -> AsyncIterator[App]:
    """``rapp`` on a ManualClock (``mapp.core.clock.advance(s)``): leases, deadlines and stalls
    only run out when the test says so."""
    a = await open_app(replicate_settings, make_registry(control), ManualClock(), migrate=False)
    yield a
    await a.close()


@contextlib.asynccontextmanager
async def running(app: App, **kwargs: Any) -> AsyncIterator[Worker]:
    """A worker of ``app`` running as a task until the block ends (then drained)."""
    stop = asyncio.Event()
    worker = app.worker(**kwargs)
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def wait_status(core: Core, job_id: str, *statuses: Status, within: float = 10.0) -> Job:
    async def check() -> Job | None:
        job = await core.jobs.get(job_id)
        return job if job.status in statuses else None

    try:
        result: Job = await eventually(check, within)
    except AssertionError:
        job = await core.jobs.get(job_id)
        raise AssertionError(f"job {job_id} is {job.status} ({job.error_code}), not {statuses}") from None
    return result


async def submit(core: Core, project: Project, type_: str = "script", **spec: Any) -> Job:
    job, _ = await core.jobs.create(project, JobSpec(type=type_, input=spec.pop("input", {}), **spec))
    return job


async def default_project(core: Core) -> Project:
    return await core.projects.get("default")

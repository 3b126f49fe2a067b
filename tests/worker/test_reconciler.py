"""The reconciler, on a manual clock: expired leases go back to the queue (or fail ``worker_lost``
once the attempts are spent); parked jobs are settled from the provider's answer, fail
``pipeline_stalled`` when the provider works too long with no deadline, expire (refunded) past
their deadline; and only one reconciler leads at a time."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from genloom.app import App
from genloom.lifecycle import Status
from genloom.models import Job
from genloom.reconciler import Reconciler
from genloom.testing import FakeReplicate, ReplicateScript
from tests.store.helpers import event_rows, ledger_rows, make_project
from tests.worker.conftest import eventually, running, submit, wait_status

pytestmark = pytest.mark.anyio


def clock(app: App) -> Any:
    return app.core.clock


async def parked(app: App, job_id: str) -> Job:
    async def check() -> Job | None:
        job = await app.core.jobs.get(job_id)
        return job if job.status == Status.RUNNING and job.lease_token is None and job.provider_ref else None

    result: Job = await eventually(check)
    return result


async def test_an_expired_lease_goes_back_to_the_queue_then_fails_when_attempts_are_spent(mapp: App) -> None:
    project = await make_project(mapp.core, credits=1)
    job = await submit(mapp.core, project, input={"stages": [{"name": "s"}]}, max_attempts=2)
    reconciler = mapp.reconciler()
    [held] = await mapp.core.queue.claim("w_dead", limit=1)  # a worker claims it, then dies
    clock(mapp).advance(mapp.settings.lease_seconds - 0.001)
    assert await reconciler.tick() == {"rescued": 0, "requeried": 0, "stalled": 0, "expired": 0}
    clock(mapp).advance(0.002)
    assert (await reconciler.tick())["rescued"] == 1
    back = await mapp.core.jobs.get(job.id)
    assert back.status == Status.QUEUED and back.attempt == 1 and back.lease_token is None
    [again] = await mapp.core.queue.claim("w_dead_too", limit=1)
    assert again.attempt == 2 == held.attempt + 1
    clock(mapp).advance(mapp.settings.lease_seconds + 1)
    assert (await reconciler.tick())["rescued"] == 1
    failed = await mapp.core.jobs.get(job.id)
    assert failed.status == Status.FAILED and failed.error_code == "worker_lost"
    events = await event_rows(mapp.core, job.id)
    assert [(e["type"], e["error_code"]) for e in events] == [
        ("queued", None), ("started", None), ("retry_scheduled", "worker_lost"), ("queued", None),
        ("started", None), ("failed", "worker_lost")]
    assert [r["amount"] for r in await ledger_rows(mapp.core, job.id)] == [-1, 1]


async def test_a_rescued_job_is_finished_by_a_live_worker(mapp: App) -> None:
    project = await make_project(mapp.core, credits=1)
    job = await submit(mapp.core, project, input={"stages": [{"name": "s"}]})
    await mapp.core.queue.claim("w_dead", limit=1)
    clock(mapp).advance(mapp.settings.lease_seconds + 1)
    async with running(mapp):
        await mapp.reconciler().tick()
        done = await wait_status(mapp.core, job.id, Status.COMPLETED)
    assert done.attempt == 2
    assert [r["amount"] for r in await ledger_rows(mapp.core, job.id)] == [-1]


async def test_a_dead_workers_job_whose_cancel_was_asked_ends_cancelled(mapp: App) -> None:
    project = await make_project(mapp.core, credits=1)
    job = await submit(mapp.core, project, input={"stages": [{"name": "s"}]})
    await mapp.core.queue.claim("w_dead", limit=1)
    await mapp.core.jobs.cancel(job.id)  # flagged: the (dead) worker was to stop at a checkpoint
    clock(mapp).advance(mapp.settings.lease_seconds + 1)
    assert (await mapp.reconciler().tick())["rescued"] == 1
    done = await mapp.core.jobs.get(job.id)
    assert done.status == Status.CANCELLED and done.error_code == "cancelled"
    assert [r["amount"] for r in await ledger_rows(mapp.core, job.id)] == [-1, 1]


@pytest.mark.parametrize("outcome", ["succeed", "fail"])
async def test_a_parked_job_is_settled_from_the_providers_answer(mapp: App, fake: FakeReplicate, outcome: str) -> None:
    fake.script = ReplicateScript(outcome=outcome, latency=0.2)  # type: ignore[arg-type]
    project = await make_project(mapp.core, credits=3)
    job = await submit(mapp.core, project, "replicate_park", input={"deadline": 900})
    async with running(mapp):
        waiting = await parked(mapp, job.id)
    assert waiting.status == Status.RUNNING  # the prediction was still running when it parked
    ref = waiting.provider_ref
    assert ref is not None
    await fake.wait_until_async(lambda: fake.prediction(ref)["status"] in ("succeeded", "failed"))
    clock(mapp).advance(1)
    counts = await mapp.reconciler().tick()
    assert counts["requeried"] == 1 and counts["stalled"] == 0
    done = await mapp.core.jobs.get(job.id)
    amounts = [r["amount"] for r in await ledger_rows(mapp.core, job.id)]
    if outcome == "succeed":
        assert done.status == Status.COMPLETED and done.result_key and done.result_key.endswith(".png")
        size = len(fake.files["out.png"])
        assert done.result == {"content_type": "image/png", "bytes": size, "provider": "replicate"}
        assert amounts == [-3]
    else:
        assert done.status == Status.FAILED and done.error_code == "provider_failed"
        assert done.error_message == "scripted model failure"
        assert amounts == [-3, 3]
    assert fake.count("create") == 1
    before = await event_rows(mapp.core, job.id)
    assert (await mapp.reconciler().tick())["requeried"] == 0  # settled jobs are not asked again
    assert await event_rows(mapp.core, job.id) == before


async def test_a_prediction_done_before_the_job_parked_is_settled_on_parking(rapp: App, fake: FakeReplicate) -> None:
    fake.script = ReplicateScript(outcome="succeed", latency=0.0)
    job = await submit(rapp.core, await rapp.core.projects.get("default"), "replicate_park", input={"deadline": 900})
    async with running(rapp):  # no callback, no reconciler: the worker asks once more after parking
        done = await wait_status(rapp.core, job.id, Status.COMPLETED, within=5)
    assert done.result_key is not None


async def test_a_parked_job_without_a_deadline_stalls_when_the_provider_keeps_working(
    mapp: App, fake: FakeReplicate
) -> None:
    project = await make_project(mapp.core, credits=3)
    job = await submit(mapp.core, project, "replicate_park", input={"deadline": None})
    async with running(mapp):
        waiting = await parked(mapp, job.id)
    assert waiting.deadline is None
    reconciler = mapp.reconciler()
    clock(mapp).advance(mapp.settings.provider_stall_after_seconds - 1)
    assert await reconciler.tick() == {"rescued": 0, "requeried": 1, "stalled": 0, "expired": 0}
    assert (await mapp.core.jobs.get(job.id)).status == Status.RUNNING
    clock(mapp).advance(2)
    assert (await reconciler.tick())["stalled"] == 1
    failed = await mapp.core.jobs.get(job.id)
    assert failed.status == Status.FAILED and failed.error_code == "pipeline_stalled"
    assert fake.cancels == [waiting.provider_ref]
    assert [r["amount"] for r in await ledger_rows(mapp.core, job.id)] == [-3, 3]


async def test_a_parked_job_past_its_deadline_expires_with_a_refund(mapp: App, fake: FakeReplicate) -> None:
    project = await make_project(mapp.core, credits=3)
    job = await submit(mapp.core, project, "replicate_park", input={"deadline": 60})
    async with running(mapp):
        waiting = await parked(mapp, job.id)
    reconciler = mapp.reconciler()
    clock(mapp).advance(59)
    assert (await reconciler.tick())["expired"] == 0
    clock(mapp).advance(mapp.settings.provider_stall_after_seconds)  # a deadline wins over the stall rule
    counts = await reconciler.tick()
    assert counts["expired"] == 1 and counts["stalled"] == 0
    expired = await mapp.core.jobs.get(job.id)
    assert expired.status == Status.EXPIRED and expired.error_code == "callback_timeout"
    assert [e["type"] for e in await event_rows(mapp.core, job.id)][-1] == "expired"
    assert [r["amount"] for r in await ledger_rows(mapp.core, job.id)] == [-3, 3]
    assert fake.cancels == [waiting.provider_ref]


async def test_only_one_reconciler_leads_at_a_time(mapp: App) -> None:
    first, second = mapp.reconciler(), mapp.reconciler()
    ttl = 1000
    assert await first.lead(ttl) and not await second.lead(ttl)
    assert await first.lead(ttl)  # the leader keeps it
    clock(mapp).advance(1.001)  # the leader stopped renewing
    assert await second.lead(ttl) and not await first.lead(ttl)


async def test_two_running_reconcilers_tick_one_at_a_time(mapp: App) -> None:
    ticks: list[str] = []

    class Counting(Reconciler):
        async def tick(self) -> dict[str, int]:
            ticks.append(self.owner)
            return await super().tick()

    a, b = Counting(mapp.core, mapp.services), Counting(mapp.core, mapp.services)
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    run_a = asyncio.create_task(a.run(stop_a))
    await eventually(lambda: _ticked(ticks), within=2)
    run_b = asyncio.create_task(b.run(stop_b))
    await asyncio.sleep(0.4)  # several periods of 0.1 s
    assert set(ticks) == {a.owner} and len(ticks) >= 3
    stop_a.set()
    await run_a  # stepping down releases the lock: the other takes over at its next period
    await eventually(lambda: _ticked_by(ticks, b.owner), within=2)
    stop_b.set()
    await run_b


async def _ticked(ticks: list[str]) -> bool:
    return bool(ticks)


async def _ticked_by(ticks: list[str], owner: str) -> bool:
    return owner in ticks

"""Cooperative cancellation: at once before a worker has the job; at the next checkpoint while a
stage runs (between stages, and within a render through should_stop); the provider prediction in
flight is cancelled at the provider; a result that comes after the cancel is discarded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from genloom.app import App
from genloom.lifecycle import Status
from genloom.pipelines.settle import cancel_job, settle
from genloom.providers.base import Prediction, PredictionStatus
from genloom.testing import FakeReplicate
from tests.store.helpers import event_rows, job_row, ledger_rows, make_project
from tests.worker.conftest import eventually, running, submit, wait_status
from tests.worker.pipelines import Control

pytestmark = pytest.mark.anyio


def types(events: list[dict[str, object]]) -> list[object]:
    return [e["type"] for e in events]


async def refunded(app: App, job_id: str) -> list[int]:
    return [r["amount"] for r in await ledger_rows(app.core, job_id)]


async def test_pending_and_queued_jobs_are_cancelled_at_once(app: App) -> None:
    project = await make_project(app.core, credits=2)
    pending = await submit(app.core, project, "sync_script")
    queued = await submit(app.core, project)
    for job in (pending, queued):
        cancelled = await app.core.jobs.cancel(job.id)
        assert cancelled.status == Status.CANCELLED and cancelled.cancel_requested
        assert await refunded(app, job.id) == [-1, 1]
    async with running(app):
        await asyncio.sleep(0.3)  # a worker looking for work finds none
    assert types(await event_rows(app.core, queued.id)) == ["queued", "cancelled"]
    assert types(await event_rows(app.core, pending.id)) == ["cancelled"]


async def test_a_running_job_stops_at_the_next_checkpoint_between_stages(app: App, control: Control) -> None:
    project = await make_project(app.core, credits=1)
    job = await submit(app.core, project, input={"stages": [
        {"name": "deaf", "gate": "release", "deaf": True}, {"name": "never"}]})
    async with running(app):
        await eventually(lambda: _ran(control, job.id, "deaf"))
        # On PostgreSQL the first stage runs while its start is being written: a cancel request
        # made within that millisecond or two is logged before stage_started. Wait for it here.
        await eventually(_logged(app, job.id, "stage_started"))
        asked = await app.core.jobs.cancel(job.id)
        assert asked.status == Status.RUNNING and asked.cancel_requested  # not immediate
        assert (await app.core.jobs.cancel(job.id)).status == Status.RUNNING  # asking twice is harmless
        control.gate("release").set()
        done = await wait_status(app.core, job.id, Status.CANCELLED, within=5)
    assert done.error_code == "cancelled" and done.lease_token is None
    assert done.error_message == "Job cancelled by user request"
    assert [s for _, s, _ in control.ran] == ["deaf"]
    assert types(await event_rows(app.core, job.id)) == [
        "queued", "started", "stage_started", "cancel_requested", "stage_completed", "cancelled"]
    assert await refunded(app, job.id) == [-1, 1]


async def test_a_long_render_stops_within_a_second_or_two(app: App, control: Control) -> None:
    project = await make_project(app.core, credits=1)
    job = await submit(app.core, project, input={"stages": [{"name": "render", "render": 30}, {"name": "never"}]})
    async with running(app):
        await eventually(lambda: _ran(control, job.id, "render"))
        await asyncio.sleep(0.1)  # inside the blocking render now
        t0 = time.monotonic()
        await app.core.jobs.cancel(job.id)
        await wait_status(app.core, job.id, Status.CANCELLED, within=5)
        took = time.monotonic() - t0
    assert took < 2.0, took
    assert control.renders_stopped == [job.id]
    assert "stage_failed" not in types(await event_rows(app.core, job.id))
    assert await refunded(app, job.id) == [-1, 1]


async def test_a_prediction_in_flight_is_cancelled_at_the_provider(rapp: App, fake: FakeReplicate) -> None:
    project = await make_project(rapp.core, credits=3)
    job = await submit(rapp.core, project, "replicate_wait")
    async with running(rapp):
        ref = await eventually(lambda: _provider_ref(rapp, job.id))
        await rapp.core.jobs.cancel(job.id)
        done = await wait_status(rapp.core, job.id, Status.CANCELLED, within=5)
    assert fake.cancels == [ref] and fake.prediction(ref)["status"] == "canceled"
    assert fake.count("create") == 1 and done.result is None
    assert await refunded(rapp, job.id) == [-3, 3]


async def test_a_cancel_met_while_parking_ends_cancelled_and_stops_the_prediction(
    rapp: App, fake: FakeReplicate, control: Control
) -> None:
    project = await make_project(rapp.core, credits=3)
    job = await submit(rapp.core, project, "replicate_park", input={"gate_before_park": "park"})
    async with running(rapp):
        ref = await eventually(lambda: _provider_ref(rapp, job.id))
        await rapp.core.jobs.cancel(job.id)  # the worker holds it: only flagged
        control.gate("park").set()
        done = await wait_status(rapp.core, job.id, Status.CANCELLED, within=5)
    assert done.lease_token is None and done.result_key is None
    assert fake.cancels == [ref]
    # the prediction's answer, arriving now, changes nothing
    answer = Prediction(ref, "succeeded", output=f"{fake.url}/files/out.png")
    late = await settle(rapp.core, rapp.services, done, answer)
    assert late.status == Status.CANCELLED and late.result_key is None
    assert await refunded(rapp, job.id) == [-3, 3]


async def test_a_callback_after_the_cancel_of_a_parked_job_is_discarded(rapp: App, fake: FakeReplicate) -> None:
    project = await make_project(rapp.core, credits=3)
    job = await submit(rapp.core, project, "replicate_park", input={"deadline": 60})
    async with running(rapp):
        parked = await wait_status(rapp.core, job.id, Status.RUNNING)
        parked = await eventually(lambda: _parked(rapp, job.id))
    ref = parked.provider_ref
    assert ref is not None and parked.deadline is not None
    cancelled = await cancel_job(rapp.core, rapp.services, job.id)  # parked: cancelled at once
    assert cancelled.status == Status.CANCELLED
    assert fake.cancels == [ref]  # and so is its prediction
    statuses: tuple[PredictionStatus, ...] = ("succeeded", "failed", "canceled")
    for status in statuses:  # whatever the provider says next
        pred = Prediction(ref, status, output=f"{fake.url}/files/out.png", error="late")
        for snapshot in (parked, cancelled):  # from a stale read or a fresh one
            after = await settle(rapp.core, rapp.services, snapshot, pred)
            assert after.status == Status.CANCELLED and after.result_key is None
    row = await job_row(rapp.core, job.id)
    assert row["status"] == "cancelled" and row["result_key"] is None
    assert types(await event_rows(rapp.core, job.id))[-1] == "cancelled"
    assert "completed" not in types(await event_rows(rapp.core, job.id))
    assert await refunded(rapp, job.id) == [-3, 3]


async def _ran(control: Control, job_id: str, stage: str) -> bool:
    return any(j == job_id and s == stage for j, s, _ in control.ran)


def _logged(app: App, job_id: str, event: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return event in types(await event_rows(app.core, job_id))
    return check


async def _provider_ref(app: App, job_id: str) -> str | None:
    return (await app.core.jobs.get(job_id)).provider_ref


async def _parked(app: App, job_id: str) -> object:
    job = await app.core.jobs.get(job_id)
    return job if job.status == Status.RUNNING and job.lease_token is None and job.provider_ref else None


async def test_a_cancel_met_by_the_park_write_is_honoured_even_if_the_watcher_saw_the_lease_go(
    rapp: App, fake: FakeReplicate, control: Control
) -> None:
    """The park write clears the lease; a watcher that reads the row just as it lands (before the
    write returns) takes that for a lost lease. The job it parked is still its own to cancel."""
    project = await make_project(rapp.core, credits=3)
    job = await submit(rapp.core, project, "replicate_park", input={"gate_before_park": "park"})
    async with running(rapp) as worker:
        ref = await eventually(lambda: _provider_ref(rapp, job.id))
        await rapp.core.jobs.cancel(job.id)  # the worker holds it: only flagged
        worker.active[job.id][1].lease_lost = True  # what the watcher concludes in that race
        control.gate("park").set()
        done = await wait_status(rapp.core, job.id, Status.CANCELLED, within=5)
    assert done.lease_token is None and done.result_key is None
    assert fake.cancels == [ref]
    assert await refunded(rapp, job.id) == [-3, 3]


async def test_a_lease_let_go_by_the_jobs_own_park_is_not_a_lost_one(app: App) -> None:
    """The heartbeat may find a lease gone just after the job's own park write cleared it. That is
    not a lost lease: cancelling the job's task then left a cancel requested meanwhile unanswered,
    its prediction running on at the provider. A lease another claim took is lost."""
    project = await make_project(app.core, credits=2)
    parking, taken = await submit(app.core, project), await submit(app.core, project)
    worker = app.worker()
    held = {j.id: j for j in await app.core.queue.claim(worker.id, limit=2)}
    token = held[parking.id].lease_token
    assert token is not None
    ctx = worker._context(held[parking.id])
    # the park's write, committed but not yet come back to the stage (ctx still holds the token)
    await app.core.queue.touch(ctx.job, values={"lease_owner": None, "lease_token": None, "lease_expires_at": None})
    assert not await worker._really_lost(ctx, token)
    ctx.job = await app.core.jobs.get(parking.id)  # ... and once it has come back
    assert not await worker._really_lost(ctx, token)

    ctx = worker._context(held[taken.id])
    await app.core.queue.release(held[taken.id])  # as a rescue would, then another worker's claim
    [again] = await app.core.queue.claim("w_other", limit=1)
    assert again.id == taken.id and again.attempt == ctx.job.attempt
    assert await worker._really_lost(ctx, str(ctx.job.lease_token))

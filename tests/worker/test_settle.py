"""Settling a parked job: of several settles at once (a provider retrying its callback, a re-query)
one fetches and stores the output and the others find the job taken; a fetch that fails leaves the
job parked for the next try; a cancel during the fetch ends the job cancelled; and a job whose
output cannot be fetched does not stop the reconciler from settling the jobs after it."""

from __future__ import annotations

import asyncio

import pytest

from genloom.app import App
from genloom.errors import BrokenUrl
from genloom.lifecycle import Status
from genloom.models import Job
from genloom.pipelines.settle import cancel_job, settle, settle_once
from genloom.providers.base import Prediction
from genloom.testing import FakeReplicate, ReplicateScript
from tests.store.helpers import event_rows, job_row, ledger_rows, make_project
from tests.worker.conftest import eventually, running, submit

pytestmark = pytest.mark.anyio


async def parked_on_a_finished_prediction(rapp: App, fake: FakeReplicate, **script: object) -> tuple[Job, Prediction]:
    """A replicate_park job left parked (the worker stopped) on a prediction that has since succeeded."""
    # The prediction must outlive the claim, the submit and the park (0.4 s on a loaded machine):
    # the job is seen parked only until the worker settles it.
    fake.script = ReplicateScript(outcome="succeed", latency=1.0, **script)  # type: ignore[arg-type]
    project = await make_project(rapp.core, credits=3)
    job = await submit(rapp.core, project, "replicate_park", input={"deadline": 60})

    async def parked() -> Job | None:
        j = await rapp.core.jobs.get(job.id)
        return j if j.status == Status.RUNNING and j.lease_token is None and j.provider_ref else None

    async with running(rapp):
        waiting: Job = await eventually(parked)
    assert waiting.provider_ref is not None
    provider = rapp.services.predictions["replicate"]

    async def finished() -> Prediction | None:
        pred = await provider.get(str(waiting.provider_ref))
        return pred if pred.terminal else None

    return waiting, await eventually(finished)


def types(events: list[dict[str, object]]) -> list[object]:
    return [e["type"] for e in events]


async def test_settles_at_once_store_the_output_once(rapp: App, fake: FakeReplicate) -> None:
    job, pred = await parked_on_a_finished_prediction(rapp, fake)
    outcomes = await asyncio.gather(*(settle_once(rapp.core, rapp.services, job, pred) for _ in range(5)))
    assert sorted(applied for _, applied in outcomes) == [False] * 4 + [True]
    done = await rapp.core.jobs.get(job.id)
    assert done.status == Status.COMPLETED and done.result_key is not None and done.lease_token is None
    assert fake.count("file") == 1
    events = types(await event_rows(rapp.core, job.id))
    assert events.count("storage_write_completed") == 1 and events.count("completed") == 1
    assert await settle_once(rapp.core, rapp.services, job, pred) == (done, False)  # later: nothing to do


async def test_a_failed_fetch_leaves_the_job_parked_for_the_next_try(rapp: App, fake: FakeReplicate) -> None:
    job, pred = await parked_on_a_finished_prediction(rapp, fake)
    fake.fail_next("file", 503)
    with pytest.raises(BrokenUrl):
        await settle(rapp.core, rapp.services, job, pred)
    row = await job_row(rapp.core, job.id)
    assert (row["status"], row["lease_owner"], row["lease_token"]) == ("running", None, None)
    done = await settle(rapp.core, rapp.services, job, pred)
    assert done.status == Status.COMPLETED and fake.count("file") == 2


async def test_a_cancel_during_the_fetch_ends_the_job_cancelled(rapp: App, fake: FakeReplicate) -> None:
    job, pred = await parked_on_a_finished_prediction(rapp, fake)
    fake.delay("file", 1.0)
    settling = asyncio.create_task(settle(rapp.core, rapp.services, job, pred))

    async def taken() -> bool:
        return str((await job_row(rapp.core, job.id))["lease_owner"] or "").startswith("settle_")

    await eventually(taken)
    asked = await cancel_job(rapp.core, rapp.services, job.id)
    assert asked.status == Status.RUNNING and asked.cancel_requested  # held: the settle honours it
    done = await settling
    assert done.status == Status.CANCELLED and done.result_key is None
    assert "completed" not in types(await event_rows(rapp.core, job.id))
    assert [r["amount"] for r in await ledger_rows(rapp.core, job.id)] == [-3, 3]


async def test_an_output_that_cannot_be_fetched_does_not_stop_the_reconciler(rapp: App, fake: FakeReplicate) -> None:
    gone, _ = await parked_on_a_finished_prediction(rapp, fake, output_file="expired.png")  # a 404 by now
    fine, _ = await parked_on_a_finished_prediction(rapp, fake)
    counts = await rapp.reconciler().tick()
    assert counts["requeried"] == 2
    assert (await rapp.core.jobs.get(fine.id)).status == Status.COMPLETED
    still = await rapp.core.jobs.get(gone.id)
    assert still.status == Status.RUNNING and still.lease_token is None  # parked: it stalls or expires in time

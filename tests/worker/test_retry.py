"""Retries: a transient error goes back to the queue with backoff and then succeeds; attempts run
out into ``failed`` (refunded once); a permanent error fails at once with its code; a prediction a
failed attempt leaves behind is cancelled at the provider; the prediction id is on the row before
anything waits on it, so an attempt that takes over after a crash reuses it instead of paying twice."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from genloom.app import App
from genloom.clock import ms
from genloom.errors import LeaseLost
from genloom.lifecycle import Status
from genloom.pipelines.context import StageContext
from genloom.store.schema import jobs as jobs_table
from genloom.testing import FakeReplicate, ReplicateScript
from tests.store.helpers import event_rows, job_row, ledger_rows, make_project
from tests.worker.conftest import running, submit, wait_status
from tests.worker.pipelines import MODEL

pytestmark = pytest.mark.anyio


async def test_a_transient_error_is_retried_after_a_backoff_then_succeeds(app: App) -> None:
    project = await make_project(app.core, credits=1)
    job = await submit(app.core, project, input={"stages": [
        {"name": "ok"}, {"name": "flaky", "fail": "transient", "fail_attempts": 1}]})
    async with running(app):
        done = await wait_status(app.core, job.id, Status.COMPLETED)
    assert done.attempt == 2 and done.error_code is None
    events = await event_rows(app.core, job.id)
    assert [(e["type"], e["stage"], e["attempt"]) for e in events] == [
        ("queued", None, 0), ("started", None, 1),
        ("stage_started", "ok", 1), ("stage_completed", "ok", 1),
        ("stage_started", "flaky", 1), ("stage_failed", "flaky", 1), ("retry_scheduled", None, 1), ("queued", None, 1),
        ("started", None, 2),
        ("stage_started", "ok", 2), ("stage_completed", "ok", 2),
        ("stage_started", "flaky", 2), ("stage_completed", "flaky", 2),
        ("completed", None, 2),
    ]
    retry = events[6]
    assert retry["error_code"] == "flaky" and retry["data"]["next_attempt"] == 2
    delay = retry["data"]["delay_ms"]
    assert 25 <= delay <= 50  # full jitter in [base/2, base] for the first retry (base 0.05 s)
    # not claimed before its backoff ran out: the second claim's clock read is past the run_after
    # the retry set (the retry event's own ts is stamped a moment after that clock read)
    run_after = (await job_row(app.core, job.id))["run_after"]
    assert retry["ts"] - 1000 <= run_after - delay <= retry["ts"] and events[8]["ts"] >= run_after
    assert [r["amount"] for r in await ledger_rows(app.core, job.id)] == [-1]


async def test_running_out_of_attempts_fails_the_job_and_refunds_once(app: App) -> None:
    project = await make_project(app.core, credits=1)
    job = await submit(app.core, project, input={"stages": [{"name": "flaky", "fail": "transient"}]})
    async with running(app):
        failed = await wait_status(app.core, job.id, Status.FAILED)
    assert failed.attempt == 3 == failed.max_attempts and failed.error_code == "flaky"
    types = [e["type"] for e in await event_rows(app.core, job.id)]
    assert types.count("started") == 3 and types.count("retry_scheduled") == 2 and types.count("stage_failed") == 3
    assert types[-1] == "failed"
    assert [r["amount"] for r in await ledger_rows(app.core, job.id)] == [-1, 1]
    assert await app.core.credits.balance(project.id, "") == 1


async def test_a_permanent_error_fails_at_once_with_its_code(app: App) -> None:
    project = await make_project(app.core, credits=1)
    job = await submit(app.core, project, input={"stages": [{"name": "bad", "fail": "permanent", "code": "nsfw"}]})
    async with running(app):
        failed = await wait_status(app.core, job.id, Status.FAILED)
    assert failed.attempt == 1 and failed.error_code == "nsfw" and failed.error_message == "bad failed for good"
    events = await event_rows(app.core, job.id)
    assert [e["type"] for e in events][-2:] == ["stage_failed", "failed"]
    assert events[-1]["error_code"] == "nsfw" and events[-1]["data"] == {"refunded": 1}
    assert [r["amount"] for r in await ledger_rows(app.core, job.id)] == [-1, 1]


async def test_a_prediction_left_behind_by_a_failed_attempt_is_cancelled(rapp: App, fake: FakeReplicate) -> None:
    # Attempt 1's cancel follows two writes and a request: the prediction must still be running
    # then (a cancel reaching a finished prediction changes nothing, as at Replicate).
    fake.script = ReplicateScript(outcome="succeed", latency=0.5)
    project = await make_project(rapp.core, credits=3)
    job = await submit(rapp.core, project, "replicate_wait", input={"fail_after_submit": True, "fail_attempts": 1})
    async with running(rapp):
        done = await wait_status(rapp.core, job.id, Status.COMPLETED)
    assert fake.count("create") == 2 and done.attempt == 2 and done.result is not None
    assert len(fake.cancels) == 1 and fake.cancels[0] != done.result["prediction"]
    assert fake.prediction(fake.cancels[0])["status"] == "canceled"  # attempt 1's, stopped
    assert done.provider_ref == done.result["prediction"]  # attempt 2's, which delivered
    assert [r["amount"] for r in await ledger_rows(rapp.core, job.id)] == [-3]


async def test_the_prediction_id_is_stored_before_waiting_and_reused_after_a_crash(
    rapp: App, fake: FakeReplicate
) -> None:
    fake.script = ReplicateScript(outcome="succeed", latency=1.0)
    project = await make_project(rapp.core, credits=3)
    job = await submit(rapp.core, project, "replicate_wait")
    # attempt 1: a worker claims the job, its stage submits ... and the process dies right there
    [claimed] = await rapp.core.queue.claim("w_doomed", limit=1)
    ctx = StageContext(job=claimed, queue=rapp.core.queue, services=rapp.services, workdir_path=rapp.settings.data_dir)
    pred = await ctx.submit("replicate", MODEL, {"prompt": "x"})
    row = await job_row(rapp.core, job.id)
    assert (row["provider"], row["provider_ref"], row["status"]) == ("replicate", pred.id, "running")
    assert row["provider_since"] is not None and row["lease_owner"] == "w_doomed"
    async with rapp.core.db.tx() as conn:  # ... and its lease runs out
        await conn.execute(update(jobs_table).where(jobs_table.c.id == job.id)
                           .values(lease_expires_at=ms(rapp.core.clock.now()) - 1))
    assert (await rapp.reconciler().tick())["rescued"] == 1
    async with running(rapp):  # attempt 2 finds the prediction on the row and waits on it
        done = await wait_status(rapp.core, job.id, Status.COMPLETED)
    assert done.attempt == 2 and done.result == {"output": f"{fake.url}/files/out.png", "prediction": pred.id}
    assert fake.count("create") == 1 and fake.cancels == []
    assert [r["amount"] for r in await ledger_rows(rapp.core, job.id)] == [-3]


async def test_a_submission_whose_lease_is_gone_is_cancelled_at_once(rapp: App, fake: FakeReplicate) -> None:
    project = await make_project(rapp.core, credits=3)
    job = await submit(rapp.core, project, "replicate_wait")
    [claimed] = await rapp.core.queue.claim("w_zombie", limit=1)
    await rapp.core.jobs.transition(job.id, Status.QUEUED)  # rescued while this worker was away
    ctx = StageContext(job=claimed, queue=rapp.core.queue, services=rapp.services, workdir_path=rapp.settings.data_dir)
    with pytest.raises(LeaseLost):
        await ctx.submit("replicate", MODEL, {"prompt": "x"})
    assert fake.count("create") == 1 and len(fake.cancels) == 1  # nobody would ever wait on it
    assert (await job_row(rapp.core, job.id))["provider_ref"] is None

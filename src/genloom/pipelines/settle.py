"""Settling a parked job from its provider's answer: the callback route, the GET that waited too
long, the worker right after parking and the reconciler all end here, so a prediction's outcome
is applied one way only, and once: a repeated callback or a re-query racing it finds the job taken.
Also the one way to cancel a job together with its provider prediction."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from genloom.clock import ms
from genloom.errors import InvalidTransition, NotFound, Unavailable
from genloom.ids import new_lease_token
from genloom.lifecycle import EventType, Status
from genloom.models import EventSpec, Job
from genloom.observability import get_logger
from genloom.pipelines.context import Services
from genloom.providers.base import Prediction
from genloom.runtime import Core
from genloom.storage.base import output_key
from genloom.store import statements as q
from genloom.store.unit import unit

T = TypeVar("T")
log = get_logger("genloom.settle")
_EXT = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "video/mp4": "mp4", "audio/wav": "wav",
        "audio/x-wav": "wav", "audio/mpeg": "mp3"}
OUTPUT_TYPES = tuple(_EXT)


def output_url(pred: Prediction) -> str | None:
    out = pred.output
    if isinstance(out, list):
        out = out[-1] if out else None
    return out if isinstance(out, str) else None


def waiting_on(job: Job, pred: Prediction) -> bool:
    """Whether ``job`` (as last read) is parked on exactly this prediction."""
    return job.status == Status.RUNNING and not job.lease_token and job.provider_ref == pred.id


async def settle(core: Core, services: Services, job: Job, pred: Prediction) -> Job:
    """Apply a terminal prediction to a parked job; returns the job unchanged if not applicable."""
    return (await settle_once(core, services, job, pred))[0]


async def settle_once(core: Core, services: Services, job: Job, pred: Prediction) -> tuple[Job, bool]:
    """``settle``, and whether this call is the one that applied the prediction: of several settles
    of one job at once (a provider retrying its callback, a re-query), exactly one does."""
    if not waiting_on(job, pred) or not pred.terminal:
        return job, False
    try:
        if pred.status == "succeeded":
            return await _store_output(core, services, job, pred)
        if pred.status == "canceled":
            return await _conclude(core, job.id, pred, Status.CANCELLED, "provider_canceled",
                                   "the provider cancelled the prediction"), True
        message = pred.error or "the provider reported a failure"
        return await _conclude(core, job.id, pred, Status.FAILED, "provider_failed", message,
                               [EventSpec(EventType.STAGE_FAILED, stage="provider", error_code="provider_failed",
                                          error_msg=message)]), True
    except (InvalidTransition, NotFound):
        return await core.jobs.get(job.id), False  # someone else settled or cancelled it first


async def _conclude(
    core: Core, job_id: str, pred: Prediction, to: Status, code: str, message: str,
    events: list[EventSpec] | None = None,
) -> Job:
    """A failed or cancelled prediction ends the job, only while the job still waits on it (the row
    is locked and checked again: a late answer about an earlier attempt's prediction changes nothing)."""
    async with unit(core.db, core.notifier) as u:
        row = await core.jobs.lock(u, job_id)
        if not waiting_on(Job.from_row(row), pred):
            raise InvalidTransition("the job is no longer waiting on this prediction", job_id=job_id)
        if row["cancel_requested"]:
            to, code, message, events = Status.CANCELLED, "cancelled", row["error_message"] or message, None
        return await core.jobs.apply(u, row, to, events=events or (), error_code=code, error_message=message)


async def _store_output(core: Core, services: Services, job: Job, pred: Prediction) -> tuple[Job, bool]:
    provider = services.predictions.get(job.provider or "")
    local_output = getattr(provider, "fetch_output", None)  # a provider on this machine: no URL
    url = output_url(pred)
    if url is None and local_output is None:
        return await _conclude(core, job.id, pred, Status.FAILED, "provider_failed",
                               "the provider returned no output"), True
    held = await _take(core, job.id, pred)
    if held is None:  # settled meanwhile, or another settle is fetching the output now
        return await core.jobs.get(job.id), False
    if held.cancel_requested:  # the result is discarded: finish ends it cancelled
        return await _through_outage(core, held, lambda: core.jobs.finish(
            job.id, lease_token=held.lease_token)), True
    workdir = Path(core.settings.data_dir) / "work" / f"{job.id}-settle-{secrets.token_hex(4)}"
    keep = asyncio.create_task(_heartbeats(core, held))
    try:
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            if local_output is not None:
                path, content_type = await local_output(pred, workdir / "output")
            else:
                assert url is not None
                fetched = await services.fetcher.fetch_to_file(url, workdir / "output", allowed_types=OUTPUT_TYPES)
                path, content_type = fetched.path, fetched.content_type
            ext = _EXT.get(content_type, "bin")
            stored = await services.storage.put_file(output_key(job.id, job.attempt, ext), path, content_type)
        except BaseException:
            keep.cancel()
            await _let_go(core, held)  # parked again: the next callback or re-query tries once more
            raise
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)
        latency = int((time.perf_counter() - t0) * 1000)
        result: dict[str, Any] = {"content_type": stored.content_type, "bytes": stored.size, "provider": job.provider}
        event = EventSpec(EventType.STORAGE_WRITE_COMPLETED, stage="store", latency_ms=latency,
                          data={"bytes": stored.size})
        # the output is stored: finish through a database outage rather than leave the lease to
        # run out (a rescue would spend an attempt and fetch it all again); heartbeats go on meanwhile
        done = await _through_outage(core, held, lambda: core.jobs.finish(
            job.id, lease_token=held.lease_token, events=[event], result_key=stored.key, result=result))
    finally:
        keep.cancel()
    log.info("job.settled", job_id=job.id, status=done.status.value, ref=pred.id)
    return done, True


async def _through_outage(core: Core, held: Job, write: Callable[[], Awaitable[T]]) -> T:
    """``write`` (fenced by the settle's lease, so repeating it is safe), retried with backoff while
    the database is unavailable, for as long as the lease could still be ours: after that the
    reconciler owns the job and the last Unavailable is raised."""
    delay, give_up = 0.1, time.monotonic() + 2 * core.queue.lease_ms / 1000
    while True:
        try:
            return await write()
        except Unavailable:
            if time.monotonic() + delay > give_up:
                raise
            log.warning("job.settle_waiting_for_database", job_id=held.id, retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def _take(core: Core, job_id: str, pred: Prediction) -> Job | None:
    """Lease the parked job to this settle while it fetches and stores the output, if the job still
    waits on ``pred`` (checked under the row lock). Other settles then find it taken, a cancel is a
    request that the finish honours, and should this process die the reconciler rescues the job
    when the lease runs out (its next attempt reuses the prediction)."""
    async with unit(core.db, core.notifier) as u:
        row = await core.jobs.lock(u, job_id)
        if not waiting_on(Job.from_row(row), pred):
            return None
        lease = {"lease_owner": f"settle_{secrets.token_hex(6)}", "lease_token": new_lease_token(),
                 "lease_expires_at": ms(core.clock.now()) + core.queue.lease_ms}
        taken = (await u.conn.execute(q.guarded_transition(job_id, [Status.RUNNING.value], lease))).mappings().one()
    return Job.from_row(taken)


async def _heartbeats(core: Core, held: Job) -> None:
    """Keep the settle's lease while a large output downloads or uploads."""
    assert held.lease_owner is not None and held.lease_token is not None
    while True:
        await asyncio.sleep(core.queue.lease_ms / 3000)
        with contextlib.suppress(Exception):  # a lost lease shows when the finish is refused
            await core.queue.heartbeat(held.lease_owner, [(held.id, held.lease_token)])


async def _let_go(core: Core, held: Job) -> None:
    """Park the job again after a failed fetch (fenced: only while the lease is still ours)."""
    unleased = {"lease_owner": None, "lease_token": None, "lease_expires_at": None}

    async def release() -> None:
        async with unit(core.db, core.notifier) as u:
            await u.conn.execute(q.guarded_transition(held.id, [Status.RUNNING.value], unleased, held.lease_token))

    try:
        await _through_outage(core, held, release)
    except Exception as exc:  # the lease runs out instead, and the reconciler rescues the job
        log.warning("job.settle_release_failed", job_id=held.id, error=str(exc))


async def cancel_job(
    core: Core, services: Services, job_id: str, project_id: str | None = None, request_id: str | None = None,
) -> Job:
    """``Jobs.cancel``, and when that ended a parked job (it waited on a provider, no worker holds
    it), cancel its prediction too: nobody else would, and it would run and bill for nothing. A
    running job's worker cancels its own prediction when it meets the request."""
    job = await core.jobs.cancel(job_id, project_id=project_id, request_id=request_id)
    provider = services.predictions.get(job.provider or "")
    if job.status == Status.CANCELLED and job.provider_ref and provider is not None:
        try:
            await provider.cancel(job.provider_ref)
        except Exception as exc:
            log.warning("provider.cancel_failed", job_id=job.id, ref=job.provider_ref, error=str(exc))
    return job

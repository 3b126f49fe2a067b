"""/v1/jobs: create (idempotent, optionally waiting), read (re-asking a silent provider), list,
cancel."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Header, Query, Request, Response

from genloom.api import schemas
from genloom.api.auth import Caller, caller, genloom, request_id
from genloom.api.docs import errors
from genloom.api.fanout import fanout_of
from genloom.api.present import decode_cursor, encode_cursor, job_out, job_path
from genloom.api.schemas import Text
from genloom.api.waiting import until_terminal
from genloom.app import App
from genloom.clock import ms
from genloom.errors import BrokenUrl, InvalidInput, NotFound
from genloom.jobs import JobSpec
from genloom.lifecycle import Status
from genloom.models import Job
from genloom.observability import get_logger
from genloom.pipelines.settle import settle

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
log = get_logger("genloom.api")
_JOB_ID = re.compile(r"[A-Za-z0-9_\-]{1,40}")
_PREFER_WAIT = re.compile(r"(?:^|[\s,;])wait\s*=\s*\"?([0-9]{1,6})\"?", re.IGNORECASE)
MAX_WAIT_SECONDS = 60
REQUERY_TIMEOUT_SECONDS = 10.0
Cursor = Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page")]


def checked_id(job_id: str) -> str:
    """Ids that cannot exist are not found without a query."""
    if not _JOB_ID.fullmatch(job_id):
        raise NotFound("no such job", job_id=job_id[:64])
    return job_id


async def present(app: App, job: Job) -> schemas.Job:
    position = await app.core.jobs.queue_position(job) if job.status in (Status.QUEUED, Status.PENDING) else None
    return job_out(job, position)


def prefer_wait(prefer: str | None) -> int:
    """Seconds asked for by ``Prefer: wait=N`` (RFC 7240), at most MAX_WAIT_SECONDS; 0 when absent."""
    match = _PREFER_WAIT.search(prefer or "")
    return min(int(match.group(1)), MAX_WAIT_SECONDS) if match else 0


async def check_webhook(app: App, url: str) -> None:
    try:
        await asyncio.wait_for(app.services.fetcher.check_url(url), app.settings.fetch_timeout_seconds)
    except TimeoutError:
        raise BrokenUrl("webhook_url: the host name could not be resolved in time") from None
    except (ValueError, UnicodeError):
        raise BrokenUrl("webhook_url: not a valid URL") from None


@router.post(
    "", status_code=201, response_model=schemas.Job,
    responses={200: {"model": schemas.Job, "description": "An idempotent repeat: the existing job"},
               202: {"model": schemas.Job, "description": "Prefer: wait elapsed before the job finished"},
               **errors(402)},
    summary="Create a job",
    description="Charges the job's price to `user` when the project is billed. A repeat with the same "
    "`idempotency_key` (body field or `Idempotency-Key` header) and user returns the existing job (200); the "
    "same key with different parameters is 422 `idempotency_key_reused`. `Prefer: wait=N` (N ≤ 60) holds the "
    "request until the job is terminal (200/201) or N seconds pass (202, follow `events_url`).",
)
async def create_job(
    body: schemas.JobCreate, request: Request, response: Response, who: Caller = Depends(caller),
    idempotency_key: Annotated[Text | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)] = None,
) -> schemas.Job:
    app = genloom(request)
    key = body.idempotency_key
    if idempotency_key is not None:
        if key is not None and key != idempotency_key:
            raise InvalidInput("the Idempotency-Key header and the idempotency_key field differ")
        key = idempotency_key
    if body.webhook_url is not None:
        await check_webhook(app, body.webhook_url)
    spec = JobSpec(type=body.type, input=body.input, mode=body.mode, user=body.user, idempotency_key=key,
                   priority=body.priority, webhook_url=body.webhook_url)
    job, created = await app.core.jobs.create(who.project, spec, request_id=request_id(request))
    wait = prefer_wait(request.headers.get("prefer"))
    if wait:
        response.headers["Preference-Applied"] = f"wait={wait}"
        if not job.terminal:
            job = await until_terminal(app, fanout_of(request), job, wait)
    response.status_code = 202 if wait and not job.terminal else 201 if created else 200
    response.headers["Location"] = job_path(job.id)
    return await present(app, job)


@router.get("", response_model=schemas.JobList, responses=errors(), summary="List jobs, newest first")
async def list_jobs(
    request: Request, who: Caller = Depends(caller),
    status: Annotated[Status | None, Query()] = None,
    type_: Annotated[Text | None, Query(alias="type", max_length=40)] = None,
    user: Annotated[Text | None, Query(max_length=200)] = None,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> schemas.JobList:
    app = genloom(request)
    before = decode_cursor(cursor) if cursor else None
    jobs = await app.core.jobs.list(who.project.id, status=status.value if status else None, type_=type_,
                                    user=user, before=before, limit=limit + 1)
    page = jobs[:limit]
    return schemas.JobList(data=[await present(app, j) for j in page],
                           next_cursor=encode_cursor(page[-1]) if len(jobs) > limit else None)


async def requery_if_parked(app: App, job: Job) -> Job:
    """A job parked on a provider for longer than provider_requery_after_seconds: ask the provider
    and settle, so a lost callback never leaves a reader waiting for the reconciler."""
    if job.status != Status.RUNNING or job.lease_token or not job.provider or not job.provider_ref:
        return job
    waited_ms = ms(app.core.clock.now()) - (job.provider_since or job.updated_at)
    provider = app.services.predictions.get(job.provider)
    if provider is None or waited_ms < app.settings.provider_requery_after_seconds * 1000:
        return job
    try:
        pred = await asyncio.wait_for(provider.get(job.provider_ref), REQUERY_TIMEOUT_SECONDS)
        if pred.terminal:
            return await settle(app.core, app.services, job, pred)
    except Exception as exc:  # the provider or the output fetch failed: answer with what we know
        log.warning("job.requery_failed", job_id=job.id, provider=job.provider, error=type(exc).__name__,
                    detail=str(exc)[:300])
        return await app.core.jobs.get(job.id)
    return job


@router.get("/{job_id}", response_model=schemas.Job, responses=errors(404), summary="Get a job")
async def get_job(job_id: str, request: Request, who: Caller = Depends(caller)) -> schemas.Job:
    app = genloom(request)
    job = await app.core.jobs.get(checked_id(job_id), who.project.id)
    return await present(app, await requery_if_parked(app, job))


async def _cancel_prediction(app: App, job: Job) -> None:
    provider = app.services.predictions.get(job.provider or "")
    if provider is None or not job.provider_ref:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(provider.cancel(job.provider_ref), REQUERY_TIMEOUT_SECONDS)


@router.post(
    "/{job_id}/cancel", status_code=202, response_model=schemas.Job, responses=errors(404, 409),
    summary="Cancel a job",
    description="Waiting and parked jobs end cancelled at once; a running job is flagged and its worker stops "
    "at the next checkpoint (`cancel_requested`). A terminal job is 409 `invalid_transition`.",
)
async def cancel_job(
    job_id: str, request: Request, background: BackgroundTasks, who: Caller = Depends(caller)
) -> schemas.Job:
    app = genloom(request)
    job = await app.core.jobs.cancel(checked_id(job_id), who.project.id, request_id=request_id(request))
    if job.status == Status.CANCELLED and job.provider_ref:  # was parked: stop paying for the prediction
        background.add_task(_cancel_prediction, app, job)
    return await present(app, job)

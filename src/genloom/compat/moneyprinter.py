"""MoneyPrinter (text-to-video jobs): /api/jobs with its camelCase job and five states.

    POST /api/jobs               {videoSubject, paragraphNumber, voice, …} -> {"job": …}
    GET  /api/jobs/{id}          {"job": {id, state, cancelRequested, resultPath, errorMessage, …At}}
    POST /api/jobs/{id}/cancel   sets the flag; the worker stops at its next checkpoint
    GET  /api/jobs/{id}/events   progress events: JSON, or SSE with Accept: text/event-stream
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from genloom.api.auth import Caller, caller, genloom, request_id
from genloom.api.routes.events import MAX_ID, job_events
from genloom.api.routes.jobs import checked_id, requery_if_parked
from genloom.app import App
from genloom.jobs import JobSpec
from genloom.lifecycle import Status
from genloom.models import Job
from genloom.pipelines.settle import cancel_job

router = APIRouter(prefix="/api/jobs", tags=["moneyprinter"])
#: MoneyPrinter has five states: waiting is "queued", and a job past its deadline has "failed".
STATE = {Status.PENDING: "queued", Status.EXPIRED: "failed"}


class GenerateRequest(BaseModel):
    """MoneyPrinter's generation payload; fields genloom has no use for are accepted and kept."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    video_subject: str = Field(alias="videoSubject", min_length=1, max_length=200)
    paragraph_number: int = Field(1, alias="paragraphNumber", ge=1, le=10)
    voice: str | None = Field(None, max_length=64)
    custom_script: list[str] | None = Field(None, alias="script", max_length=10)


def stamp(epoch_ms: int | None) -> str | None:
    """ISO 8601 UTC with milliseconds and a Z, as the document's examples."""
    if epoch_ms is None:
        return None
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def job_out(app: App, job: Job) -> dict[str, Any]:
    path = app.services.storage.local_path(job.result_key) if job.result_key else None
    return {
        "id": job.id, "state": STATE.get(job.status, job.status.value), "cancelRequested": job.cancel_requested,
        "resultPath": str(path.resolve()) if path is not None else None,
        "errorMessage": job.error_message if job.status != Status.COMPLETED else None,
        "createdAt": stamp(job.created_at), "startedAt": stamp(job.started_at),
        "completedAt": stamp(job.completed_at) if job.terminal else None,
        "progress": job.progress, "stage": job.stage,
    }


@router.post("", status_code=201, summary="MoneyPrinter: start a video job")
async def create(body: GenerateRequest, request: Request, who: Caller = Depends(caller)) -> JSONResponse:
    app = genloom(request)
    input_: dict[str, Any] = {"subject": body.video_subject, "paragraphs": body.paragraph_number}
    if body.custom_script:
        input_["script"] = body.custom_script
    job, created = await app.core.jobs.create(who.project, JobSpec(type="video", input=input_),
                                              request_id=request_id(request))
    return JSONResponse({"job": job_out(app, job)}, status_code=201 if created else 200)


@router.get("/{job_id}", summary="MoneyPrinter: a job")
async def get(job_id: str, request: Request, who: Caller = Depends(caller)) -> dict[str, Any]:
    app = genloom(request)
    job = await app.core.jobs.get(checked_id(job_id), who.project.id)
    return {"job": job_out(app, await requery_if_parked(app, job))}


@router.post("/{job_id}/cancel", summary="MoneyPrinter: cancel (cooperative for a running job)")
async def cancel(job_id: str, request: Request, who: Caller = Depends(caller)) -> dict[str, Any]:
    app = genloom(request)
    job = await cancel_job(app.core, app.services, checked_id(job_id), who.project.id, request_id(request))
    return {"job": job_out(app, job)}


@router.get("/{job_id}/events", response_model=None, summary="MoneyPrinter: progress events (JSON or SSE)")
async def events(job_id: str, request: Request, who: Caller = Depends(caller),
                 after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0) -> dict[str, Any] | StreamingResponse:
    page = await job_events(job_id, request, who, after=after, last_event_id=None, limit=1000)
    if isinstance(page, StreamingResponse):
        return page
    return {"events": [e.model_dump(exclude_none=True) for e in page.data], "lastEventId": page.last_event_id}

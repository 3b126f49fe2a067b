"""Motioness (image-to-video assets): the proxy URL, the asset read, the public event stream.

    GET /v1/{pk}/video?src=&motion=&mode=&dur=&prompt=&seed=&idem=&aspect=   create or serve
    GET /api/assets/{id}                                                     the asset
    GET /v1/{pk}/events/{asset_id}                                           SSE, resumable

Asset ids are content-addressed: the same normalised parameters give the same id, so the proxy URL
is idempotent by construction; a different ``idem`` gives a different asset.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials

from genloom.api.auth import caller, genloom, project_key, request_id
from genloom.api.fanout import fanout_of
from genloom.api.routes.events import HEARTBEAT_SECONDS, MAX_ID, resume_from, stream
from genloom.api.routes.jobs import requery_if_parked
from genloom.api.routes.results import send_stored
from genloom.app import App
from genloom.errors import Forbidden, NotFound, RateLimited
from genloom.ids import content_address
from genloom.jobs import JobSpec
from genloom.lifecycle import EventType, Status
from genloom.models import Event, Job, Project

router = APIRouter(tags=["motioness"])
#: The document's names for the canonical events that it calls differently.
EVENT_NAMES = {EventType.STORAGE_WRITE_COMPLETED: "r2_write_completed", EventType.COMPLETED: "ready"}
STATUS = {Status.COMPLETED: "ready", Status.FAILED: "failed", Status.CANCELLED: "failed", Status.EXPIRED: "failed"}


def asset_status(job: Job) -> str:
    return STATUS.get(job.status, "pending")


def event_frame(event: Event) -> bytes:
    """``id:``/``event:``/``data:`` in the document's format (stage, latency_ms, asset_id, ts, …)."""
    data: dict[str, Any] = {"asset_id": event.job_id, "ts": event.ts, "attempt": event.attempt}
    for key in ("stage", "latency_ms", "request_id", "error_code", "error_msg"):
        value = getattr(event, key)
        if value is not None:
            data[key] = value
    name = EVENT_NAMES.get(event.type, event.type.value)
    return f"id: {event.id}\nevent: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def proxy_url(pk: str, job: Job) -> str:
    inp = job.input
    query = {"src": inp.get("src"), "motion": inp.get("motion", "auto"), "mode": job.mode or "single",
             "dur": inp.get("dur", 4.0), "prompt": inp.get("prompt", ""), "seed": inp.get("seed", 0),
             "idem": inp.get("idem", ""), "aspect": inp.get("aspect", "9:16")}
    return f"/v1/{pk}/video?{urlencode(query)}"


def asset_out(pk: str, job: Job) -> dict[str, Any]:
    return {"asset_id": job.id, "status": asset_status(job), "error_code": job.error_code,
            "error_message": job.error_message, "url": proxy_url(pk, job), "events_url": f"/v1/{pk}/events/{job.id}",
            "mode": job.mode, "attempt": job.attempt, "created_at": job.created_at, "updated_at": job.updated_at}


async def _project(app: App, request: Request, pk: str) -> Project:
    """The public key's project, rate limited per key (the key is public by design)."""
    project = await app.core.projects.by_public_key(pk)
    limit = min(n for n in (project.rate_limit_per_minute, app.settings.rate_limit_per_minute) if n > 0)
    wait = request.app.state.limiter.take(f"pk:{pk}", limit)
    if wait is not None:
        raise RateLimited("too many requests for this key; slow down", retry_after=max(1, math.ceil(wait)))
    return project


def _check_origin(project: Project, src: str) -> None:
    """A public key only creates assets from its project's allowed source origins (or the sample)."""
    if src == "sample":
        return
    parts = urlsplit(src)
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    if origin not in {o.rstrip("/").lower() for o in project.allowed_origins}:
        raise Forbidden(f"this key may not use sources from {origin}; add it to the project's allowed origins",
                        code="origin_not_allowed")


@router.get("/v1/{pk}/video", summary="Motioness proxy URL: create the asset or serve its mp4")
async def proxy(
    pk: str, request: Request,
    src: Annotated[str, Query(min_length=1, max_length=2048)],
    motion: Annotated[str, Query(max_length=20)] = "auto",
    mode: Annotated[str, Query(max_length=10)] = "single",
    dur: Annotated[float, Query(gt=0, le=30)] = 4.0,
    prompt: Annotated[str, Query(max_length=2000)] = "",
    seed: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    idem: Annotated[str, Query(max_length=100)] = "",
    aspect: Annotated[str, Query(max_length=5)] = "9:16",
) -> Response:
    app = genloom(request)
    project = await _project(app, request, pk)
    _check_origin(project, src)
    input_ = {"src": src, "motion": motion, "dur": round(dur, 3), "prompt": prompt.strip(), "seed": seed,
              "idem": idem, "aspect": aspect}
    asset_id = content_address(project.id, {"mode": mode, **input_})
    job, _ = await app.core.jobs.create(project, JobSpec(type="motion", mode=mode, input=input_, job_id=asset_id),
                                        request_id=request_id(request))
    job = await requery_if_parked(app, job)
    if job.status == Status.COMPLETED and job.result_key:
        obj = await app.services.storage.stat(job.result_key)
        if obj is not None:
            return await send_stored(request, obj)
    if asset_status(job) == "failed":
        return JSONResponse({"error": {"code": job.error_code or "failed", "message": job.error_message or "",
                                       "request_id": request_id(request)}, **asset_out(pk, job)}, status_code=422)
    return JSONResponse(asset_out(pk, job), status_code=202)


@router.get("/api/assets/{asset_id}", summary="Motioness asset: status pending|ready|failed")
async def asset(
    asset_id: str, request: Request, pk: Annotated[str | None, Query(max_length=64)] = None,
    creds: HTTPAuthorizationCredentials | None = Depends(project_key),
) -> dict[str, Any]:
    """With ``?pk=`` (the public key) or as the project (secret key, or local mode)."""
    app = genloom(request)
    project = await _project(app, request, pk) if pk else (await caller(request, creds)).project
    job = await app.core.jobs.get(asset_id, project.id)
    if job.type != "motion":
        raise NotFound("no such asset")
    return asset_out(pk or project.public_key, await requery_if_parked(app, job))


@router.get("/v1/{pk}/events/{asset_id}", summary="Motioness event stream (SSE, Last-Event-ID)")
async def events(pk: str, asset_id: str, request: Request,
                 last_event_id: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None) -> StreamingResponse:
    app = genloom(request)
    project = await _project(app, request, pk)
    job = await app.core.jobs.get(asset_id, project.id)
    cursor = resume_from(request.headers.get("last-event-id"), last_event_id)
    heartbeat = float(getattr(request.app.state, "sse_heartbeat", HEARTBEAT_SECONDS))
    body = stream(app, fanout_of(request), job, cursor, heartbeat, frame=event_frame)
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


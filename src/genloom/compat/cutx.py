"""CutX (ad generation jobs): /api/generate/* and the admin retry, in CutX's state names.

    POST /api/generate/{copy|static-ad|video|tts|scrape}   {…, idempotency_key?} -> {job_id, status}
    POST /api/admin/jobs/{id}/retry                         failed|expired -> pending -> queued (charged again)

Balance check, atomic deduction, the pending row and the enqueue are the core's create; sync types
(copy, scrape) finish in the worker, async ones (static_ad, tts) wait for the provider's callback.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Header, Request
from fastapi.responses import JSONResponse

from genloom.api.auth import Caller, admin, caller, genloom, request_id
from genloom.api.routes.jobs import checked_id
from genloom.errors import InvalidInput
from genloom.jobs import JobSpec
from genloom.lifecycle import Status
from genloom.models import Job

router = APIRouter(tags=["cutx"])
STATUS = {Status.RUNNING: "processing", Status.CANCELLED: "canceled"}
Kind = Literal["copy", "static-ad", "video", "tts", "scrape"]
_TYPES = {"copy": "copy", "static-ad": "static_ad", "video": "video", "tts": "tts", "scrape": "scrape"}
_BOOK = ("idempotency_key", "user_id")


def status(job: Job) -> str:
    return STATUS.get(job.status, job.status.value)


def job_out(job: Job) -> dict[str, Any]:
    return {"job_id": job.id, "type": job.type, "status": status(job), "credits": job.cost,
            "error": job.error_message, "result": job.result,
            "result_url": f"/v1/jobs/{job.id}/result" if job.result_key else None}


def to_input(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """CutX's request fields onto the built-in types' inputs (a product id stands in for a name)."""
    fields = {k: v for k, v in body.items() if k not in _BOOK}
    name = fields.pop("product_name", None) or fields.pop("name", None) or fields.get("product_id")
    if kind in ("copy", "static-ad"):
        if not name:
            raise InvalidInput("product_name (or product_id) is required", code="invalid_input")
        out = {"name": str(name)}
        keep = ("description", "audience") if kind == "copy" else (
            "description", "audience", "headline", "body", "cta", "image_url", "aspect", "style")
        out |= {k: fields[k] for k in keep if k in fields}
        return out
    if kind == "video":
        subject = fields.get("subject") or fields.get("script_topic") or name
        if not subject:
            raise InvalidInput("subject (or product_name) is required", code="invalid_input")
        return {"subject": str(subject)} | {k: fields[k] for k in ("paragraphs", "script", "aspect") if k in fields}
    if kind == "tts":
        return {k: fields[k] for k in ("text", "voice") if k in fields}
    return {k: fields[k] for k in ("url",) if k in fields}


@router.post("/api/generate/{kind}", status_code=201, summary="CutX: start a generation job")
async def generate(
    kind: Kind, request: Request, body: Annotated[dict[str, Any], Body()], who: Caller = Depends(caller),
    user_header: Annotated[str | None, Header(alias="X-User-Id", max_length=200)] = None,
) -> JSONResponse:
    app = genloom(request)
    key = body.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 255):
        raise InvalidInput("idempotency_key must be a string of 1 to 255 characters", code="invalid_input")
    user = str(body.get("user_id") or user_header or "")
    spec = JobSpec(type=_TYPES[kind], input=to_input(kind, body), user=user, idempotency_key=key)
    job, created = await app.core.jobs.create(who.project, spec, request_id=request_id(request))
    return JSONResponse(job_out(job), status_code=201 if created else 200)


@router.post("/api/admin/jobs/{job_id}/retry", dependencies=[Depends(admin)], summary="CutX: admin retry")
async def retry(job_id: str, request: Request) -> dict[str, Any]:
    app = genloom(request)
    return job_out(await app.core.jobs.admin_retry(checked_id(job_id), request_id=request_id(request)))

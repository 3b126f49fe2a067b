"""/v1/admin/jobs: operator actions that cross projects, behind the admin token."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from genloom.api import schemas
from genloom.api.auth import admin, genloom, request_id
from genloom.api.docs import UNLIMITED, errors
from genloom.api.routes.jobs import checked_id, present

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(admin)])


@router.post(
    "/jobs/{job_id}/retry", response_model=schemas.Job, responses=errors(402, 403, 404, 409, common=UNLIMITED),
    summary="Retry a failed or expired job",
    description="failed|expired -> pending -> queued, as a new billing round (charged again). Other states: 409.",
)
async def retry(job_id: str, request: Request) -> schemas.Job:
    app = genloom(request)
    job = await app.core.jobs.admin_retry(checked_id(job_id), request_id=request_id(request))
    return await present(app, job)

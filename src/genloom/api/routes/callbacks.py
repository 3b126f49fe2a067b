"""/v1/callbacks/{provider}/{job_id}: a provider's signed completion notice (Replicate, Standard
Webhooks). Verified, then settled only if the job still waits on that very prediction, so a
repeat, a stale prediction or a job settled meanwhile changes nothing and still gets a 2xx (the
provider stops retrying)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from genloom.api import schemas
from genloom.api.auth import genloom
from genloom.api.docs import UNLIMITED, errors
from genloom.api.routes.jobs import checked_id
from genloom.errors import BrokenUrl, InvalidInput, NotFound, StageError, Unauthorized, Unavailable
from genloom.observability import get_logger
from genloom.pipelines.settle import settle_once
from genloom.providers.callbacks import verify_callback
from genloom.providers.replicate import parse_prediction

router = APIRouter(prefix="/v1/callbacks", tags=["callbacks"])
log = get_logger("genloom.api")
SIGNED_BY = {"replicate": "replicate_webhook_secret"}  # provider -> the setting holding its secrets


@router.post(
    "/{provider}/{job_id}", response_model=schemas.CallbackAck, responses=errors(404, common=UNLIMITED),
    summary="A provider's completion callback",
    description="Signed per Standard Webhooks (webhook-id, webhook-timestamp, webhook-signature); 401 "
    "`invalid_signature` otherwise. The setting may hold several space-separated secrets during a rotation.",
)
async def callback(provider: str, job_id: str, request: Request) -> schemas.CallbackAck:
    app = genloom(request)
    setting = SIGNED_BY.get(provider)
    if setting is None or provider not in app.services.predictions:
        raise NotFound(f"no callbacks are accepted for provider {provider[:40]!r}")
    secrets = getattr(app.settings, setting).get_secret_value().split()
    if not secrets:
        raise Unauthorized("callbacks are refused: no signing secret is configured", code="invalid_signature")
    body = await request.body()
    try:
        payload = verify_callback(request.headers, body, secrets)
    except ValueError:
        log.error("callback.secret_invalid", provider=provider)
        raise Unavailable("the callback secret is misconfigured") from None
    try:
        pred = parse_prediction(payload)
    except ValueError as exc:
        raise InvalidInput(f"body: {exc}") from None
    job = await app.core.jobs.get(checked_id(job_id))
    if job.provider != provider or job.provider_ref != pred.id:
        log.info("callback.ignored", job_id=job.id, ref=pred.id, reason="not the awaited prediction")
        return schemas.CallbackAck(job_id=job.id, status=job.status, applied=False)
    try:
        done, applied = await settle_once(app.core, app.services, job, pred)
    except (StageError, BrokenUrl) as exc:  # fetching the output failed: ask the provider to try again later
        log.warning("callback.settle_failed", job_id=job.id, error=exc.code, detail=exc.message)
        raise Unavailable("the output could not be fetched yet; retry later") from None
    return schemas.CallbackAck(job_id=done.id, status=done.status, applied=applied)

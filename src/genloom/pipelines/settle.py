"""Settling a parked job from its provider's answer: the callback route, the GET that waited too
long and the reconciler all end here, so a prediction's outcome is applied one way only."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from genloom.errors import InvalidTransition, NotFound
from genloom.lifecycle import EventType, Status
from genloom.models import EventSpec, Job
from genloom.observability import get_logger
from genloom.pipelines.context import Services
from genloom.providers.base import Prediction
from genloom.runtime import Core
from genloom.storage.base import output_key

log = get_logger("genloom.settle")
_EXT = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "video/mp4": "mp4", "audio/wav": "wav",
        "audio/x-wav": "wav", "audio/mpeg": "mp3"}
OUTPUT_TYPES = tuple(_EXT)


def output_url(pred: Prediction) -> str | None:
    out = pred.output
    if isinstance(out, list):
        out = out[-1] if out else None
    return out if isinstance(out, str) else None


async def settle(core: Core, services: Services, job: Job, pred: Prediction) -> Job:
    """Apply a terminal prediction to a parked job; returns the job unchanged if not applicable."""
    if job.status != Status.RUNNING or job.lease_token or job.provider_ref != pred.id or not pred.terminal:
        return job
    try:
        if pred.status == "succeeded":
            return await _store_output(core, services, job, pred)
        if pred.status == "canceled":
            return await core.jobs.transition(job.id, Status.CANCELLED, error_code="provider_canceled",
                                              error_message="the provider cancelled the prediction")
        return await core.jobs.transition(job.id, Status.FAILED, error_code="provider_failed",
                                          error_message=pred.error or "the provider reported a failure",
                                          events=[EventSpec(EventType.STAGE_FAILED, stage="provider",
                                                            error_code="provider_failed", error_msg=pred.error)])
    except (InvalidTransition, NotFound):
        return await core.jobs.get(job.id)  # someone else settled or cancelled it first


async def _store_output(core: Core, services: Services, job: Job, pred: Prediction) -> Job:
    provider = services.predictions.get(job.provider or "")
    local_output = getattr(provider, "fetch_output", None)  # a provider on this machine: no URL
    url = output_url(pred)
    if url is None and local_output is None:
        return await core.jobs.transition(job.id, Status.FAILED, error_code="provider_failed",
                                          error_message="the provider returned no output")
    fresh = await core.jobs.get(job.id)
    if fresh.cancel_requested or fresh.status != Status.RUNNING:
        return await core.jobs.finish(job.id, lease_token=None, values={}, provider_ref=pred.id)
    workdir = Path(core.settings.data_dir) / "work" / job.id / "callback"
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
    latency = int((time.perf_counter() - t0) * 1000)
    result: dict[str, Any] = {"content_type": stored.content_type, "bytes": stored.size, "provider": job.provider}
    event = EventSpec(EventType.STORAGE_WRITE_COMPLETED, stage="store", latency_ms=latency,
                      data={"bytes": stored.size})
    done = await core.jobs.finish(job.id, lease_token=None, provider_ref=pred.id, events=[event],
                                  values={"result_key": stored.key, "result": result})
    log.info("job.settled", job_id=job.id, status=done.status.value, ref=pred.id)
    return done

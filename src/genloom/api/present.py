"""How domain rows look on the wire: ISO 8601 UTC times (the store keeps epoch ms), the job's
links, and opaque list cursors."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime

from genloom.api import schemas
from genloom.errors import InvalidInput
from genloom.models import Job

_EPOCH_MS = re.compile(r"[0-9]{1,15}")  # a time the store can hold (a 20-digit one overflowed SQLite: a 500)


def iso(epoch_ms: int | None) -> datetime | None:
    return None if epoch_ms is None else datetime.fromtimestamp(epoch_ms / 1000, UTC)


def job_path(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


def job_out(job: Job, queue_position: int | None = None) -> schemas.Job:
    created = iso(job.created_at)
    updated = iso(job.updated_at)
    assert created is not None and updated is not None
    return schemas.Job(
        id=job.id, type=job.type, mode=job.mode, status=job.status, terminal=job.terminal, stage=job.stage,
        progress=max(0.0, min(1.0, job.progress or 0.0)), attempt=job.attempt, max_attempts=job.max_attempts,
        priority=job.priority, cost=job.cost, user=job.user_id, input=job.input, result=job.result,
        result_url=f"{job_path(job.id)}/result" if job.result_key else None,
        error_code=job.error_code, error_message=job.error_message, cancel_requested=job.cancel_requested,
        idempotency_key=job.idempotency_key, created_at=created, queued_at=iso(job.queued_at),
        started_at=iso(job.started_at), completed_at=iso(job.completed_at), updated_at=updated,
        queue_position=queue_position, events_url=f"{job_path(job.id)}/events",
    )


def encode_cursor(job: Job) -> str:
    return base64.urlsafe_b64encode(f"{job.created_at}:{job.id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """(created_at, id) of the last job of the previous page; InvalidInput when malformed."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, job_id = raw.split(":", 1)
        if not _EPOCH_MS.fullmatch(created) or not job_id or len(job_id) > 40 or "\x00" in job_id:
            raise ValueError(job_id)
        return int(created), job_id
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise InvalidInput("query.cursor: not a cursor this API returned", code="invalid_input") from None

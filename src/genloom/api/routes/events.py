"""/v1/jobs/{id}/events: the job's event log as JSON pages, or as a Server-Sent Events stream.

The stream replays from Last-Event-ID (ids are commit-ordered, so ``id > cursor`` never skips or
repeats), then follows live: a wake-up from the notifier (LISTEN/NOTIFY across processes on
PostgreSQL) or a poll about every second, a comment heartbeat while quiet, and the end right after a
terminal event (or at once when the job is terminal and the client has everything).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.exc import SQLAlchemyError

from genloom.api import schemas
from genloom.api.auth import Caller, caller, genloom
from genloom.api.docs import errors
from genloom.api.routes.jobs import checked_id
from genloom.api.waiting import POLL_SECONDS, JobWatch, uncancelled
from genloom.app import App
from genloom.errors import GenloomError, InvalidInput
from genloom.lifecycle import TERMINAL_EVENTS
from genloom.models import Event
from genloom.observability import get_logger

router = APIRouter(prefix="/v1/jobs", tags=["events"])
log = get_logger("genloom.api")
HEARTBEAT_SECONDS = 15.0  # create_app(sse_heartbeat=…) overrides it per app
PAGE = 1000
MAX_ID = 2**63 - 1
EventId = Annotated[int, Query(ge=0, le=MAX_ID)]
_EVENT_ID = re.compile(r"[0-9]{1,19}")  # ASCII digits only: str.isdigit() also takes "²", which int() refuses


def frame(event: Event) -> bytes:
    data = json.dumps(event.as_dict(), separators=(",", ":"))  # ASCII: no character a client splits lines on
    return f"id: {event.id}\nevent: {event.type.value}\ndata: {data}\n\n".encode()


def resume_from(header: str | None, query: int | None) -> int:
    if query is not None:
        return query
    if header is None or not header.strip():
        return 0
    text = header.strip()
    if not _EVENT_ID.fullmatch(text) or int(text) > MAX_ID:
        raise InvalidInput("Last-Event-ID must be an event id this API sent")
    return int(text)


async def stream(app: App, job_id: str, cursor: int, heartbeat: float, draining: asyncio.Event | None,
                 *, frame: Callable[[Event], bytes] = frame) -> AsyncIterator[bytes]:
    """The SSE body; ``frame`` renders one event (the compat layers use their own names)."""
    loop = asyncio.get_running_loop()
    beat_at = loop.time() + heartbeat
    yield b"retry: 1000\n\n"
    with JobWatch(app, job_id, draining) as watch:
        while not watch.stopping:
            try:
                job = await uncancelled(app.core.jobs.get(job_id))  # first: a terminal job's events are all in
                sent_any = False
                while True:
                    batch = await uncancelled(app.core.events.after(job_id, cursor, PAGE))
                    for event in batch:
                        yield frame(event)
                        cursor, sent_any = event.id, True
                        if event.type in TERMINAL_EVENTS:
                            return
                    if len(batch) < PAGE:
                        break
            except (GenloomError, SQLAlchemyError, OSError) as exc:
                log.warning("sse.read_failed", job_id=job_id, error=type(exc).__name__)
                return  # the client reconnects with Last-Event-ID
            if job.terminal:  # everything up to its terminal event is sent (or was, before a reconnect)
                return
            if sent_any:
                beat_at = loop.time() + heartbeat
            await watch.wait(min(POLL_SECONDS, beat_at - loop.time()))
            if loop.time() >= beat_at:
                yield b": ping\n\n"
                beat_at = loop.time() + heartbeat


SSE_DOC = {"content": {"text/event-stream": {"schema": {"type": "string"}}},
           "description": "JSON pages, or with `Accept: text/event-stream` an SSE stream"}


@router.get(
    "/{job_id}/events", response_model=schemas.EventList, response_model_exclude_none=True,
    responses={200: SSE_DOC, **errors(404)},
    summary="A job's events",
    description="JSON: events after `after`, oldest first. With `Accept: text/event-stream`: an SSE stream "
    "(`id`, `event`, `data` per event) resuming after `Last-Event-ID` (header) or `last_event_id`, with a comment "
    "heartbeat while quiet; it ends after a terminal event (completed, failed, cancelled, expired).",
)
async def job_events(
    job_id: str, request: Request, who: Caller = Depends(caller),
    after: EventId = 0, last_event_id: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE)] = PAGE,
) -> schemas.EventList | StreamingResponse:
    app = genloom(request)
    job = await app.core.jobs.get(checked_id(job_id), who.project.id)
    if "text/event-stream" in request.headers.get("accept", ""):
        cursor = resume_from(request.headers.get("last-event-id"), last_event_id)
        heartbeat = float(getattr(request.app.state, "sse_heartbeat", HEARTBEAT_SECONDS))
        body = stream(app, job.id, cursor, heartbeat, getattr(request.app.state, "draining", None))
        return StreamingResponse(body, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    events = await app.core.events.after(job.id, after, limit)
    return schemas.EventList(data=[schemas.Event.model_validate(e.as_dict()) for e in events],
                             last_event_id=events[-1].id if events else (after or None))

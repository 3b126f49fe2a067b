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
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.exc import SQLAlchemyError

from genloom.api import schemas
from genloom.api.auth import Caller, caller, genloom
from genloom.api.docs import errors
from genloom.api.fanout import Fanout, Frame, fanout_of
from genloom.api.routes.jobs import checked_id
from genloom.api.waiting import uncancelled
from genloom.app import App
from genloom.errors import GenloomError, InvalidInput
from genloom.lifecycle import TERMINAL_EVENTS
from genloom.models import Event, Job
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


async def stream(app: App, feeds: Fanout, job: Job, cursor: int, heartbeat: float,
                 *, frame: Frame = frame) -> AsyncIterator[bytes]:
    """The SSE body from ``cursor`` on; ``job`` was read before any event (a terminal job's events
    are then all in) and ``frame`` renders one event (the compat layers use their own names).

    Live, it follows the job's feed: from the database while behind the feed's base, then from its
    memory, everything there is in one write; a heartbeat while quiet; the end after a terminal
    event, or when the feed closes (the server drains)."""
    yield b"retry: 1000\n\n"
    try:
        if job.terminal:  # everything up to its terminal event is in: send what the client lacks
            while True:
                chunk, cursor, ended, full = await _page(app, job.id, cursor, frame)
                if chunk:
                    yield chunk
                if ended or not full:
                    return
        loop = asyncio.get_running_loop()
        beat_at = loop.time() + heartbeat
        waiting: asyncio.Future[None] | None = None
        timer: asyncio.TimerHandle | None = None

        def beat() -> None:  # one timer per heartbeat period, not one per wait: re-armed only when due
            nonlocal timer
            timer = None
            if waiting is not None and not waiting.done():
                waiting.set_result(None)

        with feeds.subscribe(job.id) as feed:
            try:
                while not feed.closed:
                    if feed.ready and cursor < feed.base:  # behind the feed: from the database
                        base = feed.base  # committed before this read, so a short page reaches it
                        chunk, cursor, ended, full = await _page(app, job.id, cursor, frame)
                        if chunk:
                            yield chunk
                            beat_at = loop.time() + heartbeat
                        if ended:
                            return
                        if not full:
                            cursor = max(cursor, base)  # nothing lies between (were ids ever purged)
                        continue  # and look again: the feed may have moved during the read
                    if feed.ready:
                        chunk, cursor, ended = feed.since(cursor, frame)
                        if chunk:
                            yield chunk
                            beat_at = loop.time() + heartbeat
                        if ended or feed.finished(cursor):
                            return
                    if loop.time() >= beat_at:
                        yield b": ping\n\n"
                        beat_at = loop.time() + heartbeat
                        continue
                    waiting = feed.waiter()  # right after looking, no await between: no change is missed
                    if timer is None:
                        timer = loop.call_at(beat_at, beat)
                    try:
                        await waiting
                    finally:
                        feed.forget(waiting)
            finally:
                if timer is not None:
                    timer.cancel()
    except (GenloomError, SQLAlchemyError, OSError) as exc:
        log.warning("sse.read_failed", job_id=job.id, error=type(exc).__name__)
        return  # the client reconnects with Last-Event-ID


async def _page(app: App, job_id: str, cursor: int, frame: Frame) -> tuple[bytes, int, bool, bool]:
    """(frames of the next page from the database up to a terminal event, the new cursor, whether
    a terminal event was among them, whether the page was full)."""
    batch = await uncancelled(app.core.events.after(job_id, cursor, PAGE))
    frames: list[bytes] = []
    for event in batch:
        frames.append(frame(event))
        cursor = event.id
        if event.type in TERMINAL_EVENTS:
            return b"".join(frames), cursor, True, False
    return b"".join(frames), cursor, False, len(batch) == PAGE


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
        body = stream(app, fanout_of(request), job, cursor, heartbeat)
        return StreamingResponse(body, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    events = await app.core.events.after(job.id, after, limit)
    return schemas.EventList(data=[schemas.Event.model_validate(e.as_dict()) for e in events],
                             last_event_id=events[-1].id if events else (after or None))

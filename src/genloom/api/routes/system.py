"""/healthz (the process answers), /readyz (the database answers and its schema is current) and
/metrics (Prometheus text; job gauges are counted at scrape time, so every replica reports the
same truth without a writer keeping them up to date)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from genloom.api import schemas
from genloom.api.auth import genloom, metrics_reader
from genloom.api.docs import errors
from genloom.api.errors import unavailable
from genloom.app import App
from genloom.clock import ms
from genloom.observability import get_logger
from genloom.store import statements as q
from genloom.store.migrate import is_current

router = APIRouter(tags=["system"])
log = get_logger("genloom.api")
READY_TIMEOUT_SECONDS = 5.0
_ERRORS_503: dict[int | str, dict[str, Any]] = {503: errors()[503]}


@router.get("/healthz", response_model=schemas.Health, summary="Liveness")
async def healthz() -> schemas.Health:
    return schemas.Health(status="ok")


async def _database_ok(app: App) -> None:
    async with app.core.db.read() as conn:
        await conn.execute(text("SELECT 1"))


@router.get("/readyz", response_model=schemas.Ready, responses=_ERRORS_503, summary="Readiness")
async def readyz(request: Request) -> schemas.Ready | JSONResponse:
    app = genloom(request)
    try:
        await asyncio.wait_for(_database_ok(app), READY_TIMEOUT_SECONDS)
    except Exception as exc:
        log.warning("readyz.database", error=type(exc).__name__)
        return unavailable(request)
    try:
        current = await asyncio.wait_for(asyncio.to_thread(is_current, app.settings.db_url), READY_TIMEOUT_SECONDS)
    except Exception as exc:
        log.warning("readyz.migrations", error=type(exc).__name__)
        return unavailable(request, "the migration state could not be read")
    if not current:
        return unavailable(request, "the database schema is not at the current migration")
    return schemas.Ready(status="ready", database="ok", migrations="current")


async def refresh_gauges(app: App) -> None:
    metrics = app.core.metrics
    async with app.core.db.read() as conn:
        counts = (await conn.execute(q.count_by_status_type())).all()
        depth = (await conn.execute(q.queue_depth(ms(app.core.clock.now())))).scalar_one()
    metrics.jobs.clear()
    for status, type_, n in counts:
        metrics.jobs.labels(status, type_).set(n)
    metrics.queue_depth.set(depth)


@router.get(
    "/metrics", response_class=Response, summary="Prometheus metrics",
    description="Every project's job counts: send `Authorization: Bearer` with the metrics token "
    "(GENLOOM_METRICS_TOKEN) or the admin token; open without one in local mode only.",
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, 401: errors()[401], **_ERRORS_503},
)
async def metrics(request: Request, _: None = Depends(metrics_reader)) -> Response:
    app = genloom(request)
    await refresh_gauges(app)
    return Response(generate_latest(app.core.metrics.registry), media_type=CONTENT_TYPE_LATEST)

"""Dashboard routes: the page and its assets, cookie login/logout, and the few reads the JSON API
does not have (counts and throughput, a job's ledger rows and deliveries, the project's live feed).

The session cookie holds the key itself (HttpOnly, SameSite=Strict), checked like a bearer token on
every request, so rotating a key logs its sessions out. A second, readable cookie carries the CSRF
token that state-changing requests must echo in X-CSRF-Token (double submit)."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy import func, select

from genloom.api.auth import CSRF_COOKIE, SESSION_COOKIE
from genloom.app import App
from genloom.clock import ms
from genloom.errors import Unauthorized
from genloom.events import FeedPosition
from genloom.lifecycle import Status
from genloom.models import Project
from genloom.projects import DEFAULT_PROJECT
from genloom.store.schema import jobs

SESSION, CSRF = SESSION_COOKIE, CSRF_COOKIE
STATIC = Path(str(files("genloom") / "dashboard" / "static"))
CSP = "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; style-src 'self'; frame-ancestors 'none'"
ASSETS = {"app.js": "text/javascript", "app.css": "text/css"}
HEARTBEAT_SECONDS = 15.0
BUCKETS, BUCKET_MS = 12, 5 * 60 * 1000

router = APIRouter(prefix="/dashboard", include_in_schema=False)


@dataclass(frozen=True)
class Viewer:
    project: Project
    admin: bool


def genloom_app(request: Request) -> App:
    app: App = request.app.state.genloom
    return app


def _local_mode(app: App) -> bool:
    try:
        return ipaddress.ip_address(app.settings.host).is_loopback
    except ValueError:
        return app.settings.host == "localhost"


async def viewer(request: Request) -> Viewer:
    """Who is looking: the admin token, a project's secret key, or (on loopback with no keys) local mode."""
    app = genloom_app(request)
    key = request.cookies.get(SESSION, "")
    admin_token = app.settings.admin_token.get_secret_value()
    if key and admin_token and hmac.compare_digest(key.encode(), admin_token.encode()):
        project_id = request.query_params.get("project") or DEFAULT_PROJECT
        return Viewer(await app.core.projects.get(project_id), admin=True)
    if key:
        try:
            return Viewer(await app.core.projects.authenticate(key), admin=False)
        except Unauthorized:
            pass
    if _local_mode(app) and not await app.core.projects.any_keys():
        return Viewer(await app.core.projects.ensure_default(), admin=False)
    raise HTTPException(401, "log in with a secret key or the admin token")


Who = Annotated[Viewer, Depends(viewer)]


def check_csrf(request: Request, token: str | None) -> None:
    cookie = request.cookies.get(CSRF, "")
    if not cookie or not token or not hmac.compare_digest(cookie.encode(), token.encode()):
        raise HTTPException(403, "missing or wrong CSRF token")


def _cookie_flags(request: Request) -> dict[str, Any]:
    return {"samesite": "strict", "secure": request.url.scheme == "https", "path": "/"}


@router.get("")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})


@router.get("/static/{name}")
async def asset(name: str) -> FileResponse:
    if name not in ASSETS:  # a fixed list: no path from the URL ever reaches the filesystem
        raise HTTPException(404, "no such asset")
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers={"Cache-Control": "no-cache"})


@router.post("/login")
async def login(request: Request, key: Annotated[str, Form(max_length=512)]) -> Response:
    app = genloom_app(request)
    admin_token = app.settings.admin_token.get_secret_value()
    ok = bool(admin_token) and hmac.compare_digest(key.encode(), admin_token.encode())
    if not ok:
        try:
            await app.core.projects.authenticate(key)
            ok = True
        except Unauthorized:
            ok = False
    if not ok:
        return RedirectResponse("/dashboard?failed=1#/", status_code=303)
    response = RedirectResponse("/dashboard#/", status_code=303)
    flags = _cookie_flags(request)
    response.set_cookie(SESSION, key, httponly=True, max_age=12 * 3600, **flags)
    response.set_cookie(CSRF, secrets.token_urlsafe(24), httponly=False, max_age=12 * 3600, **flags)
    return response


@router.post("/logout")
async def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    check_csrf(request, csrf)
    response = RedirectResponse("/dashboard#/", status_code=303)
    response.delete_cookie(SESSION, path="/")
    response.delete_cookie(CSRF, path="/")
    return response


@router.get("/api/me")
async def me(request: Request, who: Who) -> dict[str, Any]:
    csrf = request.cookies.get(CSRF, "")
    return {"project_id": who.project.id, "admin": who.admin, "csrf": csrf}


@router.get("/api/stats")
async def stats(request: Request, who: Who) -> dict[str, Any]:
    """Jobs per status, queue depth, and completions per 5 minutes over the last hour."""
    app = genloom_app(request)
    now = ms(app.core.clock.now())
    start = now - BUCKETS * BUCKET_MS
    async with app.core.db.read() as conn:
        counts: dict[str, int] = dict((await conn.execute(
            select(jobs.c.status, func.count()).where(jobs.c.project_id == who.project.id).group_by(jobs.c.status)
        )).tuples().all())
        done = (await conn.execute(
            select(jobs.c.completed_at).where(jobs.c.project_id == who.project.id,
                                              jobs.c.status == Status.COMPLETED.value, jobs.c.completed_at >= start)
        )).scalars().all()
    throughput = [0] * BUCKETS
    for t in done:
        throughput[min(BUCKETS - 1, (int(t) - start) // BUCKET_MS)] += 1
    return {"counts": counts, "queue_depth": counts.get(Status.QUEUED.value, 0), "throughput": throughput}


@router.get("/api/jobs/{job_id}/ledger")
async def job_ledger(request: Request, job_id: str, who: Who) -> dict[str, Any]:
    app = genloom_app(request)
    await app.core.jobs.get(job_id, who.project.id)  # 404 for another project's job
    rows = await app.core.credits.for_job(job_id)
    return {"data": [{"reason": r["reason"], "round": r["round"], "amount": r["amount"], "note": r.get("note"),
                      "created_at": _iso(r["created_at"])} for r in rows]}


@router.get("/api/jobs/{job_id}/deliveries")
async def job_deliveries(request: Request, job_id: str, who: Who) -> dict[str, Any]:
    app = genloom_app(request)
    await app.core.jobs.get(job_id, who.project.id)
    rows = await app.deliveries.list(who.project.id, job_id=job_id, limit=100)
    return {"data": [d.as_dict() | {"created_at": _iso(d.created_at)} for d in rows]}


@router.get("/feed")
async def feed(request: Request, who: Who) -> StreamingResponse:
    """The project's events as SSE, from now on (the list page refreshes the rows they name)."""
    app = genloom_app(request)
    cursor = await app.core.events.feed_head(who.project.id)
    return StreamingResponse(_feed(request, app, who.project.id, cursor), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _feed(request: Request, app: App, project_id: str, cursor: FeedPosition) -> AsyncIterator[bytes]:
    woken = asyncio.Event()
    unsubscribe = app.core.notifier.subscribe(None, lambda _job_id: woken.set())
    idle = 0.0
    try:
        yield b": connected\n\n"
        while not await request.is_disconnected():
            events, cursor = await app.core.events.feed(project_id, cursor, limit=500)
            for event in events:
                data = json.dumps({"job_id": event.job_id, "stage": event.stage, "ts": event.ts})
                yield f"id: {event.id}\nevent: {event.type.value}\ndata: {data}\n\n".encode()
                idle = 0.0
            woken.clear()
            try:
                await asyncio.wait_for(woken.wait(), 1.0)  # polling fallback when no wake-up comes
            except TimeoutError:
                idle += 1.0
                if idle >= HEARTBEAT_SECONDS:
                    idle = 0.0
                    yield b": heartbeat\n\n"
    finally:
        unsubscribe()


def _iso(value: int | None) -> str | None:
    return None if value is None else datetime.fromtimestamp(value / 1000, UTC).isoformat(timespec="milliseconds")

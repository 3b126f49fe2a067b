"""The API application: ``create_app`` builds it, its lifespan opens genloom (and by default runs
the worker and reconciler in the same process, as ``genloom serve`` does), ``run_server`` serves
it with uvicorn and lets open streams end cleanly on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Sequence
from types import FrameType

import uvicorn
from fastapi import FastAPI

from genloom.api import errors
from genloom.api.auth import RateLimiter
from genloom.api.edge import Edge, body_limit
from genloom.api.fanout import Fanout, fanout_gauges
from genloom.api.openapi import GenloomAPI
from genloom.api.protocol import http_protocol
from genloom.api.routes import admin, callbacks, credits, events, jobs, results, system, uploads, webhooks
from genloom.app import open_app
from genloom.compat import cutx, moneyprinter, motioness
from genloom.config import Settings
from genloom.dashboard import routes as dashboard
from genloom.observability import Metrics, configure_logging, get_logger
from genloom.pipelines.builtin import builtin_registry
from genloom.pipelines.registry import Registry

log = get_logger("genloom.api")
API_VERSION = "1.0.0"
DESCRIPTION = """The genloom job engine, version 1 of its HTTP API.

Authenticate with a project secret key, `Authorization: Bearer sk_…` (the admin routes take the
admin token instead). Every error has one shape, `{"error": {"code", "message", "request_id"}}`, and every
response carries `X-Request-ID` (yours, when you send a sane one)."""


def create_app(
    settings: Settings | None = None, *, background: bool = True, registry: Registry | None = None,
    sse_heartbeat: float = events.HEARTBEAT_SECONDS,
) -> FastAPI:
    """The FastAPI app over ``settings``; ``background`` runs the worker and reconciler in-process."""
    settings = settings or Settings()
    types = registry or builtin_registry(settings.prices)

    @contextlib.asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        gl = await open_app(settings, types)
        api.state.genloom = gl
        api.state.draining = draining = asyncio.Event()
        api.state.loop = asyncio.get_running_loop()
        api.state.fanout = feeds = Fanout(gl.core)
        closer = asyncio.create_task(feeds.close_when(draining), name="genloom-fanout-close")
        fanout_gauges(feeds, gl.core.metrics)
        stop = asyncio.Event()
        if background:
            gl.start_background(stop)
        log.info("api.started", host=settings.host, port=settings.port, background=background)
        try:
            yield
        finally:
            draining.set()
            await closer
            stop.set()
            await gl.wait_background()
            await gl.close()
            log.info("api.stopped")

    api = GenloomAPI(title="genloom", version=API_VERSION, description=DESCRIPTION, lifespan=lifespan)
    api.registry = types
    api.state.limiter = RateLimiter()
    api.state.sse_heartbeat = sse_heartbeat
    errors.install(api)
    for module in (jobs, events, results, uploads, credits, admin, callbacks, system, webhooks):
        api.include_router(module.router)
    for layer in (motioness, moneyprinter, cutx):  # the products' own routes, over the same core
        api.include_router(layer.router)
    api.include_router(dashboard.router)

    def metrics() -> Metrics | None:
        gl = getattr(api.state, "genloom", None)
        return gl.core.metrics if gl is not None else None

    api.add_middleware(Edge, limit=body_limit(settings), metrics=metrics)
    return api


class Server(uvicorn.Server):
    """uvicorn, plus: on SIGINT/SIGTERM the app starts draining at once, so SSE streams and
    ``Prefer: wait`` holds end cleanly instead of holding the shutdown until they time out."""

    def __init__(self, config: uvicorn.Config, api: FastAPI) -> None:
        super().__init__(config)
        self.api = api

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        draining = getattr(self.api.state, "draining", None)
        loop = getattr(self.api.state, "loop", None)
        if draining is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(draining.set)


def make_server(settings: Settings, api: FastAPI) -> Server:
    config = uvicorn.Config(
        api, host=settings.host, port=settings.port, log_config=None, access_log=False, lifespan="on",
        timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_seconds)), server_header=False,
        http=http_protocol(),  # httptools with a bound on the request head
    )
    return Server(config, api)


def run_server(
    settings: Settings | None = None, *, background: bool = True, sockets: Sequence[socket.socket] | None = None,
    sse_heartbeat: float = events.HEARTBEAT_SECONDS,
) -> None:
    """Serve the API on settings.host:settings.port (or on already bound ``sockets``) until a signal."""
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_json)
    api = create_app(settings, background=background, sse_heartbeat=sse_heartbeat)
    make_server(settings, api).run(sockets=list(sockets) if sockets else None)

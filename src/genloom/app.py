"""The assembled application: the core plus the adapters stages use (storage, fetcher, providers)
and the background loops (worker, reconciler). ``genloom serve``, ``genloom worker``, the demo and
the tests all start here, so there is one way to wire the system."""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from genloom.clock import Clock
from genloom.config import Settings
from genloom.fetch import SafeFetcher
from genloom.observability import get_logger
from genloom.pipelines.builtin import builtin_registry
from genloom.pipelines.context import Services
from genloom.pipelines.registry import Registry
from genloom.pipelines.settle import settle
from genloom.providers.base import ChatProvider, Prediction, PredictionProvider
from genloom.providers.local import LocalPredictions
from genloom.providers.openai_compat import OpenAIChatProvider
from genloom.providers.replicate import ReplicateProvider
from genloom.reconciler import Reconciler
from genloom.runtime import Core, open_core
from genloom.storage.local import LocalStorage
from genloom.storage.s3 import S3Storage
from genloom.store.migrate import upgrade
from genloom.webhooks.deliveries import Deliveries
from genloom.webhooks.dispatcher import Dispatcher
from genloom.webhooks.endpoints import Endpoints, webhook_fetcher
from genloom.worker import Worker

log = get_logger("genloom.app")


@dataclass
class App:
    core: Core
    registry: Registry
    services: Services
    endpoints: Endpoints
    deliveries: Deliveries
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        return self.core.settings

    def worker(self, **kwargs: Any) -> Worker:
        return Worker(self.core, self.registry, self.services, **kwargs)

    def reconciler(self) -> Reconciler:
        return Reconciler(self.core, self.services)

    def start_background(self, stop: asyncio.Event, *, worker: bool = True, reconciler: bool = True,
                         webhooks: bool = True, concurrency: int | None = None) -> None:
        """Run the worker, reconciler and webhook dispatcher as tasks of this process until ``stop``."""
        if worker:
            w = self.worker(concurrency=concurrency)
            self.tasks.append(asyncio.create_task(w.run(stop), name="genloom-worker"))
        if reconciler:
            self.tasks.append(asyncio.create_task(self.reconciler().run(stop), name="genloom-reconciler"))
        if webhooks:
            dispatcher = Dispatcher(self.core, self.settings, metrics=self.core.metrics)
            self.tasks.append(asyncio.create_task(dispatcher.run(stop), name="genloom-webhooks"))

    async def wait_background(self) -> None:
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks.clear()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await self.wait_background()
        local = self.services.predictions.get("local")
        if isinstance(local, LocalPredictions):
            await local.close()
        await self.services.http.aclose()
        if self.services.executor is not None:
            self.services.executor.shutdown(wait=False, cancel_futures=True)
        await self.core.close()


def build_storage(settings: Settings) -> Any:
    if settings.storage == "s3":
        return S3Storage(settings.s3_bucket, settings.s3_endpoint_url or None, settings.s3_region,
                         settings.s3_access_key.get_secret_value(), settings.s3_secret_key.get_secret_value(),
                         settings.s3_prefix, path_style=settings.s3_path_style)
    return LocalStorage(Path(settings.data_dir) / "storage")


async def open_app(
    settings: Settings | None = None, registry: Registry | None = None, clock: Clock | None = None,
    *, migrate: bool | None = None,
) -> App:
    """Migrate (by default on SQLite, or when ``settings.auto_migrate``), open the core, build services."""
    settings = settings or Settings()
    await asyncio.to_thread(Path(settings.data_dir).mkdir, parents=True, exist_ok=True)
    if migrate if migrate is not None else settings.auto_migrate:
        await asyncio.to_thread(upgrade, settings.db_url)
    registry = registry or builtin_registry(settings.prices)
    core = await open_core(settings, registry, clock)
    await core.projects.ensure_default(billing=settings.default_project_billing)
    http = httpx.AsyncClient(timeout=httpx.Timeout(30.0), follow_redirects=False)
    executor = ThreadPoolExecutor(max_workers=max(2, settings.concurrency), thread_name_prefix="genloom-stage")
    fetcher = SafeFetcher(settings.fetch_allow_networks, max_bytes=settings.fetch_max_bytes,
                          timeout=settings.fetch_timeout_seconds)
    services = Services(settings=settings, storage=build_storage(settings), fetcher=fetcher, http=http,
                        executor=executor)
    services.predictions = _predictions(settings, http, executor, core, services)
    services.chat = _chat(settings, http)
    endpoints = Endpoints(core.db, core.clock, webhook_fetcher(settings))
    return App(core=core, registry=registry, services=services, endpoints=endpoints,
               deliveries=Deliveries(core.db, core.clock))


def _predictions(
    settings: Settings, http: httpx.AsyncClient, executor: ThreadPoolExecutor, core: Core, services: Services
) -> dict[str, PredictionProvider]:
    async def settle_local(pred: Prediction) -> None:
        job = await core.jobs.by_provider_ref("local", pred.id)
        if job is not None:
            await settle(core, services, job, pred)

    out: dict[str, PredictionProvider] = {
        "local": LocalPredictions(Path(settings.data_dir) / "predictions", executor, on_done=settle_local),
    }
    token = settings.replicate_token.get_secret_value()
    if token:
        out["replicate"] = ReplicateProvider(http, settings.replicate_url, token=token)
    return out


def _chat(settings: Settings, http: httpx.AsyncClient) -> ChatProvider | None:
    if not settings.chat_url:
        return None
    return OpenAIChatProvider(http, settings.chat_url, settings.chat_api_key.get_secret_value(), settings.chat_model)

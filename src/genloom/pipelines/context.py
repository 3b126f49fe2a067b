"""What a stage sees while it runs: input, earlier stages' outputs, services, and the job's
checkpoints (cancel, lease lost), progress, off-loop execution and provider submissions."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from genloom.clock import ms
from genloom.errors import JobCancelled
from genloom.models import EventSpec, Job
from genloom.providers.base import ChatProvider, Prediction, PredictionProvider
from genloom.queue import Queue

T = TypeVar("T")


class Parked(Exception):
    """The job now waits for a provider's callback; the worker lets go of it."""


@dataclass
class Services:
    """What stages may use; built once by the composition root."""

    settings: Any
    storage: Any
    fetcher: Any
    http: httpx.AsyncClient
    predictions: dict[str, PredictionProvider] = field(default_factory=dict)
    chat: ChatProvider | None = None
    executor: Any = None


@dataclass
class StageContext:
    job: Job
    queue: Queue
    services: Services
    workdir: Path
    artefacts: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    result_key: str | None = None
    stop_flag: threading.Event = field(default_factory=threading.Event)
    _progress: float = 0.0
    _events: list[EventSpec] = field(default_factory=list)

    @property
    def input(self) -> dict[str, Any]:
        return self.job.input

    @property
    def mode(self) -> str | None:
        return self.job.mode

    # -- checkpoints ---------------------------------------------------------
    async def checkpoint(self) -> None:
        """Raise JobCancelled if a cancel was requested (the watcher reads it about every second)."""
        if self.stop_flag.is_set() or self.job.cancel_requested:
            raise JobCancelled()

    def should_stop(self) -> bool:
        """For code running off the loop (renderers): poll this between frames."""
        return self.stop_flag.is_set()

    def progress(self, fraction: float) -> None:
        """Record progress (0..1); the watcher writes it to the job at most about once a second."""
        self._progress = max(0.0, min(1.0, fraction))

    def progress_cb(self, lo: float = 0.0, hi: float = 1.0) -> Callable[[int, int], None]:
        """A (done, total) callback mapping a stage's own progress into [lo, hi] of the job's."""

        def cb(done: int, total: int) -> None:
            self.progress(lo + (hi - lo) * (done / max(total, 1)))

        return cb

    async def run_blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run CPU-bound work in the worker's pool so the event loop never blocks."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.services.executor, lambda: fn(*args, **kwargs))

    async def emit(self, spec: EventSpec, **values: Any) -> None:
        """Write an event for this job now (fenced by the lease)."""
        self.job = await self.queue.touch(self.job, values=values or None, events=[spec])

    # -- providers -----------------------------------------------------------
    async def submit(
        self, provider_name: str, model: str, input: dict[str, Any], *, webhook: bool = False
    ) -> Prediction:
        """Submit a prediction and store its id (one transaction) before anything waits on it,
        so a crash never leads to a second paid submission for the same attempt."""
        provider = self.services.predictions[provider_name]
        callback = None
        if webhook:
            callback = f"{self.services.settings.base_url}/v1/callbacks/{provider_name}/{self.job.id}"
        pred = await provider.submit(model, input, webhook_url=callback)
        self.job = await self.queue.touch(self.job, values={
            "provider": provider_name, "provider_ref": pred.id, "provider_since": ms(self.queue.clock.now()),
        })
        return pred

    async def park(self, deadline_seconds: float) -> None:
        """Let go of the job until the provider calls back (or the deadline passes)."""
        now = ms(self.queue.clock.now())
        self.job = await self.queue.touch(self.job, values={
            "deadline": now + int(deadline_seconds * 1000), "lease_owner": None, "lease_token": None,
            "lease_expires_at": None,
        })
        raise Parked()

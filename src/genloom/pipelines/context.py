"""What a stage sees while it runs: input, earlier stages' outputs, services, and the job's
checkpoints (cancel, lease lost), progress, off-loop execution and provider submissions."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from genloom.clock import ms
from genloom.errors import JobCancelled, LeaseLost, Unavailable
from genloom.lifecycle import EventType
from genloom.models import EventSpec, Job
from genloom.observability import get_logger
from genloom.providers.base import ChatProvider, Prediction, PredictionProvider
from genloom.queue import Queue

if TYPE_CHECKING:
    from genloom.pipelines.registry import Stage

T = TypeVar("T")
log = get_logger("genloom.stage")
#: Prediction states a retried attempt does not reuse (it submits again).
_DEAD = frozenset({"failed", "canceled"})


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
    #: where this attempt's files go (``workdir``), removed when the attempt ends
    workdir_path: Path
    artefacts: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    result_key: str | None = None
    stop_flag: threading.Event = field(default_factory=threading.Event)
    #: set by the worker when this attempt's lease is gone: stop, and write or cancel nothing
    lease_lost: bool = False
    #: the attempt has ended (completed, parked, failed): its lease is no longer expected to be held
    finished: bool = False
    #: the stage running now and when it began (perf_counter), for the event ``park`` writes
    stage: Stage | None = None
    stage_t0: float = 0.0
    #: events the worker has not written yet (a stage's completion rides with the next write)
    pending: list[EventSpec] = field(default_factory=list)
    _progress: float = 0.0
    _workdir_made: bool = False

    @property
    def workdir(self) -> Path:
        """This attempt's scratch directory, made on first use: a stage that writes no files
        costs no directories (three mkdirs and an rmtree a job, on the loop, added up)."""
        if not self._workdir_made:
            self.workdir_path.mkdir(parents=True, exist_ok=True)
            self._workdir_made = True
        return self.workdir_path

    @property
    def workdir_made(self) -> bool:
        return self._workdir_made

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
        """Run CPU-bound work in the worker's pool so the event loop never blocks. Work that
        obeyed ``should_stop`` (raising InterruptedError) is a cancellation, not a failure."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.services.executor, lambda: fn(*args, **kwargs))
        except InterruptedError:
            if self.stop_flag.is_set():
                raise JobCancelled() from None
            raise

    async def emit(self, spec: EventSpec | None = None, **values: Any) -> None:
        """Write an event for this job now (fenced by the lease), after any still pending."""
        await self.write(values, [spec] if spec is not None else [])

    async def write(self, values: dict[str, Any] | None = None, events: list[EventSpec] | None = None) -> None:
        """A fenced write of ``values`` with the pending events and ``events``, in that order."""
        specs = [*self.take_pending(), *(events or [])]
        self.job = await self.queue.touch(self.job, values=values or None, events=specs)

    def take_pending(self) -> list[EventSpec]:
        out, self.pending = self.pending, []
        return out

    # -- providers -----------------------------------------------------------
    async def submit(
        self, provider_name: str, model: str, input: dict[str, Any], *, webhook: bool = False
    ) -> Prediction:
        """Submit a prediction and store its id (one transaction) before anything waits on it,
        so a crash never leads to a second paid submission: an attempt that takes over a job whose
        worker died finds the prediction on the row and reuses it while it is live."""
        provider = self.services.predictions[provider_name]
        reused = await self._live_prediction(provider_name, provider)
        if reused is not None:
            return reused
        # A cancel may have come since the claim (the watcher reads only about once a second): a
        # paid submission is worth one read to avoid.
        if self.stop_flag.is_set() or (await self.queue.jobs.get(self.job.id)).cancel_requested:
            raise JobCancelled()
        callback = None
        if webhook:
            callback = f"{self.services.settings.base_url}/v1/callbacks/{provider_name}/{self.job.id}"
        pred = await provider.submit(model, input, webhook_url=callback)
        try:
            await self.write({
                "provider": provider_name, "provider_ref": pred.id, "provider_since": ms(self.queue.clock.now()),
            })
        except (LeaseLost, Unavailable):
            # Nobody will ever wait on it: do not let it run (and bill) for nothing. Unreachable,
            # the write may yet have committed; then the next attempt finds it cancelled and
            # submits again, rather than this one being left running unrecorded.
            with contextlib.suppress(Exception):
                await provider.cancel(pred.id)
            raise
        return pred

    async def _live_prediction(self, provider_name: str, provider: PredictionProvider) -> Prediction | None:
        """The prediction an earlier attempt of this job submitted, if it can still deliver."""
        ref = self.job.provider_ref
        if self.job.provider != provider_name or ref is None:
            return None
        try:
            pred = await provider.get(ref)
        except Exception as exc:
            log.warning("provider.reuse_check_failed", job_id=self.job.id, ref=ref, error=str(exc))
            return None
        if pred.status in _DEAD:
            return None
        log.info("provider.reused", job_id=self.job.id, provider=provider_name, ref=ref, status=pred.status)
        return pred

    async def park(self, deadline_seconds: float | None) -> None:
        """Let go of the job until the provider calls back or the deadline passes (``None``: no
        deadline; the reconciler fails it once the provider has worked on it for too long).

        The running stage's completion event is written with the release, in one transaction. A
        cancel requested meanwhile is met here (JobCancelled) rather than after the provider ran."""
        await self.checkpoint()
        now = ms(self.queue.clock.now())
        events = []
        if self.stage is not None:
            latency = int((time.perf_counter() - self.stage_t0) * 1000)
            events.append(EventSpec(EventType.STAGE_COMPLETED, stage=self.stage.name, latency_ms=latency,
                                    data={"provider": self.job.provider, "ref": self.job.provider_ref,
                                          "parked": True}))
        await self.write(events=events, values={
            "deadline": None if deadline_seconds is None else now + int(deadline_seconds * 1000),
            "lease_owner": None, "lease_token": None, "lease_expires_at": None,
        })
        if self.job.cancel_requested:
            raise JobCancelled()
        raise Parked()

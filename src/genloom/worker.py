"""The worker: claims in batches, runs up to N jobs at once, heartbeats leases, stops at cancel
checkpoints, retries transient failures, and on shutdown finishes or hands back what it holds."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from genloom.errors import JobCancelled, LeaseLost
from genloom.ids import WorkerId, new_worker_id
from genloom.lifecycle import EventType
from genloom.models import EventSpec, Job
from genloom.observability import get_logger
from genloom.pipelines.context import Parked, Services, StageContext
from genloom.pipelines.registry import Registry, Stage
from genloom.retry import Backoff, decide
from genloom.runtime import Core

log = get_logger("genloom.worker")
_START = {"stage": EventType.STAGE_STARTED, "vision": EventType.VISION_STARTED}
_DONE = {"stage": EventType.STAGE_COMPLETED, "vision": EventType.VISION_COMPLETED,
         "storage": EventType.STORAGE_WRITE_COMPLETED}
_FAIL = {"stage": EventType.STAGE_FAILED, "vision": EventType.VISION_FAILED, "storage": EventType.STAGE_FAILED}


class Worker:
    def __init__(
        self, core: Core, registry: Registry, services: Services, *, concurrency: int | None = None,
        types: list[str] | None = None, worker_id: WorkerId | None = None,
    ) -> None:
        s = core.settings
        self.core, self.registry, self.services = core, registry, services
        self.concurrency = concurrency or s.concurrency
        self.types = types
        self.id = worker_id or new_worker_id()
        self.backoff = Backoff(s.backoff_base_seconds, 2.0, s.backoff_cap_seconds)
        self.active: dict[str, tuple[asyncio.Task[None], StageContext]] = {}
        self._slot = asyncio.Event()
        self._stopping = asyncio.Event()
        if services.executor is None:
            services.executor = ThreadPoolExecutor(max_workers=max(2, self.concurrency), thread_name_prefix="stage")

    # -- the loop ------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set, then drain within the grace period and return."""
        hb = asyncio.create_task(self._heartbeats(), name="genloom-heartbeat")
        stopper = asyncio.create_task(stop.wait())
        log.info("worker.started", worker=self.id, concurrency=self.concurrency)
        try:
            while not stop.is_set():
                free = self.concurrency - len(self.active)
                if free <= 0:
                    self._slot.clear()
                    await _first(self._slot.wait(), stopper)
                    continue
                want = min(free, self.core.settings.claim_batch)
                claimed = await self._claim(want)
                if len(claimed) >= want:
                    continue
                due = await self.core.queue.next_due_in()
                timeout = self.core.settings.poll_seconds if due is None else min(due, self.core.settings.poll_seconds)
                await _first(self.core.notifier.wait_for_jobs(timeout), stopper)
        finally:
            stopper.cancel()
            await self._drain()
            hb.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hb
            log.info("worker.stopped", worker=self.id)

    async def _claim(self, limit: int) -> list[Job]:
        try:
            jobs = await self.core.queue.claim(self.id, self.types, limit)
        except Exception as exc:  # the database is down: back off, keep the process alive
            log.warning("worker.claim_failed", worker=self.id, error=str(exc))
            await asyncio.sleep(self.core.settings.poll_seconds)
            return []
        for job in jobs:
            ctx = self._context(job)
            task = asyncio.create_task(self._execute(ctx), name=f"job-{job.id}")
            self.active[job.id] = (task, ctx)
            task.add_done_callback(functools.partial(self._done, job.id))
        return jobs

    def _done(self, job_id: str, _task: object = None) -> None:
        self.active.pop(job_id, None)
        self._slot.set()

    def _context(self, job: Job) -> StageContext:
        workdir = Path(self.core.settings.data_dir) / "work" / job.id / f"a{job.attempt}"
        return StageContext(job=job, queue=self.core.queue, services=self.services, workdir=workdir)

    async def _drain(self) -> None:
        """Give running jobs the grace period, then hand the rest back to the queue."""
        if not self.active:
            return
        tasks = [t for t, _ in self.active.values()]
        _, pending = await asyncio.wait(tasks, timeout=self.core.settings.shutdown_grace_seconds)
        held = [(t, c) for t, c in list(self.active.values()) if t in pending]
        for task, ctx in held:
            ctx.stop_flag.set()
            task.cancel()
        for task, ctx in held:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            with contextlib.suppress(Exception):
                await self.core.queue.release(ctx.job)
                log.info("job.released", job_id=ctx.job.id, worker=self.id)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.core.settings.heartbeat_seconds)
            leases = [(c.job.id, c.job.lease_token) for _, c in self.active.values() if c.job.lease_token]
            try:
                lost = await self.core.queue.heartbeat(self.id, leases)
            except Exception as exc:
                log.warning("worker.heartbeat_failed", worker=self.id, error=str(exc))
                continue
            for job_id in lost:
                entry = self.active.get(job_id)
                if entry is not None:
                    log.warning("job.lease_lost", job_id=job_id, worker=self.id)
                    entry[1].stop_flag.set()
                    entry[0].cancel()

    # -- one job -------------------------------------------------------------
    async def _execute(self, ctx: StageContext) -> None:
        job = ctx.job
        stage: Stage | None = None
        watcher = asyncio.create_task(self._watch(ctx))
        try:
            for stage in self.registry.get(job.type).plan(job.mode, job.input):
                await ctx.checkpoint()
                await self._stage(ctx, stage)
            stage = None
            await ctx.checkpoint()
            await self.core.queue.complete(ctx.job, result_key=ctx.result_key, result=ctx.result or None)
        except JobCancelled:
            await self._cancelled(ctx)
        except Parked:
            log.info("job.parked", job_id=job.id, provider=ctx.job.provider, ref=ctx.job.provider_ref)
        except LeaseLost:
            log.warning("job.write_refused", job_id=job.id, worker=self.id, reason="lease_lost")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._failed(ctx, stage, exc)
        finally:
            watcher.cancel()
            if ctx.workdir.exists():
                await asyncio.to_thread(shutil.rmtree, ctx.workdir, True)

    async def _stage(self, ctx: StageContext, stage: Stage) -> None:
        if stage.kind in _START:
            await ctx.emit(EventSpec(_START[stage.kind], stage=stage.name), stage=stage.name)
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        await stage.run(ctx)
        latency = int((time.perf_counter() - t0) * 1000)
        data = ctx.artefacts.pop("_event_data", {})
        await ctx.emit(EventSpec(_DONE[stage.kind], stage=stage.name, latency_ms=latency, data=data))
        self.core.metrics.stage_latency.labels(ctx.job.type, stage.name).observe(latency / 1000)

    async def _cancelled(self, ctx: StageContext) -> None:
        await self._cancel_prediction(ctx)
        with contextlib.suppress(LeaseLost):
            await self.core.queue.cancelled(ctx.job)

    async def _failed(self, ctx: StageContext, stage: Stage | None, exc: Exception) -> None:
        job = ctx.job
        retry_after = float(getattr(exc, "details", {}).get("retry_after") or 0.0)
        decision = decide(exc, job.attempt, job.max_attempts, self.backoff, retry_after)
        message = str(exc) or type(exc).__name__
        events = []
        if stage is not None:
            events.append(EventSpec(_FAIL[stage.kind], stage=stage.name, error_code=decision.error_code,
                                    error_msg=message))
        log.warning("job.stage_failed", job_id=job.id, stage=stage.name if stage else None,
                    error_code=decision.error_code, error=message, retry=decision.retry)
        await self._cancel_prediction(ctx)  # a prediction left behind by this attempt
        with contextlib.suppress(LeaseLost):
            await self.core.queue.fail(ctx.job, decision, message, events)

    async def _cancel_prediction(self, ctx: StageContext) -> None:
        job = ctx.job
        if job.provider and job.provider_ref and job.provider in self.services.predictions:
            try:
                await self.services.predictions[job.provider].cancel(job.provider_ref)
            except Exception as exc:
                log.warning("provider.cancel_failed", job_id=job.id, ref=job.provider_ref, error=str(exc))

    async def _watch(self, ctx: StageContext) -> None:
        """About every second: see a cancel request, and write the stage's progress (fenced)."""
        written = ctx.job.progress
        while True:
            await asyncio.sleep(1.0)
            try:
                current = await self.core.jobs.get(ctx.job.id)
                if current.cancel_requested:
                    ctx.stop_flag.set()
                    ctx.job = _with(ctx.job, cancel_requested=True)
                if ctx._progress != written and ctx.job.lease_token:
                    ctx.job = await self.core.queue.touch(ctx.job, values={"progress": ctx._progress})
                    written = ctx._progress
            except LeaseLost:
                ctx.stop_flag.set()
                return
            except Exception as exc:
                log.warning("worker.watch_failed", job_id=ctx.job.id, error=str(exc))


def _with(job: Job, **changes: object) -> Job:
    from dataclasses import replace

    return replace(job, **changes)  # type: ignore[arg-type]


async def _first(aw: Awaitable[object], stopper: asyncio.Task[bool]) -> None:
    """Wait for ``aw`` or the stop signal, whichever comes first."""
    task = asyncio.ensure_future(aw)
    await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

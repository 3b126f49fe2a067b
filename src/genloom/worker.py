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
from dataclasses import replace
from pathlib import Path

from genloom.errors import InvalidTransition, JobCancelled, LeaseLost, Unavailable
from genloom.ids import WorkerId, new_worker_id
from genloom.lifecycle import EventType, Status
from genloom.models import EventSpec, Job
from genloom.observability import get_logger
from genloom.pipelines.context import Parked, Services, StageContext
from genloom.pipelines.registry import Registry, Stage
from genloom.pipelines.settle import settle
from genloom.queue import FirstStage
from genloom.retry import Backoff, decide
from genloom.runtime import Core

log = get_logger("genloom.worker")
_START = {"stage": EventType.STAGE_STARTED, "vision": EventType.VISION_STARTED}
_DONE = {"stage": EventType.STAGE_COMPLETED, "vision": EventType.VISION_COMPLETED,
         "storage": EventType.STORAGE_WRITE_COMPLETED}
_FAIL = {"stage": EventType.STAGE_FAILED, "vision": EventType.VISION_FAILED, "storage": EventType.STAGE_FAILED}
#: How often a running job's watcher reads its row when no event wakes it (cancel, lost lease),
#: and the least time between two of its reads however often it is woken.
WATCH_SECONDS = 1.0
WATCH_MIN_GAP = 0.5


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
        self._started_by_claim: set[str] = set()  # jobs whose first stage's start the claim wrote
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
            await self._warm()
            while not stop.is_set():
                free = self.concurrency - len(self.active)
                if free <= 0:
                    self._slot.clear()
                    await _first(self._slot.wait(), stopper)
                    continue
                s = self.core.settings
                want = min(free, s.claim_batch)
                claimed = await self._claim(want)
                if claimed:  # let their first stages start before this loop's next query
                    await asyncio.sleep(0)
                if len(claimed) >= want:
                    continue
                due = await self._next_due_in()
                timeout = s.poll_seconds if due is None else min(due, s.poll_seconds)
                settle = 0.0 if claimed else s.claim_settle_seconds
                await _first(self.core.notifier.wait_for_jobs(timeout, settle), stopper)
        finally:
            stopper.cancel()
            await self._drain()
            hb.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hb
            log.info("worker.stopped", worker=self.id)

    async def _warm(self) -> None:
        try:
            await self.core.queue.warm(self.id, self.types)
        except Exception as exc:  # the database is down: the first job pays for it instead
            log.warning("worker.warm_failed", worker=self.id, error=str(exc))

    async def _claim(self, limit: int) -> list[Job]:
        try:
            jobs = await self.core.queue.claim(self.id, self.types, limit, first_stage=self._first_stage)
        except Exception as exc:  # the database is down: back off, keep the process alive
            log.warning("worker.claim_failed", worker=self.id, error=str(exc))
            # woken early when the notifier's LISTEN connection is back (PostgreSQL)
            await self.core.notifier.wait_for_jobs(self.core.settings.poll_seconds)
            return []
        # a claimed job comes back with a stage only when the claim records that stage's start
        self._started_by_claim |= {job.id for job in jobs if job.stage is not None}
        for job in jobs:
            ctx = self._context(job)
            task = asyncio.create_task(self._execute(ctx), name=f"job-{job.id}")
            self.active[job.id] = (task, ctx)
            task.add_done_callback(functools.partial(self._done, job.id))
        return jobs

    def _first_stage(self, job: Job) -> FirstStage | None:
        """The stage the job starts on, for the claim to record with it (one commit fewer before
        the first stage runs). None when it cannot be planned here: ``_execute`` plans again and
        fails the job with the reason."""
        try:
            plan = self.registry.get(job.type).plan(job.mode, job.input)
        except Exception:
            return None
        if not plan:
            return None
        stage = plan[0]
        return FirstStage(stage.name, EventSpec(_START[stage.kind], stage=stage.name) if stage.kind in _START else None)

    async def _next_due_in(self) -> float | None:
        try:
            return await self.core.queue.next_due_in()
        except Exception as exc:  # the database is down: poll, keep the process alive
            log.warning("worker.due_failed", worker=self.id, error=str(exc))
            return None

    def _done(self, job_id: str, _task: object = None) -> None:
        self.active.pop(job_id, None)
        self._started_by_claim.discard(job_id)
        self._slot.set()

    def _context(self, job: Job) -> StageContext:
        # flat (no per-job parent): removing it leaves nothing behind
        workdir = Path(self.core.settings.data_dir) / "work" / f"{job.id}-a{job.attempt}"
        return StageContext(job=job, queue=self.core.queue, services=self.services, workdir_path=workdir)

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
            if ctx.job.lease_token is None or ctx.lease_lost:
                continue  # parked (the provider has it) or no longer ours
            try:
                if ctx.pending:  # the last finished stage's event, then the job goes back
                    await ctx.write()
                await self.core.queue.release(ctx.job)
                log.info("job.released", job_id=ctx.job.id, worker=self.id)
            except InvalidTransition as exc:  # it ended meanwhile, or the lease was lost
                log.info("job.release_refused", job_id=ctx.job.id, worker=self.id, reason=exc.code)
            except Exception as exc:  # the reconciler requeues it when the lease expires
                log.warning("job.release_failed", job_id=ctx.job.id, worker=self.id, error=str(exc))

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.core.settings.heartbeat_seconds)
            leases = [(c.job.id, c.job.lease_token) for _, c in self.active.values()
                      if c.job.lease_token and not c.finished]
            try:
                lost = await self.core.queue.heartbeat(self.id, leases)
            except Exception as exc:
                log.warning("worker.heartbeat_failed", worker=self.id, error=str(exc))
                continue
            sent: dict[str, str] = dict(leases)
            for job_id in lost:
                entry = self.active.get(job_id)
                if entry is None or entry[1].finished or not await self._really_lost(entry[1], sent[job_id]):
                    continue
                # another worker may own the job now: this attempt stops, writing nothing
                self._lost(entry[1])
                entry[0].cancel()

    async def _really_lost(self, ctx: StageContext, token: str) -> bool:
        """Whether a lease the heartbeat found gone was taken from this attempt, not let go by its
        own write (a park clears the lease; the heartbeat may run just after that commit, and
        cancelling the task then would leave a cancel requested meanwhile unanswered)."""
        if ctx.job.lease_token != token:
            return False  # the job's own write has already come back
        try:
            row = await self.core.jobs.get(ctx.job.id)
        except Exception:
            return True
        own_park = row.status == Status.RUNNING and row.lease_token is None and row.attempt == ctx.job.attempt
        return not own_park

    # -- one job -------------------------------------------------------------
    async def _execute(self, ctx: StageContext) -> None:
        job = ctx.job
        stage: Stage | None = None
        watcher = asyncio.create_task(self._watch(ctx), name=f"watch-{job.id}")
        try:
            plan = self.registry.get(job.type).plan(job.mode, job.input)
            for n, stage in enumerate(plan, 1):
                await ctx.checkpoint()
                await self._stage(ctx, stage)
                if n < len(plan):  # its row, fresh from the write, tells the next checkpoint of a cancel
                    await ctx.write()
            stage = None
            await ctx.checkpoint()
            ctx.finished = True  # from here the lease may be gone by our own hand
            await self.core.queue.complete(ctx.job, result_key=ctx.result_key, result=ctx.result or None,
                                           events=ctx.take_pending())
        except JobCancelled:
            await self._cancelled(ctx)
        except Parked:
            ctx.finished = True
            log.info("job.parked", job_id=job.id, provider=ctx.job.provider, ref=ctx.job.provider_ref)
            await self._after_park(ctx)
        except LeaseLost:
            log.warning("job.write_refused", job_id=job.id, worker=self.id, reason="lease_lost")
        except Unavailable as exc:
            await self._hand_back(ctx, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if ctx.lease_lost:
                log.warning("job.write_refused", job_id=job.id, worker=self.id, reason="lease_lost")
            elif ctx.stop_flag.is_set() and isinstance(exc, InterruptedError):
                await self._cancelled(ctx)  # a stage's own blocking code that obeyed should_stop
            else:
                await self._failed(ctx, stage, exc)
        finally:
            ctx.finished = True
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if ctx.workdir_made:
                await asyncio.to_thread(shutil.rmtree, ctx.workdir_path, True)

    async def _stage(self, ctx: StageContext, stage: Stage) -> None:
        """Run one stage: its start is written at once, its completion waits for the job's next
        write (the last stage's goes with the job's completion, failure or parking)."""
        ctx.stage, ctx.stage_t0 = stage, time.perf_counter()
        start = [EventSpec(_START[stage.kind], stage=stage.name)] if stage.kind in _START else []
        if ctx.job.id in self._started_by_claim:  # the claim wrote this start
            self._started_by_claim.discard(ctx.job.id)
        else:
            await ctx.write({"stage": stage.name}, start)
        t0 = time.perf_counter()
        await stage.run(ctx)
        latency = int((time.perf_counter() - t0) * 1000)
        data = ctx.artefacts.pop("_event_data", {})
        ctx.pending.append(EventSpec(_DONE[stage.kind], stage=stage.name, latency_ms=latency, data=data))
        ctx.stage = None
        self.core.metrics.stage_latency.labels(ctx.job.type, stage.name).observe(latency / 1000)

    async def _after_park(self, ctx: StageContext) -> None:
        """Ask the provider once more now that the job is parked: an answer (or a callback) that
        came while this worker still held the lease was not applied, and would otherwise wait
        for the reconciler's re-query."""
        job = ctx.job
        provider = self.services.predictions.get(job.provider or "")
        if provider is None or job.provider_ref is None:
            return
        try:
            pred = await provider.get(job.provider_ref)
            if pred.terminal:
                await settle(self.core, self.services, await self.core.jobs.get(job.id), pred)
        except Exception as exc:  # the callback or the reconciler settles it later
            log.warning("job.after_park_failed", job_id=job.id, ref=job.provider_ref, error=str(exc))

    async def _cancelled(self, ctx: StageContext) -> None:
        """End the job cancelled, then stop its provider prediction (never the other way round:
        only the holder of the job may touch what its attempt submitted). A job this attempt parked
        itself (its fenced park write succeeded, no lease is left) is still its own to cancel, even if
        the watcher, reading the row while that write landed, took the cleared lease for a lost one."""
        if ctx.lease_lost and ctx.job.lease_token is not None:
            log.warning("job.write_refused", job_id=ctx.job.id, worker=self.id, reason="lease_lost")
            return
        try:
            if ctx.job.lease_token is not None:
                await self.core.queue.cancelled(ctx.job, events=ctx.take_pending())
            else:  # parked just as the cancel came: no lease left to fence with
                await self.core.jobs.cancel(ctx.job.id)
            ctx.finished = True
        except LeaseLost:
            log.warning("job.write_refused", job_id=ctx.job.id, worker=self.id, reason="lease_lost")
            return
        except InvalidTransition as exc:
            log.info("job.cancel_superseded", job_id=ctx.job.id, reason=exc.code)
        except Unavailable as exc:  # its next attempt meets the cancel request at once
            await self._hand_back(ctx, exc)
            return
        await self._cancel_prediction(ctx)

    async def _failed(self, ctx: StageContext, stage: Stage | None, exc: Exception) -> None:
        job = ctx.job
        retry_after = float(getattr(exc, "details", {}).get("retry_after") or 0.0)
        decision = decide(exc, job.attempt, job.max_attempts, self.backoff, retry_after)
        message = str(exc) or type(exc).__name__
        log.warning("job.stage_failed", job_id=job.id, stage=stage.name if stage else None,
                    error_code=decision.error_code, error=message, retry=decision.retry)
        if decision.retry and (job.cancel_requested or ctx.stop_flag.is_set()):
            await self._cancelled(ctx)  # a job the user wants gone is not queued again
            return
        events = ctx.take_pending()
        if stage is not None:
            events.append(EventSpec(_FAIL[stage.kind], stage=stage.name, error_code=decision.error_code,
                                    error_msg=message))
        try:
            if job.provider_ref and job.lease_token:
                # A prediction this attempt leaves behind: forget it on the row (fenced, so only the
                # lease holder does this), stop it at the provider, and only then let the job go.
                ctx.job = await self.core.queue.touch(
                    job, values={"provider": None, "provider_ref": None, "provider_since": None}, events=events)
                events = []
                await self._cancel_prediction(ctx, job)
            await self.core.queue.fail(ctx.job, decision, message, events)
            ctx.finished = True
        except LeaseLost:
            log.warning("job.write_refused", job_id=job.id, worker=self.id, reason="lease_lost")
        except Unavailable as unreachable:
            await self._hand_back(ctx, unreachable)

    async def _hand_back(self, ctx: StageContext, exc: Unavailable) -> None:
        """The database went away during one of the attempt's writes: that is not the job's
        failure, and nothing after its last write is recorded. Keep the job (the heartbeats renew
        its lease once the database answers), then hand it back to the queue with the attempt
        unspent; the next attempt reuses a prediction this one recorded. A refusal means the
        write did commit (its answer was lost) or the lease is gone: either way not ours to touch."""
        log.warning("job.database_unavailable", job_id=ctx.job.id, worker=self.id, error=str(exc))
        if ctx.job.lease_token is None:
            return
        delay = 0.1
        while not ctx.lease_lost:
            await asyncio.sleep(delay)
            try:
                await self.core.queue.release(ctx.job)
            except InvalidTransition as refused:
                log.info("job.release_refused", job_id=ctx.job.id, worker=self.id, reason=refused.code)
            except Unavailable:
                delay = min(delay * 2, 2.0)
                continue
            else:
                log.info("job.released", job_id=ctx.job.id, worker=self.id, reason="database_unavailable")
            ctx.finished = True
            return

    async def _cancel_prediction(self, ctx: StageContext, job: Job | None = None) -> None:
        job = job or ctx.job
        if job.provider and job.provider_ref and job.provider in self.services.predictions:
            try:
                await self.services.predictions[job.provider].cancel(job.provider_ref)
                log.info("provider.cancelled", job_id=job.id, provider=job.provider, ref=job.provider_ref)
            except Exception as exc:
                log.warning("provider.cancel_failed", job_id=job.id, ref=job.provider_ref, error=str(exc))

    async def _watch(self, ctx: StageContext) -> None:
        """See a cancel request or a lost lease, and write the stage's progress (fenced).

        It reads the job's row every WATCH_SECONDS, and sooner when an event of the job was
        written (a cancel request writes one; the notifier carries it across processes on
        PostgreSQL), but never within WATCH_MIN_GAP of its start or of its last read: the job's
        own stage events wake it too, and a read for each would double a short job's queries."""
        loop = asyncio.get_running_loop()
        written = ctx.job.progress
        woken = asyncio.Event()
        unsubscribe = self.core.notifier.subscribe(ctx.job.id, lambda _job_id: woken.set())
        last = loop.time()
        try:
            while not ctx.finished:
                await _woken_or(woken, max(0.0, last + WATCH_SECONDS - loop.time()))
                await asyncio.sleep(max(0.0, last + WATCH_MIN_GAP - loop.time()))
                if ctx.finished:
                    return
                woken.clear()
                last = loop.time()
                try:
                    current = await self.core.jobs.get(ctx.job.id)
                    if current.cancel_requested:
                        ctx.stop_flag.set()
                        ctx.job = replace(ctx.job, cancel_requested=True)
                    if current.lease_token != ctx.job.lease_token and not ctx.finished:
                        self._lost(ctx)
                        return
                    if ctx._progress != written and ctx.job.lease_token:
                        # the returned row is not kept: ctx.job belongs to the stage's own writes
                        await self.core.queue.touch(ctx.job, values={"progress": ctx._progress})
                        written = ctx._progress
                except LeaseLost:
                    if not ctx.finished:
                        self._lost(ctx)
                    return
                except Exception as exc:
                    log.warning("worker.watch_failed", job_id=ctx.job.id, error=str(exc))
        finally:
            unsubscribe()

    def _lost(self, ctx: StageContext) -> None:
        log.warning("job.lease_lost", job_id=ctx.job.id, worker=self.id)
        ctx.lease_lost = True
        ctx.stop_flag.set()


async def _woken_or(woken: asyncio.Event, within: float) -> None:
    """Wait for ``woken`` at most ``within`` seconds. Not ``asyncio.wait_for``: on Python 3.11 it
    swallows a cancellation that arrives as the event is set, and the job's own last event sets it
    just before the watcher is cancelled (the watcher then outlived its job, reading its row forever)."""
    waiter = asyncio.ensure_future(woken.wait())
    try:
        await asyncio.wait([waiter], timeout=within)
    finally:
        waiter.cancel()


async def _first(aw: Awaitable[object], stopper: asyncio.Task[bool]) -> None:
    """Wait for ``aw`` or the stop signal, whichever comes first."""
    task = asyncio.ensure_future(aw)
    await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

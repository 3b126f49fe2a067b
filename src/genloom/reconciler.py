"""The reconciler: rescues jobs whose worker died, re-asks providers about parked jobs, fails
stalled ones and expires those past their callback deadline. One active across a cluster."""

from __future__ import annotations

import asyncio
import contextlib

from sqlalchemy.exc import IntegrityError

from genloom.clock import ms
from genloom.errors import InvalidTransition, LeaseLost, NotFound
from genloom.ids import new_worker_id
from genloom.lifecycle import EventType, Status
from genloom.models import EventSpec, Job
from genloom.observability import get_logger
from genloom.pipelines.context import Services
from genloom.pipelines.settle import settle
from genloom.runtime import Core
from genloom.store import statements as q

log = get_logger("genloom.reconciler")
LOCK = "reconciler"


class Reconciler:
    def __init__(self, core: Core, services: Services) -> None:
        self.core, self.services = core, services
        self.owner = new_worker_id()
        s = core.settings
        self.requery_ms = int(s.provider_requery_after_seconds * 1000)
        self.stall_ms = int(s.provider_stall_after_seconds * 1000)

    def _now(self) -> int:
        return ms(self.core.clock.now())

    async def run(self, stop: asyncio.Event) -> None:
        period = self.core.settings.reconcile_seconds
        while not stop.is_set():
            try:
                if await self.lead(int(period * 2000)):
                    await self.tick()
            except Exception as exc:
                log.warning("reconciler.tick_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period)
        with contextlib.suppress(Exception):
            async with self.core.db.tx() as conn:
                await conn.execute(q.release_lock(LOCK, self.owner))

    async def lead(self, ttl_ms: int) -> bool:
        """Take or keep the cluster-wide reconciler lease."""
        now = self._now()
        async with self.core.db.tx() as conn:
            if (await conn.execute(q.take_lock(LOCK, self.owner, now, now + ttl_ms))).rowcount == 1:
                return True
            try:
                async with conn.begin_nested():
                    await conn.execute(q.create_lock(LOCK, self.owner, now + ttl_ms))
                return True
            except IntegrityError:
                return False

    async def tick(self) -> dict[str, int]:
        counts = {"rescued": 0, "requeried": 0, "stalled": 0, "expired": 0}
        counts["rescued"] = await self.rescue_expired_leases()
        counts["requeried"], counts["stalled"] = await self.requery_parked()
        counts["expired"] = await self.expire_past_deadline()
        if any(counts.values()):
            log.info("reconciler.tick", **counts)
        return counts

    async def rescue_expired_leases(self) -> int:
        """Jobs whose worker stopped heartbeating: back to the queue for another attempt (a
        prediction the dead attempt submitted stays on the row for the next one to reuse), failed
        ``worker_lost`` once the attempts are spent, or cancelled if that was asked for."""
        now = self._now()
        async with self.core.db.read() as conn:
            ids = [r[0] for r in (await conn.execute(q.expired_leases(now, 500))).all()]
        n = 0
        for job_id in ids:
            try:
                job = await self.core.jobs.get(job_id)
                if job.cancel_requested:
                    done = await self.core.jobs.transition(
                        job_id, Status.CANCELLED, lease_expired_before=now, error_code="cancelled",
                        error_message=job.error_message or "Job cancelled by user request")
                    await self._cancel_prediction(done)
                elif job.attempt >= job.max_attempts:
                    done = await self.core.jobs.transition(
                        job_id, Status.FAILED, lease_expired_before=now, error_code="worker_lost",
                        error_message="the worker running this job stopped responding")
                    await self._cancel_prediction(done)
                else:
                    await self.core.jobs.transition(
                        job_id, Status.QUEUED, lease_expired_before=now,
                        events=[EventSpec(EventType.RETRY_SCHEDULED, error_code="worker_lost",
                                          data={"next_attempt": job.attempt + 1})])
                n += 1
                log.info("reconciler.rescued", job_id=job_id, attempt=job.attempt)
            except (InvalidTransition, NotFound):
                continue
        return n

    async def requery_parked(self) -> tuple[int, int]:
        """Ask the provider about every job parked longer than the re-query threshold."""
        now = self._now()
        async with self.core.db.read() as conn:
            rows = (await conn.execute(q.waiting_on_provider(now, now - self.requery_ms, 200))).mappings().all()
        asked = stalled = 0
        for row in rows:
            job = Job.from_row(row)
            asked += 1
            if await self.requery(job) is None:
                continue
            fresh = await self.core.jobs.get(job.id)
            # jobs with a callback deadline expire at it (CutX); the others stall (Motioness)
            # (not while a settle holds it: the prediction is done and its output is being stored)
            if fresh.status == Status.RUNNING and fresh.deadline is None and fresh.lease_token is None \
                    and fresh.provider_since is not None and now - fresh.provider_since > self.stall_ms:
                await self._stall(fresh)
                stalled += 1
        return asked, stalled

    async def requery(self, job: Job) -> Job | None:
        """Query the provider for one parked job and settle it if the answer is final."""
        provider = self.services.predictions.get(job.provider or "")
        if provider is None or job.provider_ref is None:
            return None
        try:
            pred = await provider.get(job.provider_ref)
        except Exception as exc:
            log.warning("reconciler.requery_failed", job_id=job.id, error=str(exc))
            return job
        try:
            return await settle(self.core, self.services, job, pred)
        except Exception as exc:  # its output could not be fetched (gone, refused): it stays parked, and
            # stalls or expires in time; the jobs after it are still asked about
            log.warning("reconciler.settle_failed", job_id=job.id, ref=job.provider_ref, error=str(exc))
            return job

    async def _stall(self, job: Job) -> None:
        with contextlib.suppress(InvalidTransition, NotFound, LeaseLost):
            await self.core.jobs.transition(job.id, Status.FAILED, error_code="pipeline_stalled",
                                            error_message="the provider did not finish in time")
            await self._cancel_prediction(job)

    async def _cancel_prediction(self, job: Job) -> None:
        """Stop a prediction nobody will wait on any more (its job just ended here)."""
        provider = self.services.predictions.get(job.provider or "")
        if provider is None or not job.provider_ref:
            return
        try:
            await provider.cancel(job.provider_ref)
        except Exception as exc:
            log.warning("provider.cancel_failed", job_id=job.id, ref=job.provider_ref, error=str(exc))

    async def expire_past_deadline(self) -> int:
        now = self._now()
        async with self.core.db.read() as conn:
            ids = [r[0] for r in (await conn.execute(q.past_deadline(now, 500))).all()]
        n = 0
        for job_id in ids:
            job = await self.core.jobs.get(job_id)
            if job.status != Status.RUNNING or job.lease_token or (job.deadline or now) >= now:
                continue
            try:
                await self.core.jobs.transition(job_id, Status.EXPIRED, error_code="callback_timeout",
                                                error_message="no callback arrived before the deadline")
            except (InvalidTransition, NotFound):
                continue
            await self._cancel_prediction(job)
            n += 1
        return n

"""The dispatcher: sends due deliveries, records each attempt, retries, dead-letters, disables.

Any number may run across a cluster. A claim leases due rows (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, one ``UPDATE … RETURNING`` under SQLite's single writer) by moving their
``next_attempt_at`` to the lease's end, so a delivery whose dispatcher died is simply due again
then: at-least-once, and every copy carries the same ``webhook-id``. An outcome is written only
while its lease is still the current one.

Each attempt is a POST of the stored payload, signed per Standard Webhooks, through SafeFetcher's
address policy and DNS pinning (re-checked every ``PIN_SECONDS`` per origin), no redirects, capped
in time by ``webhook_timeout_seconds`` and reading at most ``max_response_bytes`` of the answer.
2xx is delivered. Anything else is a failed attempt, retried after
``webhook_schedule_seconds[n-1]`` (plus up to ``jitter`` of it, or the receiver's Retry-After if
longer) until ``len(webhook_schedule_seconds)`` attempts have failed: then a dead letter. A 410 Gone
disables its endpoint at once; an endpoint failing without a success for longer than
``webhook_disable_after_seconds`` is disabled too, the reason kept on the endpoint. Deliveries due
for a disabled or deleted endpoint are dead-lettered without being sent.

Every attempt is recorded as events on the job's log: ``webhook_dispatched`` (stamped with the
time it was sent) and then ``webhook_delivered`` or ``webhook_failed``, plus ``webhook_dead_letter``.
They are written with the outcome, in one transaction per batch of outcomes, so a claim is a bare
lease: no job rows locked, nothing appended to the log (whose writers serialise on PostgreSQL).
An attempt cut short by a crash leaves no event; its re-send writes them.

The dispatcher sleeps until the next delivery is due, is woken in-process by commits that create
deliveries (and by NOTIFY on PostgreSQL), and polls every ``poll_seconds`` as a fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import random
import secrets
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import httpx
import psycopg

from genloom.clock import Clock, ms
from genloom.config import Settings
from genloom.errors import BrokenUrl, UnsafeUrl
from genloom.fetch import CheckedUrl, PinnedTransport, SafeFetcher
from genloom.ids import new_worker_id
from genloom.lifecycle import EventType
from genloom.models import EventSpec
from genloom.notify import Notifier
from genloom.observability import Metrics, get_logger
from genloom.store.engine import Database
from genloom.store.unit import Unit, unit
from genloom.webhooks import outbox, signing
from genloom.webhooks import statements as q
from genloom.webhooks.endpoints import project_secrets, webhook_fetcher

log = get_logger("genloom.webhooks")
USER_AGENT = "genloom-webhooks/1"
PIN_SECONDS = 60.0  # how long one DNS check of an origin is used before it is checked again
RETRY_AFTER_CAP = 24 * 3600.0


class CoreLike(Protocol):
    """What the dispatcher needs of runtime.Core."""

    @property
    def settings(self) -> Settings: ...

    @property
    def db(self) -> Database: ...

    @property
    def notifier(self) -> Notifier: ...

    @property
    def clock(self) -> Clock: ...


@dataclass(frozen=True)
class _Send:
    """A leased delivery, with what one attempt needs."""

    id: str
    owner: str  # the claim's lease token: outcomes are written only while it is current
    project_id: str
    job_id: str
    endpoint_id: str | None
    url: str
    event_type: str
    payload: dict[str, Any] = field(repr=False)
    attempt: int  # 1-based, this attempt's number in the series
    secrets: list[str] = field(repr=False)  # never in a repr, a log line or a traceback
    failing_since: int | None  # the endpoint's, when claimed


@dataclass(frozen=True)
class _Outcome:
    send: _Send
    status_code: int | None
    latency_ms: int
    sent_at: int  # ms, when the attempt started (the webhook_dispatched event's time)
    error: str | None = None
    error_code: str | None = None
    response: str | None = None
    retry_after: float | None = None
    permanent: bool = False  # refused by the address policy: retrying will not help

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Dispatcher:
    """Delivers webhooks until stopped: ``await Dispatcher(core).run(stop_event)``."""

    def __init__(
        self, core: CoreLike, settings: Settings | None = None, *, fetcher: SafeFetcher | None = None,
        owner: str | None = None, concurrency: int = 32, batch: int = 64, poll_seconds: float = 1.0,
        lease_seconds: float | None = None, jitter: float = 0.2, max_response_bytes: int = 2048,
        metrics: Metrics | None = None, rng: random.Random | None = None, verify: ssl.SSLContext | None = None,
    ) -> None:
        self.core = core
        self.settings = s = settings or core.settings
        self.db, self.notifier, self.clock = core.db, core.notifier, core.clock
        self.fetcher = fetcher or webhook_fetcher(s)
        self.owner = owner or new_worker_id()
        self.concurrency, self.batch, self.poll_seconds = concurrency, batch, poll_seconds
        self.timeout = s.webhook_timeout_seconds
        self.lease_ms = int((lease_seconds or max(30.0, 3 * self.timeout + 5)) * 1000)
        self.schedule = list(s.webhook_schedule_seconds)
        self.max_attempts = max(1, len(self.schedule))
        self.disable_after_ms = int(s.webhook_disable_after_seconds * 1000)
        self.jitter, self.max_response_bytes = jitter, max_response_bytes
        self.metrics: Metrics | None = metrics if metrics is not None else getattr(core, "metrics", None)
        self._rng = rng or random.Random()
        self._key = str(self.db.engine.url)
        self._clients = _Clients(self.fetcher, self.timeout, verify)
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._outcomes: asyncio.Queue[_Outcome | None] = asyncio.Queue()
        self._backlog = False
        self._refill = max(1, min(batch, concurrency) // 4)

    def _now(self) -> int:
        return ms(self.clock.now())

    # -- the loop ---------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Claim, send and record until ``stop`` is set; then let in-flight attempts finish (up to
        the timeout) and record them. Attempts cut short are resent once their lease runs out."""
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()

        def poke() -> None:
            loop.call_soon_threadsafe(self._wake.set)

        off = outbox.on_created(self._key, poke)
        helpers = [asyncio.create_task(self._stop_waker(stop), name="webhooks-stop")]
        if self.db.is_postgres:
            helpers.append(asyncio.create_task(self._listen(), name="webhooks-listen"))
        recorder = asyncio.create_task(self._recorder(), name="webhooks-record")
        log.info("webhooks.dispatcher_started", owner=self.owner)
        try:
            await self._loop(stop)
        finally:
            off()
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            if self._inflight:
                _, late = await asyncio.wait(self._inflight, timeout=self.timeout + 1)
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
            self._outcomes.put_nowait(None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(recorder, self.timeout + 5)
            if not recorder.done():
                recorder.cancel()
                await asyncio.gather(recorder, return_exceptions=True)
            await self._clients.close()
            log.info("webhooks.dispatcher_stopped", owner=self.owner)

    async def _loop(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            self._wake.clear()
            wait = self.poll_seconds
            try:
                free = min(self.batch, self.concurrency - len(self._inflight))
                if free > 0:
                    sends = await self._claim(free)
                    for send in sends:
                        self._spawn(send)
                    self._backlog = len(sends) == free
                    if self._backlog:
                        continue
                    due = await self._next_due_in()
                    if due is not None:
                        wait = min(wait, due)
                failures = 0
            except Exception as exc:  # the database is away: back off, keep going
                failures += 1
                wait = min(self.poll_seconds * failures, 10.0)
                log.warning("webhooks.claim_failed", error=str(exc), retry_in=wait)
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)

    async def _stop_waker(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    def _spawn(self, send: _Send) -> None:
        task = asyncio.create_task(self._attempt(send))
        self._inflight.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._inflight.discard(t)
            # With a backlog, refill once a quarter of the slots is free: a few larger claims
            # cost far less than one small claim per finished attempt.
            if self._backlog and self.concurrency - len(self._inflight) >= self._refill:
                self._wake.set()

        task.add_done_callback(done)

    async def _attempt(self, send: _Send) -> None:
        self._outcomes.put_nowait(await self.post(send))

    async def _recorder(self) -> None:
        """Write outcomes as they come, all those waiting in one transaction."""
        stopping = False
        while not stopping:
            first = await self._outcomes.get()
            batch: list[_Outcome] = [] if first is None else [first]
            stopping = first is None
            while not self._outcomes.empty():
                more = self._outcomes.get_nowait()
                if more is None:
                    stopping = True
                else:
                    batch.append(more)
            for attempt in range(5):
                try:
                    if batch and await self.record(batch):
                        self._wake.set()  # a retry is now due at a new time
                    break
                except Exception as exc:
                    log.warning("webhooks.record_failed", error=str(exc), deliveries=len(batch))
                    await asyncio.sleep(min(0.2 * 2**attempt, 3.0))

    async def _listen(self) -> None:
        """PostgreSQL: LISTEN for deliveries created or replayed by other processes."""
        conninfo = self.db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        delay = 0.2
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {q.WEBHOOKS_CHANNEL}")
                    log.info("webhooks.listening", owner=self.owner)
                    delay = 0.2
                    self._wake.set()  # whatever was announced while we were not listening
                    async for _ in conn.notifies():
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("webhooks.listen_lost", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def run_once(self, limit: int | None = None) -> int:
        """Claim what is due now, send it all and record it; the number of attempts made. For
        tests, tools and benchmarks; ``run`` is the service loop."""
        sends = await self._claim(limit or self.batch)
        if sends:
            await self.record(list(await asyncio.gather(*(self.post(s) for s in sends))))
        return len(sends)

    async def close(self) -> None:
        """Close the HTTP clients ``run_once`` opened (``run`` closes its own)."""
        await self._clients.close()

    # -- claiming ---------------------------------------------------------------------------------
    async def _next_due_in(self) -> float | None:
        async with self.db.read() as conn:
            at = (await conn.execute(q.next_delivery_due())).scalar()
        return None if at is None else max(0.0, (int(at) - self._now()) / 1000)

    async def _claim(self, limit: int) -> list[_Send]:
        now = self._now()
        owner = f"{self.owner}.{secrets.token_hex(8)}"
        sends: list[_Send] = []
        async with unit(self.db, self.notifier) as u:
            stmt = q.claim_deliveries(postgres=u.postgres, owner=owner, now=now, lease_until=now + self.lease_ms,
                                      limit=limit)
            rows = (await u.conn.execute(stmt)).mappings().all()
            if not rows:
                return []
            endpoint_ids = {r["endpoint_id"] for r in rows if r["endpoint_id"] is not None}
            endpoints: dict[str, Mapping[Any, Any]] = {}
            if endpoint_ids:
                endpoints = {e["id"]: e for e in (await u.conn.execute(q.endpoints_by_id(endpoint_ids))).mappings()}
            own = {r["project_id"] for r in rows if r["endpoint_id"] is None}
            project = await project_secrets(u.conn, own, now) if own else {}
            dead: list[tuple[Mapping[Any, Any], str]] = []
            for r in sorted(rows, key=lambda r: r["id"]):
                ep = endpoints.get(r["endpoint_id"]) if r["endpoint_id"] is not None else None
                if r["endpoint_id"] is not None and (ep is None or not ep["enabled"]):
                    dead.append((r, "the endpoint was deleted" if ep is None else
                                 f"the endpoint is disabled: {ep['disabled_reason'] or 'no reason given'}"))
                    continue
                keys = ep if ep is not None else project[r["project_id"]]
                sends.append(_Send(
                    id=r["id"], owner=owner, project_id=r["project_id"], job_id=r["job_id"],
                    endpoint_id=r["endpoint_id"], url=ep["url"] if ep is not None else r["url"],
                    event_type=r["event_type"], payload=r["payload"], attempt=r["attempts"] + 1,
                    secrets=signing.active(keys["secret"], keys["old_secret"], keys["old_secret_expires_at"], now),
                    failing_since=ep["failing_since"] if ep is not None else None,
                ))
            if dead:
                await self._dead_on_claim(u, dead, now)
        return sends

    async def _dead_on_claim(self, u: Unit, dead: Sequence[tuple[Mapping[Any, Any], str]], now: int) -> None:
        """Dead-letter, unsent, what was due for a disabled or deleted endpoint."""
        await u.conn.execute(q.settle_deliveries(), [
            {"b_id": r["id"], "b_status": "dead", "b_attempts": r["attempts"], "b_status_code": r["last_status_code"],
             "b_error": reason, "b_latency_ms": r["last_latency_ms"], "b_next": now, "b_now": now}
            for r, reason in dead])
        jobs = await _touch(u, [r["job_id"] for r, _ in dead], now)
        for r, reason in dead:
            events = _Events(u, jobs.get(r["job_id"]), r, now)
            events.add(EventSpec(EventType.WEBHOOK_DEAD_LETTER, error_code="webhook_endpoint_disabled",
                                 error_msg=reason, data=events.data()))
            self._count("dead")

    # -- sending ----------------------------------------------------------------------------------
    async def post(self, send: _Send) -> _Outcome:
        """One attempt. Never raises (but for cancellation): every failure is an outcome."""
        body = json.dumps(send.payload, separators=(",", ":"), ensure_ascii=False).encode()
        now = self.clock.now()
        at = ms(now)
        headers = {"content-type": "application/json", "user-agent": USER_AGENT,
                   **signing.headers(send.secrets, send.id, int(now.timestamp()), body)}
        started = time.perf_counter()

        def elapsed() -> int:
            return int((time.perf_counter() - started) * 1000)

        try:
            async with asyncio.timeout(self.timeout):
                client, url = await self._clients.get(send.url)
                async with client.stream("POST", url, content=body, headers=headers, timeout=self.timeout) as r:
                    head = await _head(r, self.max_response_bytes)
        except UnsafeUrl as exc:
            return _Outcome(send, None, elapsed(), at, exc.message, "webhook_unsafe_url", permanent=True)
        except BrokenUrl as exc:
            return _Outcome(send, None, elapsed(), at, exc.message, "webhook_unreachable")
        except (TimeoutError, httpx.TimeoutException):
            return _Outcome(send, None, elapsed(), at, f"no answer within {self.timeout:g} s", "webhook_timeout")
        except httpx.ConnectError as exc:
            return _Outcome(send, None, elapsed(), at, f"could not connect: {exc or type(exc).__name__}",
                            "webhook_unreachable")
        except httpx.HTTPError as exc:
            return _Outcome(send, None, elapsed(), at, f"{type(exc).__name__}: {exc}", "webhook_unreachable")
        latency = elapsed()
        text = head.decode("utf-8", errors="replace") or None
        if 200 <= r.status_code < 300:
            return _Outcome(send, r.status_code, latency, at, response=text)
        return _Outcome(send, r.status_code, latency, at, f"HTTP {r.status_code}", f"webhook_http_{r.status_code}",
                        response=text, retry_after=retry_after(r.headers.get("retry-after"), self.clock.now()))

    # -- recording --------------------------------------------------------------------------------
    def _retry_delay(self, o: _Outcome) -> float:
        base = self.schedule[min(o.send.attempt, len(self.schedule)) - 1] if self.schedule else 0.0
        delay = base * (1 + self.jitter * self._rng.random())
        if o.retry_after is not None:
            delay = max(delay, min(o.retry_after, RETRY_AFTER_CAP))
        return delay

    async def record(self, outcomes: Sequence[_Outcome]) -> bool:
        """Write attempts and their consequences in one transaction, a fixed number of statements
        however many outcomes; True if any will be retried."""
        now = self._now()
        retrying = False
        async with unit(self.db, self.notifier) as u:
            attempts = [{"delivery_id": o.send.id, "attempt": o.send.attempt, "status_code": o.status_code,
                         "latency_ms": o.latency_ms, "error": o.error, "response": o.response, "created_at": now}
                        for o in outcomes]
            await u.conn.execute(q.insert_attempts(), attempts)
            leases = {(o.send.id, o.send.owner) for o in outcomes}
            current = {r[0] for r in (await u.conn.execute(q.still_leased(leases, u.postgres))).all()}
            settled: list[tuple[_Outcome, str, float | None]] = []
            values: list[dict[str, Any]] = []
            for o in sorted(outcomes, key=lambda o: o.send.id):
                s = o.send
                if s.id not in current:
                    log.info("webhooks.outcome_superseded", delivery_id=s.id, job_id=s.job_id)
                    continue  # replayed, or another dispatcher took over after our lease ran out
                if o.ok:
                    status, delay = "delivered", None
                elif o.permanent or o.status_code == 410 or s.attempt >= self.max_attempts:
                    status, delay = "dead", None
                else:
                    status, delay = "pending", self._retry_delay(o)
                values.append({"b_id": s.id, "b_status": status, "b_attempts": s.attempt,
                               "b_status_code": o.status_code, "b_error": o.error, "b_latency_ms": o.latency_ms,
                               "b_next": now + int((delay or 0.0) * 1000), "b_now": now})
                settled.append((o, status, delay))
                retrying = retrying or status == "pending"
            if values:
                await u.conn.execute(q.settle_deliveries(), values)
            await self._endpoint_health(u, [o for o, _, _ in settled], now)
            jobs = await _touch(u, [o.send.job_id for o, _, _ in settled], now)
            for o, status, delay in settled:
                self._events(u, jobs.get(o.send.job_id), o, status, delay, now)
        return retrying

    def _events(
        self, u: Unit, job: Mapping[Any, Any] | None, o: _Outcome, status: str, delay: float | None, now: int
    ) -> None:
        s = o.send
        events = _Events(u, job, {"id": s.id, "endpoint_id": s.endpoint_id, "event_type": s.event_type}, now)
        events.add(EventSpec(EventType.WEBHOOK_DISPATCHED, data=events.data(attempt=s.attempt)), at=o.sent_at)
        fields = {"attempt": s.attempt, "status_code": o.status_code}
        if o.ok:
            events.add(EventSpec(EventType.WEBHOOK_DELIVERED, latency_ms=o.latency_ms, data=events.data(**fields)))
            log.info("webhooks.delivered", delivery_id=s.id, job_id=s.job_id, endpoint_id=s.endpoint_id,
                     attempt=s.attempt, status=o.status_code, latency_ms=o.latency_ms)
            self._count("delivered")
            return
        if delay is not None:
            fields["next_attempt_in_ms"] = int(delay * 1000)
        events.add(EventSpec(EventType.WEBHOOK_FAILED, latency_ms=o.latency_ms, error_code=o.error_code,
                             error_msg=o.error, data=events.data(**fields)))
        log.info("webhooks.failed", delivery_id=s.id, job_id=s.job_id, endpoint_id=s.endpoint_id, attempt=s.attempt,
                 status=o.status_code, error=o.error, retry_in=delay)
        self._count("failed")
        if status == "dead":
            reason = o.error if (o.permanent or o.status_code == 410) else f"{s.attempt} attempts failed"
            events.add(EventSpec(EventType.WEBHOOK_DEAD_LETTER, error_code=o.error_code, error_msg=reason,
                                 data=events.data(attempt=s.attempt)))
            log.warning("webhooks.dead_letter", delivery_id=s.id, job_id=s.job_id, endpoint_id=s.endpoint_id,
                        reason=reason)
            self._count("dead")

    async def _endpoint_health(self, u: Unit, settled: Sequence[_Outcome], now: int) -> None:
        """Clear the failure clock on success; start it on failure, and disable an endpoint that
        answered 410 or has failed for longer than webhook_disable_after_seconds."""
        ok = {o.send.endpoint_id for o in settled if o.ok and o.send.endpoint_id and o.send.failing_since}
        failed = {o.send.endpoint_id for o in settled if not o.ok and o.send.endpoint_id} - {
            o.send.endpoint_id for o in settled if o.ok}
        gone = {o.send.endpoint_id for o in settled if o.status_code == 410 and o.send.endpoint_id}
        if ok:
            await u.conn.execute(q.clear_endpoints_failing(ok))
        disable: dict[str, str] = {e: "the endpoint answered 410 Gone" for e in gone if e}
        if failed:
            for endpoint_id, since, enabled in (await u.conn.execute(q.mark_endpoints_failing(failed, now))).all():
                if enabled and endpoint_id not in disable and now - int(since) >= self.disable_after_ms:
                    disable[endpoint_id] = (f"failing without a success since {outbox.iso(int(since))} "
                                            f"(more than {self.disable_after_ms / 1000:g} s)")
        for endpoint_id, reason in sorted(disable.items()):
            if (await u.conn.execute(q.disable_endpoint(endpoint_id, reason, now))).rowcount:
                log.warning("webhooks.endpoint_disabled", endpoint_id=endpoint_id, reason=reason)
        if disable:
            u.after_commit.append(lambda: outbox.forget_interest(self._key))

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.webhooks.labels(outcome).inc()


class _Events:
    """Webhook events for one delivery on its job's log (skipped if the job is gone). Outcomes of
    delivering a webhook event never cause deliveries themselves."""

    def __init__(self, u: Unit, job: Mapping[Any, Any] | None, delivery: Mapping[Any, Any], now: int) -> None:
        self.u, self.job, self.now = u, job, now
        self.delivery_id, self.endpoint_id = delivery["id"], delivery["endpoint_id"]
        self.event_type = str(delivery["event_type"])
        self.loops = self.event_type.removeprefix("job.") in {e.value for e in outbox.WEBHOOK_EVENTS}

    def data(self, **extra: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"delivery_id": self.delivery_id, "event": self.event_type}
        if self.endpoint_id is not None:
            out["endpoint_id"] = self.endpoint_id
        return out | {k: v for k, v in extra.items() if v is not None}

    def add(self, spec: EventSpec, at: int | None = None) -> None:
        if self.job is not None:
            self.u.add_events(self.job, [spec], self.now if at is None else at, webhooks=not self.loops)


async def _touch(u: Unit, job_ids: Sequence[str], now: int) -> dict[str, Mapping[Any, Any]]:
    """Take the jobs' rows (events on a job are written under its row lock) and return them."""
    if not job_ids:
        return {}
    rows = (await u.conn.execute(q.touch_jobs(job_ids, now, u.postgres))).mappings().all()
    return {r["id"]: r for r in rows}


async def _head(response: httpx.Response, limit: int) -> bytes:
    """At most ``limit`` bytes of the body; the rest is never read."""
    buf = bytearray()
    async for chunk in response.aiter_raw():
        buf += chunk
        if len(buf) >= limit:
            break
    return bytes(buf[:limit])


def retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())


class _Clients:
    """Pinned HTTP clients per origin, reused for ``PIN_SECONDS`` (connection reuse) before the
    origin's addresses are checked again; one check and one client at a time per origin, all
    sharing one TLS context (building one reads the CA bundle: tens of milliseconds). Retired
    clients are closed once no attempt can still be using them."""

    def __init__(self, fetcher: SafeFetcher, timeout: float, verify: ssl.SSLContext | None = None) -> None:
        self.fetcher, self.timeout = fetcher, timeout
        self._verify = verify
        self._live: dict[tuple[str, str, bytes, int | None], tuple[httpx.AsyncClient, CheckedUrl, float]] = {}
        self._locks: dict[tuple[str, str, bytes, int | None], asyncio.Lock] = {}
        self._retired: list[tuple[httpx.AsyncClient, float]] = []

    async def get(self, url: str) -> tuple[httpx.AsyncClient, httpx.URL]:
        """A client for ``url`` and the URL to request (its host in the form that was checked)."""
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            raise BrokenUrl("not a valid URL", reason="invalid", url=url) from None
        key = (parsed.scheme, parsed.userinfo.decode("ascii", "replace"), parsed.raw_host, parsed.port)
        live = self._live.get(key)
        if live is None or live[2] < time.monotonic():
            async with self._locks.setdefault(key, asyncio.Lock()):
                live = self._live.get(key)
                now = time.monotonic()
                if live is None or live[2] < now:
                    await self._close_retired(now)
                    checked = await self.fetcher.check(url)
                    if self._verify is None:
                        self._verify = httpx.create_ssl_context()
                    client = httpx.AsyncClient(transport=PinnedTransport(checked, verify=self._verify),
                                               follow_redirects=False, trust_env=False, timeout=self.timeout)
                    if live is not None:
                        self._retired.append((live[0], now + self.timeout + 1))
                    live = self._live[key] = (client, checked, now + PIN_SECONDS)
        return live[0], parsed.copy_with(host=live[1].url.host)

    async def _close_retired(self, now: float) -> None:
        due = [c for c, at in self._retired if at < now]
        if due:
            self._retired = [(c, at) for c, at in self._retired if at >= now]
            for client in due:
                await client.aclose()

    async def close(self) -> None:
        clients = [c for c, _, _ in self._live.values()] + [c for c, _ in self._retired]
        self._live.clear()
        self._retired.clear()
        for client in clients:
            with contextlib.suppress(Exception):
                await client.aclose()

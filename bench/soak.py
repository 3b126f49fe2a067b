"""Soak: N mixed jobs from C concurrent HTTP clients through one API process and W worker processes,
with a Replicate stand-in answering in 0-200 ms; then every invariant is checked. Run by hand:

    .venv/bin/python bench/soak.py [--db postgresql|sqlite|both] [--jobs N] [--clients 50] [--workers W]
                                   [--concurrency 4] [--seed 1] [--pg-url URL] [--keep-logs]

Defaults: PostgreSQL, 10,000 jobs, 4 worker processes (``python -m genloom worker``); SQLite, 2,000
jobs, 2 workers; one API process (genloom's app without its embedded worker) and 50 clients either
way. The fast variant runs in the test suite (tests/reliability/test_soak.py) on this module's parts.

The mix, by job index from the seed: 40% ``copy`` (a synchronous type), 25% ``static_ad`` through
the Replicate stand-in, 5% ``static_ad`` the stand-in fails, 20% ``motion`` (single, 0.5 s at
240p), 10% ``motion`` from a missing upload (fails in its vision stage). Users are spread over 20
per project, billed, granted credits through POST /v1/admin/credits. Every request carries an
Idempotency-Key (a transport error is retried on the same key); 5% of submissions are sent twice
(the repeat must answer 200 with the same job), 5% of jobs are cancelled 0-300 ms after their
submission, and 10% are followed over SSE to their end (reconnecting with Last-Event-ID).

Checks (printed as counts; every "bad" count must be 0):
* every job terminal, with exactly one terminal event, which is its last lifecycle event and names
  its status; its first event is ``queued`` (``started`` for synchronous types, or its end when
  cancelled while pending); no lease left;
* each outcome as planned (a job whose cancel was accepted may end cancelled, or failed if it was
  meant to fail);
* event ids received over SSE strictly increasing, without duplicates, equal to the job's log;
* each job's ledger: one charge of its cost, one refund exactly when it ended failed, cancelled or
  expired (so it sums to -cost or 0), its ``charged`` flag to match; each user's balance = grants -
  costs of completed jobs = the sum of the user's ledger;
* idempotent repeats answered 200 with the same job;
* 0 HTTP 5xx (clients' requests, and the provider's callbacks to the API), 0 transport errors;
* 0 "database is locked" in the API's and workers' logs.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # bench/queue.py is not ``queue``
if os.path.dirname(_HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import io  # noqa: E402
import itertools  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass, field, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
from sqlalchemy import create_engine, select  # noqa: E402

from genloom.store.engine import sync_url  # noqa: E402
from genloom.store.schema import credit_accounts, credit_ledger, job_events, jobs  # noqa: E402
from genloom.testing import FakeReplicate, ReplicateScript  # noqa: E402

TERMINAL = ("completed", "failed", "cancelled", "expired")
REFUNDED = ("failed", "cancelled", "expired")
SYNC_TYPES = ("copy", "scrape")
#: kind -> (share of the jobs, the outcome it is meant to have)
MIX: dict[str, tuple[float, str]] = {
    "copy": (0.40, "completed"),
    "static_ad": (0.25, "completed"),
    "static_ad_fail": (0.05, "failed"),
    "motion": (0.20, "completed"),
    "motion_bad": (0.10, "failed"),
}
FAIL_MARK = "-fail-"


# ---------------------------------------------------------------------------------------------
# the plan: what each job is, decided up front from the seed
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    index: int
    kind: str
    user: str
    key: str  # Idempotency-Key
    cancel_after: float | None  # seconds after the submission, or no cancel
    repeat: bool  # submit a second time with the same key
    follow: bool  # read its SSE stream to the end

    @property
    def expected(self) -> str:
        return MIX[self.kind][1]

    def body(self) -> dict[str, Any]:
        i = self.index
        if self.kind == "copy":
            return {"type": "copy", "user": self.user, "input": {"name": f"soak product {i}", "audience": "testers"}}
        if self.kind.startswith("static_ad"):
            mark = FAIL_MARK if self.kind == "static_ad_fail" else "-ok-"
            return {"type": "static_ad", "user": self.user,
                    "input": {"name": f"soak{mark}{i}", "headline": "Soak", "cta": "Buy"}}
        src = f"uploads/soak/missing-{i}.jpg" if self.kind == "motion_bad" else "sample"
        return {"type": "motion", "mode": "single", "user": self.user,
                "input": {"src": src, "dur": 0.5, "height": 240, "seed": i}}


def make_plans(n: int, seed: int = 1, *, users: int = 20, mix: dict[str, tuple[float, str]] | None = None,
               cancel: float = 0.05, repeat: float = 0.05, follow: float = 0.10) -> list[Plan]:
    rng = random.Random(seed)
    mix = mix or MIX
    kinds, weights = list(mix), [share for share, _ in mix.values()]
    run = uuid.uuid4().hex[:8]
    return [
        Plan(index=i, kind=rng.choices(kinds, weights)[0], user=f"user{i % users:02d}", key=f"soak-{run}-{i}",
             cancel_after=rng.uniform(0.0, 0.3) if rng.random() < cancel else None,
             repeat=rng.random() < repeat, follow=rng.random() < follow)
        for i in range(n)
    ]


def png_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (40, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


class SoakReplicate(FakeReplicate):
    """FakeReplicate whose predictions finish 0-200 ms after creation (a function of the prompt,
    so reruns behave alike) and fail when the prompt carries FAIL_MARK."""

    def __init__(self, latency: tuple[float, float] = (0.0, 0.2)) -> None:
        super().__init__(files={"output.png": png_bytes()})
        self.latency = latency

    async def _run(self, pid: str, script: ReplicateScript) -> None:
        with self._cond:
            prompt = str(self._predictions[pid]["input"].get("prompt", ""))
        rng = random.Random(prompt)
        script = replace(script, latency=rng.uniform(*self.latency),
                         outcome="fail" if FAIL_MARK in prompt else "succeed")
        await super()._run(pid, script)

    def callback_statuses(self) -> Counter[str]:
        with self._cond:
            return Counter("unreachable" if d.status is None else str(d.status) for d in self.deliveries)


# ---------------------------------------------------------------------------------------------
# the load: C clients, each submitting, sometimes repeating, cancelling and following
# ---------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    plan: Plan
    job_id: str | None = None
    submit_status: int | None = None
    repeat_status: int | None = None
    repeat_same: bool | None = None
    cancel_status: int | None = None
    sse_ids: list[int] | None = None
    sse_types: list[str] | None = None
    sse_reconnects: int = 0


@dataclass
class Drive:
    outcomes: list[Outcome] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)  # "METHOD route status" -> count
    transport_errors: Counter[str] = field(default_factory=Counter)
    submit_latencies: list[float] = field(default_factory=list)
    t_start: float = 0.0
    t_submitted: float = 0.0
    t_done: float = 0.0
    all_terminal: bool = False

    @property
    def http_5xx(self) -> int:
        return sum(n for k, n in self.codes.items() if k.rsplit(" ", 1)[1].startswith("5"))


class Client:
    """One of the concurrent HTTP clients: its own connection pool, retries on the same key."""

    def __init__(self, base_url: str, key: str, drive: Drive) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60,
                                      trust_env=False)
        self.drive = drive

    async def call(self, method: str, url: str, route: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(4):
            try:
                r = await self.http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                self.drive.transport_errors[f"{method} {route} {type(exc).__name__}"] += 1
                if attempt == 3:
                    raise
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            self.drive.codes[f"{method} {route} {r.status_code}"] += 1
            return r
        raise AssertionError("unreachable")

    async def run(self, plan: Plan) -> Outcome:
        out = Outcome(plan)
        self.drive.outcomes.append(out)
        headers = {"Idempotency-Key": plan.key}
        t0 = time.monotonic()
        r = await self.call("POST", "/v1/jobs", "/v1/jobs", json=plan.body(), headers=headers)
        self.drive.submit_latencies.append(time.monotonic() - t0)
        out.submit_status = r.status_code
        if r.status_code not in (200, 201):
            return out
        out.job_id = job_id = str(r.json()["id"])
        if plan.repeat:
            again = await self.call("POST", "/v1/jobs", "/v1/jobs", json=plan.body(), headers=headers)
            out.repeat_status = again.status_code
            out.repeat_same = again.status_code == 200 and again.json().get("id") == job_id
        if plan.cancel_after is not None:
            await asyncio.sleep(plan.cancel_after)
            out.cancel_status = (await self.call("POST", f"/v1/jobs/{job_id}/cancel", "/v1/jobs/{id}/cancel")
                                 ).status_code
        if plan.follow:
            await self.follow(out, job_id)
        return out

    async def follow(self, out: Outcome, job_id: str) -> None:
        """Read the job's SSE stream until its terminal event, resuming with Last-Event-ID."""
        out.sse_ids, out.sse_types = [], []
        for _ in range(50):
            headers = {"Accept": "text/event-stream"}
            if out.sse_ids:
                headers["Last-Event-ID"] = str(out.sse_ids[-1])
            try:
                async with self.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers,
                                            timeout=httpx.Timeout(60, read=90)) as resp:
                    self.drive.codes[f"GET /v1/jobs/{{id}}/events {resp.status_code}"] += 1
                    if resp.status_code != 200:
                        return
                    ev_id: int | None = None
                    ev_type = "message"
                    async for line in resp.aiter_lines():
                        if line.startswith("id:"):
                            ev_id = int(line[3:].strip())
                        elif line.startswith("event:"):
                            ev_type = line[6:].strip()
                        elif line == "" and ev_id is not None:
                            out.sse_ids.append(ev_id)
                            out.sse_types.append(ev_type)
                            if ev_type in TERMINAL:
                                return
                            ev_id, ev_type = None, "message"
            except httpx.TransportError as exc:
                self.drive.transport_errors[f"GET /v1/jobs/{{id}}/events {type(exc).__name__}"] += 1
            out.sse_reconnects += 1
            await asyncio.sleep(0.1)

    async def aclose(self) -> None:
        await self.http.aclose()


async def grant(base_url: str, admin_token: str, project_id: str, amounts: dict[str, int]) -> None:
    async with httpx.AsyncClient(base_url=base_url, trust_env=False, timeout=30,
                                 headers={"Authorization": f"Bearer {admin_token}"}) as http:
        for user, amount in amounts.items():
            r = await http.post("/v1/admin/credits", json={"project_id": project_id, "user": user, "amount": amount})
            assert r.status_code == 200, r.text


def grants_for(plans: Sequence[Plan], cost: int = 10) -> dict[str, int]:
    """Enough for every job of each user at the highest price, with room to spare."""
    per_user = Counter(p.user for p in plans)
    return {user: n * cost + 100 for user, n in sorted(per_user.items())}


async def drive(base_url: str, key: str, plans: Sequence[Plan], clients: int, *, within: float,
                progress: bool = False) -> Drive:
    """Send every plan through ``clients`` concurrent clients, then wait until no job is active."""
    result = Drive()
    todo: asyncio.Queue[Plan] = asyncio.Queue()
    for p in plans:
        todo.put_nowait(p)
    pool = [Client(base_url, key, result) for _ in range(clients)]
    loop = asyncio.get_running_loop()
    result.t_start = loop.time()
    deadline = result.t_start + within

    async def work(client: Client) -> None:
        while not todo.empty() and loop.time() < deadline:
            plan = todo.get_nowait()
            await client.run(plan)

    async def report() -> None:
        while True:
            await asyncio.sleep(10)
            print(f"  … {len(result.outcomes)}/{len(plans)} submitted after {loop.time() - result.t_start:.0f} s",
                  flush=True)

    reporter = asyncio.create_task(report()) if progress else None
    try:
        await asyncio.gather(*(work(c) for c in pool))
        result.t_submitted = loop.time()
        watcher = pool[0]
        while loop.time() < deadline:
            active = 0
            for status in ("pending", "queued", "running"):
                r = await watcher.call("GET", "/v1/jobs", "/v1/jobs", params={"status": status, "limit": 1})
                active += len(r.json()["data"]) if r.status_code == 200 else 1
            if not active:
                result.all_terminal = True
                break
            await asyncio.sleep(0.25)
        result.t_done = loop.time()
    finally:
        if reporter is not None:
            reporter.cancel()
        for c in pool:
            await c.aclose()
    return result


# ---------------------------------------------------------------------------------------------
# the checks, against the database and the logs once every process has stopped
# ---------------------------------------------------------------------------------------------

@dataclass
class Report:
    counts: dict[str, int | float | str] = field(default_factory=dict)
    bad: Counter[str] = field(default_factory=Counter)  # check -> violations
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def fail(self, check: str, example: str) -> None:
        self.bad[check] += 1
        if len(self.examples[check]) < 3:
            self.examples[check].append(example)

    @property
    def ok(self) -> bool:
        return not any(self.bad.values())

    def lines(self) -> list[str]:
        out = [f"  {k:<38} {v}" for k, v in self.counts.items()]
        out.append("  violations: " + (", ".join(f"{k}={v}" for k, v in sorted(self.bad.items()) if v) or "none"))
        for check, examples in self.examples.items():
            for e in examples:
                out.append(f"    {check}: {e}")
        return out


LIFECYCLE_SKIP = ("webhook_",)  # delivery outcomes may follow a terminal event


def pct(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


def check(db_url: str, project_id: str, grants: dict[str, int], run: Drive, logs: Sequence[Path],
          callbacks: Counter[str] | None = None) -> Report:
    rep = Report()
    engine = create_engine(sync_url(db_url))
    try:
        with engine.connect() as conn:
            job_rows = {r["id"]: dict(r) for r in conn.execute(
                select(jobs).where(jobs.c.project_id == project_id)).mappings()}
            events: dict[str, list[tuple[int, str]]] = defaultdict(list)
            for r in conn.execute(select(job_events.c.job_id, job_events.c.id, job_events.c.type)
                                  .where(job_events.c.project_id == project_id)
                                  .order_by(job_events.c.job_id, job_events.c.id)):
                events[r.job_id].append((int(r.id), str(r.type)))
            ledger = list(conn.execute(select(credit_ledger).where(credit_ledger.c.project_id == project_id))
                          .mappings())
            balances = {r.user_id: int(r.balance) for r in conn.execute(
                select(credit_accounts.c.user_id, credit_accounts.c.balance)
                .where(credit_accounts.c.project_id == project_id))}
    finally:
        engine.dispose()

    outcomes = {o.job_id: o for o in run.outcomes if o.job_id}
    statuses = Counter(str(j["status"]) for j in job_rows.values())
    submitted = [o for o in run.outcomes if o.submit_status in (200, 201)]
    rep.counts["jobs planned / submitted / in db"] = f"{len(run.outcomes)} / {len(submitted)} / {len(job_rows)}"
    rep.counts["final statuses"] = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
    if len(submitted) != len(run.outcomes):
        for o in run.outcomes:
            if o.submit_status not in (200, 201):
                rep.fail("submit refused", f"job #{o.plan.index}: {o.submit_status}")
    if set(outcomes) != set(job_rows):
        rep.fail("jobs in db != jobs submitted", f"{len(set(outcomes) ^ set(job_rows))} differ")

    # -- lifecycle and events ---------------------------------------------------------------------
    terminal_events = 0
    for job_id, job in job_rows.items():
        status = str(job["status"])
        if status not in TERMINAL:
            rep.fail("job not terminal", f"{job_id} {status}")
        if job["lease_token"] is not None:
            rep.fail("lease left on a terminal job", job_id)
        life = [(i, t) for i, t in events.get(job_id, []) if not t.startswith(LIFECYCLE_SKIP)]
        ids = [i for i, _ in events.get(job_id, [])]
        if ids != sorted(set(ids)):
            rep.fail("event ids not strictly increasing", job_id)
        terms = [t for _, t in life if t in TERMINAL]
        terminal_events += len(terms)
        if len(terms) != 1:
            rep.fail("terminal events != 1", f"{job_id}: {terms}")
        elif life[-1][1] != status:
            rep.fail("last lifecycle event != status", f"{job_id}: {life[-1][1]} vs {status}")
        # a queued type starts with "queued"; a synchronous one with "started", or with its end when
        # it was cancelled while still pending
        first = {"started", status} if job["type"] in SYNC_TYPES else {"queued"}
        if not life or life[0][1] not in first:
            rep.fail("first event", f"{job_id} ({job['type']}): {life[0][1] if life else None}, expected {first}")
        o = outcomes.get(job_id)
        if o is not None:
            expected = o.plan.expected
            if o.cancel_status == 202:
                allowed = {"cancelled"} | ({expected} if expected == "failed" else set())
            else:
                allowed = {expected}
            if status not in allowed:
                rep.fail("unexpected outcome", f"{job_id} ({o.plan.kind}, cancel {o.cancel_status}): {status}")
    rep.counts["terminal events (one per job)"] = terminal_events
    rep.counts["events in the log"] = sum(len(v) for v in events.values())

    # -- what clients saw -------------------------------------------------------------------------
    followed = [o for o in run.outcomes if o.sse_ids is not None]
    for o in followed:
        assert o.sse_ids is not None and o.job_id is not None
        ids = o.sse_ids
        if any(b <= a for a, b in itertools.pairwise(ids)):
            rep.fail("SSE ids not strictly increasing", f"{o.job_id}: {ids}")
        logged = []
        for i, t in events.get(o.job_id, []):
            logged.append(i)
            if t in TERMINAL:
                break
        if ids != logged:
            rep.fail("SSE ids != the job's log", f"{o.job_id}: got {ids}, log {logged}")
    rep.counts["jobs followed over SSE (reconnects)"] = (
        f"{len(followed)} ({sum(o.sse_reconnects for o in followed)})")
    repeats = [o for o in run.outcomes if o.plan.repeat and o.job_id]
    for o in repeats:
        if not o.repeat_same:
            rep.fail("idempotent repeat", f"{o.job_id}: {o.repeat_status}")
    cancels = Counter(str(o.cancel_status) for o in run.outcomes if o.plan.cancel_after is not None)
    rep.counts["idempotent repeats (same job, 200)"] = f"{sum(1 for o in repeats if o.repeat_same)}/{len(repeats)}"
    rep.counts["cancels sent (answers)"] = ", ".join(f"{k}: {v}" for k, v in sorted(cancels.items())) or "0"
    for k in cancels:
        if k not in ("202", "409"):
            rep.fail("cancel answer", k)

    # -- credits ----------------------------------------------------------------------------------
    by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_user: Counter[str] = Counter()
    for row in ledger:
        by_user[row["user_id"]] += int(row["amount"])
        if row["job_id"] is not None:
            by_job[row["job_id"]].append(dict(row))
    spent: Counter[str] = Counter()
    for job_id, job in job_rows.items():
        rows = by_job.get(job_id, [])
        charges = [r for r in rows if r["reason"] == "charge"]
        refunds = [r for r in rows if r["reason"] == "refund"]
        cost, status = int(job["cost"]), str(job["status"])
        want_refund = 1 if status in REFUNDED else 0
        if len(charges) != 1 or int(charges[0]["amount"]) != -cost:
            rep.fail("charge != one of the cost", f"{job_id}: {[(r['reason'], r['amount']) for r in rows]}")
        if len(refunds) != want_refund or any(int(r["amount"]) != cost for r in refunds):
            rep.fail("refund != status", f"{job_id} {status}: {[(r['reason'], r['amount']) for r in rows]}")
        if len(rows) != 1 + want_refund:
            rep.fail("other ledger rows", f"{job_id}: {[(r['reason'], r['amount']) for r in rows]}")
        if bool(job["charged"]) != (status not in REFUNDED):
            rep.fail("charged flag", f"{job_id} {status} charged={job['charged']}")
        if status == "completed":
            spent[job["user_id"]] += cost
    for user, granted in grants.items():
        want = granted - spent[user]
        if balances.get(user) != want or by_user[user] != want:
            rep.fail("balance != grants - completed costs",
                     f"{user}: balance {balances.get(user)}, ledger {by_user[user]}, expected {want}")
    rep.counts["credits granted / spent / refunded rows"] = (
        f"{sum(grants.values())} / {sum(spent.values())} / {sum(1 for r in ledger if r['reason'] == 'refund')}")

    # -- HTTP and logs ----------------------------------------------------------------------------
    rep.counts["HTTP requests by answer"] = ", ".join(
        f"{s}xx {n}" for s, n in sorted(Counter(k.rsplit(" ", 1)[1][0] for k in run.codes.elements()).items()))
    if run.http_5xx:
        rep.fail("HTTP 5xx", ", ".join(f"{k}: {v}" for k, v in run.codes.items() if k.rsplit(" ", 1)[1][0] == "5"))
    for k, v in run.transport_errors.items():
        rep.bad["transport errors"] += v
        rep.examples["transport errors"].append(f"{k}: {v}")
    if callbacks is not None:
        rep.counts["provider callbacks by answer"] = ", ".join(f"{k} {v}" for k, v in sorted(callbacks.items()))
        for k, v in callbacks.items():
            if not k.startswith("2"):
                rep.bad["callback not 2xx"] += v
    if not run.all_terminal:
        rep.fail("jobs still active at the deadline", "see 'job not terminal'")
    locked = errors = 0
    error_events: Counter[str] = Counter()
    for path in logs:
        for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
            low = line.lower()
            if "database is locked" in low:
                locked += 1
            if '"level": "error"' in low or "traceback" in low:
                errors += 1
                start = line.find('"event": "')
                error_events[line[start + 10:line.find('"', start + 10)] if start >= 0 else line[:60]] += 1
    rep.counts['"database is locked" in logs'] = locked
    rep.counts["error lines in logs"] = errors if not errors else f"{errors} ({dict(error_events.most_common(5))})"
    if locked:
        rep.fail("database is locked", f"{locked} lines")

    # -- throughput -------------------------------------------------------------------------------
    n = len(job_rows)
    wall = run.t_done - run.t_start
    sub = run.t_submitted - run.t_start
    rep.counts["submit wall time s (jobs/s)"] = f"{sub:.1f} ({n / max(1e-9, sub):.1f})"
    rep.counts["all terminal after s (jobs/s)"] = f"{wall:.1f} ({n / max(1e-9, wall):.1f})"
    rep.counts["submit latency p50/p99 ms"] = (f"{pct(run.submit_latencies, 50) * 1000:.0f} / "
                                               f"{pct(run.submit_latencies, 99) * 1000:.0f}")
    by_type: dict[str, list[float]] = defaultdict(list)
    for job in job_rows.values():
        if job["status"] == "completed" and job["completed_at"]:
            by_type[str(job["type"])].append((job["completed_at"] - job["created_at"]) / 1000)
    rep.counts["created -> completed p50/p99 s"] = ", ".join(
        f"{t} {pct(v, 50):.2f}/{pct(v, 99):.2f}" for t, v in sorted(by_type.items()))
    return rep


# ---------------------------------------------------------------------------------------------
# the long run, by hand
# ---------------------------------------------------------------------------------------------

def main() -> None:
    import warnings

    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["postgresql", "sqlite", "both"], default="postgresql")
    parser.add_argument("--jobs", type=int, default=None, help="default 10,000 on PostgreSQL, 2,000 on SQLite")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default 4 PG, 2 SQLite)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=4, help="jobs each worker runs at once")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--within", type=float, default=3600.0, help="give up after this many seconds")
    parser.add_argument("--pg-url", default=None)
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()
    dbs = ["postgresql", "sqlite"] if args.db == "both" else [args.db]
    failed = False
    for dialect in dbs:
        failed |= not soak_one(dialect, args)
    sys.exit(1 if failed else 0)


def soak_one(dialect: str, args: argparse.Namespace) -> bool:
    from bench._common import PgDatabases, SqliteFiles, pg_server_url
    from bench._procs import ADMIN_TOKEN, ApiProcess, base_env, raise_nofile, worker_process
    from bench.api import make_project

    n = args.jobs or (10_000 if dialect == "postgresql" else 2_000)
    n_workers = args.workers or (4 if dialect == "postgresql" else 2)
    raise_nofile(8192)
    root = Path(tempfile.mkdtemp(prefix=f"genloom-soak-{dialect}-"))
    pg: PgDatabases | None = None
    sqlite: SqliteFiles | None = None
    if dialect == "postgresql":
        server, origin = pg_server_url(args.pg_url)
        pg = PgDatabases(server)
        db_url = pg.genloom("soak")
    else:
        sqlite, origin = SqliteFiles(), "a temp file"
        db_url = sqlite.genloom("soak")
    print(f"[{dialect}] {n} jobs, {args.clients} clients, 1 API process + {n_workers} workers x {args.concurrency}; "
          f"database {origin}; logs in {root}", flush=True)
    procs = []
    try:
        with SoakReplicate() as fake:
            env = base_env(db_url, root / "data", {
                "GENLOOM_STATIC_AD_PROVIDER": "replicate", "GENLOOM_REPLICATE_URL": fake.url,
                "GENLOOM_REPLICATE_TOKEN": fake.token or "", "GENLOOM_REPLICATE_WEBHOOK_SECRET": fake.webhook_secret,
                "GENLOOM_FETCH_ALLOW_NETWORKS": '["127.0.0.0/8"]', "GENLOOM_POLL_SECONDS": "0.2",
                "GENLOOM_SHUTDOWN_GRACE_SECONDS": "5", "GENLOOM_CONCURRENCY": str(args.concurrency),
            })
            api = ApiProcess(env, root / "api.log", background=False).wait_ready()
            procs.append(api)
            env["GENLOOM_PUBLIC_URL"] = api.url
            for i in range(n_workers):
                procs.append(worker_process(env, root / f"worker-{i}.log"))
            project_id, key = asyncio.run(make_project(db_url, billing=True))
            plans = make_plans(n, args.seed)
            grants = grants_for(plans)
            asyncio.run(grant(api.url, ADMIN_TOKEN, project_id, grants))
            run = asyncio.run(drive(api.url, key, plans, args.clients, within=args.within, progress=True))
            for p in procs:
                p.signal_stop()
            codes = [p.wait_stopped() for p in procs]
            callbacks = fake.callback_statuses()
        report = check(db_url, project_id, grants, run, [p.log_path for p in procs], callbacks)
        report.counts["exit codes (api, workers)"] = str(codes)
        if any(c != 0 for c in codes[1:]):
            report.fail("worker exit code", str(codes))
        print(f"[{dialect}] {'OK' if report.ok else 'FAILED'}")
        print("\n".join(report.lines()), flush=True)
        return report.ok
    finally:
        for p in procs:
            if p.alive():
                p.stop()
        if pg is not None:
            pg.drop_all()
        if sqlite is not None:
            sqlite.cleanup()
        if not args.keep_logs:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Cancel storm: 300 static_ad jobs of a billed project (30 users), created at 30/s on a real server
with a Replicate stand-in (predictions take 1 s, callbacks delivered), each cancelled through
POST /v1/jobs/{id}/cancel at a random moment: at once, or up to 2.5 s after its creation. Whatever
the job was doing then:

- queued: cancelled at once (the answer says so), and never reaches the provider;
- held by the worker (submitting): flagged, then cancelled by the worker, its prediction cancelled;
- parked at the provider: cancelled at once, its prediction cancelled at the provider;
- held while its finished prediction's output was stored: flagged, then the settle ends it cancelled;
- completed first: 409, and it stays completed, charged;

every cancelled job is refunded exactly once, a prediction is cancelled at the provider within 1.5 s
of the cancel being answered (a held job's watcher reads its row "every second or so", the
issue's words, and at most every 0.5 s; then the cancel's own write queues behind the storm's),
and no job is revived (its terminal event stays its last, also after the late callbacks arrive).
``pytest -s`` shows the figures."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from genloom.testing import ReplicateScript
from tests.api.conftest import ApiServer, provider_env, run
from tests.conftest import DIALECTS
from tests.reliability.conftest import project, start_server, wait_all
from tests.reliability.provider import Books, TimedReplicate, books

JOBS = 300
CLIENTS = 10
USERS = 30  # each with credits for its share of the jobs
RATE = 30  # jobs created per second
LATENCY = 1.0
LATEST = 2.5  # seconds after its creation by which every job has been cancelled
AT_ONCE = 0.25  # the share cancelled right after creation
PRICE = 5
SEED = 20241123
PROVIDER_CANCEL_WITHIN = 1.5
TERMINAL = ("completed", "failed", "cancelled", "expired")


@pytest.fixture(scope="module", params=DIALECTS)
def cancelling(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[ApiServer, TimedReplicate]]:
    with TimedReplicate(script=ReplicateScript(latency=LATENCY)) as fake:
        env = provider_env(fake) | {"GENLOOM_RECONCILE_SECONDS": "3600", "GENLOOM_RATE_LIMIT_PER_MINUTE": "1000000"}
        for srv in start_server(request, tmp_path_factory, "cancel", env):
            yield srv, fake


@dataclass
class Cancel:
    job_id: str
    sent: float  # time.monotonic()
    took: float
    status: int
    body: dict[str, Any]


async def storm(srv: ApiServer, key: str, delays: list[float]) -> list[Cancel]:
    """Create job i at i / RATE seconds (open loop, from at most CLIENTS connections) and cancel it
    ``delays[i]`` seconds after its creation was answered, on a connection of its own."""
    done: list[Cancel] = []
    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=srv.url, headers=auth, timeout=30, trust_env=False,
                                 limits=httpx.Limits(max_connections=CLIENTS)) as http, \
            httpx.AsyncClient(base_url=srv.url, headers=auth, timeout=30, trust_env=False,
                              limits=httpx.Limits(max_connections=None)) as canceller:
        async def one(i: int, delay: float) -> None:
            await asyncio.sleep(i / RATE)
            r = await http.post("/v1/jobs", json={"type": "static_ad", "user": f"u{i % USERS}",
                                                  "input": {"name": f"cancel-{i}", "description": "A mug"}})
            assert r.status_code == 201, r.text
            await asyncio.sleep(delay)
            sent = time.monotonic()
            answer = await canceller.post(f"/v1/jobs/{r.json()['id']}/cancel")
            done.append(Cancel(r.json()["id"], sent, time.monotonic() - sent, answer.status_code, answer.json()))

        await asyncio.gather(*(one(i, delay) for i, delay in enumerate(delays)))
    return done


def moment(b: Books, c: Cancel) -> str:
    """What the job was doing when the cancel reached it, from its answer and its events."""
    if c.status == 409:
        return "completed first"
    types = b.types(c.job_id)
    first = min(i for i, t in enumerate(types) if t in ("cancel_requested", "cancelled"))
    before = b.events[c.job_id][:first]
    parked = any(e["type"] == "stage_completed" and (e["data"] or {}).get("parked") for e in before)
    if types[first] == "cancelled":
        return "parked at the provider" if parked else "queued" if "started" not in types[:first] else "?"
    return "held while its output was stored" if parked else "held by the worker"


def said_of(srv: ApiServer, *needles: str) -> str:
    """The server's log lines naming any of ``needles`` (for failure messages)."""
    return "\n".join(ln for ln in srv.log_path.read_text().splitlines() if any(n in ln for n in needles))


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    provider_cancel_s: list[float] = field(default_factory=list)  # cancel answered -> cancel at the provider
    slowest: dict[str, float] = field(default_factory=dict)
    submitted_after_cancel: int = 0


def check(srv: ApiServer, fake: TimedReplicate, b: Books, c: Cancel, final: dict[str, Any], tally: Tally) -> None:
    """One job's cancel against what became of it, its ledger and its prediction."""
    job_id, row, types = c.job_id, b.rows[c.job_id], b.types(c.job_id)
    when = moment(b, c)
    tally.outcomes[when] += 1
    terminal = [t for t in types if t in TERMINAL]
    assert len(terminal) == 1 and types[-1] == terminal[0], (when, types)  # none revived
    if when == "completed first":
        assert c.body["error"]["code"] == "invalid_transition" and final["status"] == "completed"
        assert b.amounts(job_id) == [-PRICE] and "cancel_requested" not in types
        return
    assert when != "?", f"{[(e['type'], e['data']) for e in b.events[job_id]]}\n{said_of(srv, job_id)}"
    assert final["status"] == "cancelled" and row["result_key"] is None, (when, types)
    assert b.amounts(job_id) == [-PRICE, PRICE], (when, b.amounts(job_id))  # refunded exactly once
    if when in ("queued", "parked at the provider"):
        assert c.status == 202 and c.body["status"] == "cancelled", (when, c.body)  # at once
    else:
        assert c.status == 202 and c.body["status"] == "running" and c.body["cancel_requested"], (when, c.body)
    creates = [h for h in fake.hits_on("create") if (h.webhook or "").endswith(f"/{job_id}")]
    if when == "queued":
        assert creates == [], "a job cancelled while queued reached the provider"
    elif when == "held while its output was stored":  # settled from a finished prediction: none to stop
        assert fake.prediction(str(row["provider_ref"]))["status"] == "succeeded"
    elif row["provider_ref"]:
        ref = str(row["provider_ref"])
        hits = [h for h in fake.hits_on("cancel") if h.prediction == ref]
        assert hits, (f"{when}: prediction {ref} never cancelled at the provider\n"
                      f"{[(e['type'], e['ts'], e['data']) for e in b.events[job_id]]}\n{said_of(srv, job_id, ref)}")
        # from the cancel's answer, or from the prediction's creation if the worker submitted it after that
        answered_at, created_at = c.sent + c.took, creates[-1].at
        tally.submitted_after_cancel += created_at > answered_at
        took = hits[0].at - max(answered_at, created_at)
        tally.provider_cancel_s.append(took)
        tally.slowest[when] = max(tally.slowest.get(when, 0.0), round(took, 3))


def test_cancel_storm(cancelling: tuple[ApiServer, TimedReplicate]) -> None:
    srv, fake = cancelling
    keys = project(srv.db_url, billing=True)
    with srv.admin() as admin:
        for u in range(USERS):
            grant = {"project_id": keys.project.id, "user": f"u{u}", "amount": JOBS // USERS * PRICE}
            assert admin.post("/v1/admin/credits", json=grant).status_code == 200
    rng = random.Random(SEED)
    delays = [0.0 if rng.random() < AT_ONCE else rng.uniform(0, LATEST) for _ in range(JOBS)]
    cancels: list[Cancel] = run(lambda: storm(srv, keys.secret_key, delays))
    ids = [c.job_id for c in cancels]
    with srv.client(keys.secret_key) as http:
        try:
            final = wait_all(http, ids, within=60)
        except AssertionError as exc:  # which jobs, what they went through, what the server said of them
            stuck = [j for j, r in books(srv.db_url, ids).rows.items() if r["status"] not in TERMINAL]
            b = books(srv.db_url, stuck)
            raise AssertionError(f"{exc}\n{[(b.rows[j], b.types(j)) for j in stuck]}\n{said_of(srv, *stuck)}"
                                 ) from None
    # the predictions nobody cancelled in time finish, and their callbacks arrive, late
    fake.wait_until(lambda: all(fake.prediction(str(r["provider_ref"]))["status"] in ("succeeded", "canceled")
                                for r in books(srv.db_url, ids).rows.values() if r["provider_ref"]), 20)
    time.sleep(0.5)
    b = books(srv.db_url, ids)
    tally = Tally()
    for c in cancels:
        check(srv, fake, b, c, final[c.job_id], tally)

    refunds = sum(1 for j in ids for e in b.ledger[j] if e["reason"] == "refund")
    answered = sorted(c.took for c in cancels)
    waits = sorted(tally.provider_cancel_s)
    print(f"\ncancel storm: {JOBS} static_ad jobs, cancelled 0-{LATEST:g} s after creation; outcomes "
          f"{dict(tally.outcomes)}; refunds {refunds}; {len(waits)} predictions cancelled at the provider, at most "
          f"{waits[-1]:.3f} s after the cancel was answered (median {waits[len(waits) // 2]:.3f} s; slowest by "
          f"moment {tally.slowest}); {tally.submitted_after_cancel} submitted by the worker after the cancel was "
          f"answered (then cancelled; timed from their creation); cancels answered in "
          f"{answered[len(answered) // 2] * 1000:.0f} ms median, {answered[-1] * 1000:.0f} ms at most; "
          f"jobs with an event after their terminal one: 0")
    assert refunds == JOBS - tally.outcomes["completed first"]
    assert waits[-1] <= PROVIDER_CANCEL_WITHIN
    assert tally.outcomes["queued"] and tally.outcomes["parked at the provider"] and tally.outcomes["completed first"]

"""Provider storm: the Replicate stand-in answers every API request 503 for a few seconds (every
other answer with Retry-After: 1) while static_ad jobs of a billed project arrive, then recovers.
Each retry waits out jittered exponential backoff, never less than the Retry-After it was given (no
request for the job reaches the provider before it); no job makes more than max_attempts attempts;
every job either completes after the storm or fails with its attempts spent, refunded once. A 4xx
from the provider fails the job at once, refunded once. ``pytest -s`` shows the figures."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from genloom.testing import ReplicateScript
from tests.api.conftest import ApiServer, provider_env
from tests.conftest import DIALECTS
from tests.reliability.conftest import project, start_server, wait_all
from tests.reliability.provider import Hit, TimedReplicate, books

MAX_ATTEMPTS = 4
BASE, CAP = 0.4, 1.6  # backoff ceilings 0.4, 0.8, 1.6 s for retries 1, 2, 3
RETRY_AFTER = 1.0
STORM = 3.5  # seconds: most of the first wave spends its attempts inside it, the second outlasts it
WAVE = 12  # jobs at the storm's start, and as many again SECOND_WAVE s into it
SECOND_WAVE = 2.0
PRICE = 5  # static_ad
CLOCK_SLACK = 0.002  # run_after is whole milliseconds: a claim may come up to a tick early


@pytest.fixture(scope="module", params=DIALECTS)
def stormy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[ApiServer, TimedReplicate]]:
    with TimedReplicate(script=ReplicateScript(latency=0.2)) as fake:
        env = provider_env(fake) | {
            "GENLOOM_MAX_ATTEMPTS": str(MAX_ATTEMPTS), "GENLOOM_BACKOFF_BASE_SECONDS": str(BASE),
            "GENLOOM_BACKOFF_CAP_SECONDS": str(CAP), "GENLOOM_RECONCILE_SECONDS": "3600",
            "GENLOOM_RATE_LIMIT_PER_MINUTE": "1000000",
        }
        for srv in start_server(request, tmp_path_factory, "storm", env):
            yield srv, fake


def billed_key(srv: ApiServer, credits: int) -> str:
    keys = project(srv.db_url, billing=True)
    with srv.admin() as admin:
        r = admin.post("/v1/admin/credits", json={"project_id": keys.project.id, "amount": credits})
        assert r.status_code == 200, r.text
    return keys.secret_key


def create(http: httpx.Client, name: str) -> str:
    r = http.post("/v1/jobs", json={"type": "static_ad", "input": {"name": name, "description": "A mug"}})
    assert r.status_code == 201, r.text
    job_id: str = r.json()["id"]
    return job_id


def creates_of(fake: TimedReplicate, job_id: str) -> list[Hit]:
    return [h for h in fake.hits_on("create") if (h.webhook or "").endswith(f"/{job_id}")]


def test_provider_storm(stormy: tuple[ApiServer, TimedReplicate]) -> None:
    srv, fake = stormy
    key = billed_key(srv, 2 * WAVE * PRICE)
    with srv.client(key) as http:
        start, end = fake.storm(STORM, retry_after=str(int(RETRY_AFTER)), retry_after_every=2)
        ids = [create(http, f"storm-{i}") for i in range(WAVE)]
        time.sleep(SECOND_WAVE)
        ids += [create(http, f"storm-{i}") for i in range(WAVE, 2 * WAVE)]
        final = wait_all(http, ids, within=40)
    b = books(srv.db_url, ids)

    during = [h for h in fake.hits if start <= h.at < end]
    outcomes = Counter(j["status"] for j in final.values())
    gaps_after_retry_after: list[float] = []
    jittered: list[int] = []
    for job_id in ids:
        row, creates = b.rows[job_id], creates_of(fake, job_id)
        assert 1 <= len(creates) <= MAX_ATTEMPTS and row["attempt"] == len(creates) <= MAX_ATTEMPTS, (row, creates)
        # every request for this job (creates only, until one is served), never before a Retry-After ran out
        for before, after in itertools.pairwise(creates):
            assert before.storm_status == 503
            if before.retry_after is not None:
                gap = after.at - before.at
                gaps_after_retry_after.append(gap)
                assert gap >= before.retry_after - CLOCK_SLACK, (job_id, gap)
        # each retry's delay: the Retry-After when one came, else full jitter under the attempt's ceiling
        retries = [e for e in b.events[job_id] if e["type"] == "retry_scheduled"]
        assert len(retries) == len(creates) - 1
        for n, (hit, retry) in enumerate(zip(creates, retries, strict=False), 1):
            delay = retry["data"]["delay_ms"]
            assert retry["error_code"] == "provider_unavailable" and retry["data"]["next_attempt"] == n + 1
            if hit.retry_after is not None:
                assert delay >= hit.retry_after * 1000, (job_id, n, delay)
            else:
                ceiling = min(CAP, BASE * 2 ** (n - 1)) * 1000
                assert ceiling / 2 - 1 <= delay <= ceiling, (job_id, n, delay)
                jittered.append(delay)
        if row["status"] == "completed":
            assert creates[-1].storm_status is None and creates[-1].at >= end  # after the recovery
            assert b.amounts(job_id) == [-PRICE]
        else:
            assert row["status"] == "failed" and row["error_code"] == "provider_unavailable", row
            assert row["attempt"] == MAX_ATTEMPTS and all(h.storm_status == 503 for h in creates)
            assert b.amounts(job_id) == [-PRICE, PRICE]  # refunded exactly once
        assert b.types(job_id).count("completed") + b.types(job_id).count("failed") == 1

    refunds = sum(1 for j in ids for e in b.ledger[j] if e["reason"] == "refund")
    by_route = Counter(h.route for h in during)
    print(f"\nprovider storm ({STORM} s of 503, every other one with Retry-After: {RETRY_AFTER:g}; "
          f"{len(ids)} static_ad jobs, max_attempts {MAX_ATTEMPTS}): {len(during)} requests during the storm "
          f"{dict(by_route)}, {sum(1 for h in during if h.retry_after)} answered with Retry-After; "
          f"max attempts seen {max(r['attempt'] for r in b.rows.values())}; outcomes {dict(outcomes)}; "
          f"refunds {refunds}; shortest gap after a Retry-After {min(gaps_after_retry_after):.3f} s; "
          f"jittered delays {min(jittered)}-{max(jittered)} ms ({len(set(jittered))} distinct of {len(jittered)})")
    assert outcomes["completed"] + outcomes["failed"] == len(ids)
    assert outcomes["completed"] > 0 and outcomes["failed"] > 0, "the storm is meant to both outlast and be outlasted"
    assert refunds == outcomes["failed"]
    assert gaps_after_retry_after and len(set(jittered)) > len(jittered) // 2


def test_a_provider_4xx_fails_the_job_at_once_and_refunds_once(stormy: tuple[ApiServer, TimedReplicate]) -> None:
    srv, fake = stormy
    key = billed_key(srv, PRICE)
    fake.fail_next("create", 422, detail="- input.prompt: flagged by the safety checker")
    with srv.client(key) as http:
        job_id = create(http, "refused")
        job = wait_all(http, [job_id], within=20)[job_id]
        balance = http.get("/v1/credits").json()["balance"]
    b = books(srv.db_url, [job_id])
    row = b.rows[job_id]
    print(f"\nprovider 4xx: job {row['status']} on attempt {row['attempt']} ({row['error_code']}: "
          f"{row['error_message']}); provider requests {len(creates_of(fake, job_id))}; "
          f"ledger {b.amounts(job_id)}; balance {balance} of {PRICE}")
    assert job["status"] == "failed" and row["attempt"] == 1 and row["error_code"] == "provider_rejected"
    assert "flagged by the safety checker" in row["error_message"]
    assert len(creates_of(fake, job_id)) == 1
    assert "retry_scheduled" not in b.types(job_id) and b.types(job_id).count("failed") == 1
    assert b.amounts(job_id) == [-PRICE, PRICE] and balance == PRICE

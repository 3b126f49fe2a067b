"""Callbacks lost, duplicated and reordered, for static_ad jobs parked on the Replicate stand-in. The
stand-in sends no callbacks of its own here: the test is the delivery channel, signing what the
provider would send (Standard Webhooks, the stand-in's secret), so every answer is seen.

- lost: nothing is delivered; the reconciler's re-query (after provider_requery_after_seconds,
  every reconcile_seconds) finishes the job, and on a server whose reconciler is idle a client's
  GET does (the opportunistic re-query);
- duplicated: the same delivery (one webhook-id) three times at once, then again after the job ended;
- reordered: a ``processing`` before ``succeeded``, and ``processing`` and ``starting`` after it.

Every job ends completed with one terminal event, its output downloaded once, and a callback that
arrives late changes nothing. ``pytest -s`` shows the figures."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from genloom.testing import FakeReplicate, ReplicateScript
from tests.api.conftest import ApiServer, Tenant, provider_env
from tests.conftest import DIALECTS
from tests.reliability.conftest import project, start_server, wait_all
from tests.reliability.provider import Books, TimedReplicate, books, callback

PER_GROUP = 8
LATENCY = 1.0  # the predictions' run time: all deliveries happen well before the re-query is due
REQUERY = 5.0
RECONCILE = 0.5
AD = {"type": "static_ad", "input": {"name": "Mug", "description": "A mug"}}


@pytest.fixture(scope="module", params=DIALECTS)
def reconciled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[ApiServer, TimedReplicate]]:
    with TimedReplicate(script=ReplicateScript(latency=LATENCY, callback="drop")) as fake:
        env = provider_env(fake) | {
            "GENLOOM_PROVIDER_REQUERY_AFTER_SECONDS": str(REQUERY), "GENLOOM_RECONCILE_SECONDS": str(RECONCILE),
            "GENLOOM_RATE_LIMIT_PER_MINUTE": "1000000",
        }
        for srv in start_server(request, tmp_path_factory, "callbacks", env):
            yield srv, fake


def until(check: Callable[[], Any], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still not true after {within} s")
        time.sleep(0.05)
    return value


def parked(srv: ApiServer, ids: list[str]) -> Books:
    """Once every job waits on its prediction (no worker holds it), the books."""
    def check() -> Books | None:
        b = books(srv.db_url, ids)
        ok = all(r["status"] == "running" and r["lease_token"] is None and r["provider_ref"] for r in b.rows.values())
        return b if ok and len(b.rows) == len(ids) else None

    result: Books = until(check, 30, "jobs parked")
    return result


def file_downloads(fake: FakeReplicate) -> int:
    return fake.count("file")


def test_lost_duplicated_and_reordered_callbacks(reconciled: tuple[ApiServer, TimedReplicate]) -> None:
    srv, fake = reconciled
    key = project(srv.db_url).secret_key
    downloads_before = file_downloads(fake)
    with srv.client(key) as http:
        ids = [http.post("/v1/jobs", json=AD).json()["id"] for _ in range(3 * PER_GROUP)]
    lost, duplicated, reordered = ids[:PER_GROUP], ids[PER_GROUP:2 * PER_GROUP], ids[2 * PER_GROUP:]
    ref = {j: str(r["provider_ref"]) for j, r in parked(srv, ids).rows.items()}
    acks: dict[str, list[tuple[str, int, bool]]] = {j: [] for j in ids}  # (what, HTTP status, applied)

    def deliver(job_id: str, what: str, prediction: dict[str, Any], msg_id: str) -> None:
        body, headers = callback(fake, prediction, msg_id)
        with httpx.Client(base_url=srv.url, timeout=30, trust_env=False) as provider:
            r = provider.post(f"/v1/callbacks/replicate/{job_id}", content=body, headers=headers)
        assert r.status_code == 200, (what, r.status_code, r.text)
        assert r.json()["job_id"] == job_id
        acks[job_id].append((what, r.status_code, bool(r.json()["applied"])))

    def older(p: dict[str, Any], status: str) -> dict[str, Any]:
        return p | {"status": status, "output": None, "completed_at": None}

    with ThreadPoolExecutor(32) as pool:
        for j in reordered:  # a progress notice before the prediction ended: nothing to apply yet
            deliver(j, "processing (early)", older(fake.prediction(ref[j]), "processing"), f"msg_{j}_p0")
        until(lambda: all(fake.prediction(ref[j])["status"] == "succeeded" for j in ids), 20, "predictions done")
        done = {j: fake.prediction(ref[j]) for j in ids}
        # the provider retries one message before its first delivery was answered: three at once, per job
        retried = [(j, "succeeded", done[j], f"msg_{j}") for j in duplicated for _ in range(3)]
        list(pool.map(lambda a: deliver(*a), retried))
        for j in reordered:
            deliver(j, "succeeded", done[j], f"msg_{j}")
            deliver(j, "processing (late)", older(done[j], "processing"), f"msg_{j}_p1")
            deliver(j, "starting (late)", older(done[j], "starting"), f"msg_{j}_s")
        for j in duplicated:  # and once more, long after
            deliver(j, "succeeded (again)", done[j], f"msg_{j}")
    with srv.client(key) as http:  # the listing never re-queries: only the reconciler can finish the lost ones
        final = wait_all(http, ids, within=REQUERY + 20)
    b = books(srv.db_url, ids)
    downloads = file_downloads(fake) - downloads_before

    recovery_ms = [b.rows[j]["completed_at"] - b.rows[j]["provider_since"] for j in lost]
    sent = sum(len(a) for a in acks.values())
    applied = sum(x for a in acks.values() for _, _, x in a)
    ignored = Counter(w for a in acks.values() for w, _, x in a if not x)
    print(f"\ncallbacks: {len(ids)} static_ad jobs; {PER_GROUP} lost, all recovered by the reconciler "
          f"{min(recovery_ms) / 1000:.1f}-{max(recovery_ms) / 1000:.1f} s after submission (re-query after "
          f"{REQUERY:g} s, every {RECONCILE:g} s); {sent} callbacks sent, {applied} applied, {sent - applied} ignored "
          f"{dict(ignored)}; terminal events per job: 1; downloads {downloads} for {len(ids)} outputs "
          f"({downloads / len(ids):.2f} per output)")
    for j in ids:
        types = b.types(j)
        terminal = [t for t in types if t in ("completed", "failed", "cancelled", "expired")]
        assert final[j]["status"] == "completed" and terminal == ["completed"] and types[-1] == "completed", types
        assert types.count("storage_write_completed") == 1, types
    for j in duplicated + reordered:
        assert sum(applied for _, _, applied in acks[j]) == 1, acks[j]
    for j in reordered:
        assert [w for w, _, applied in acks[j] if applied] == ["succeeded"], acks[j]
    assert applied == 2 * PER_GROUP
    assert max(recovery_ms) <= (REQUERY + RECONCILE + 3) * 1000
    assert downloads == len(ids), f"{downloads} downloads for {len(ids)} outputs"


def test_a_lost_callback_is_recovered_by_a_clients_get(tenant: Tenant, fake_replicate: FakeReplicate,
                                                       replicate_script: Callable[..., None]) -> None:
    """On the shared server the reconciler is idle (once an hour) and the re-query is due after 1 s:
    a client that keeps reading the job is what finishes it."""
    replicate_script(latency=0.2, callback="drop")
    downloads_before = file_downloads(fake_replicate)
    ids = [tenant.create(AD)["id"] for _ in range(PER_GROUP)]
    t0 = time.monotonic()
    finals = [tenant.wait(j, within=20) for j in ids]  # GET /v1/jobs/{id} every 50 ms
    took = time.monotonic() - t0
    downloads = file_downloads(fake_replicate) - downloads_before
    b = books(tenant.server.db_url, ids)
    print(f"\nlost callbacks, read by GET: {len(ids)} jobs completed within {took:.1f} s of submission "
          f"(re-query after 1 s); downloads {downloads} for {len(ids)} outputs")
    assert all(f["status"] == "completed" for f in finals)
    assert all(b.types(j).count("completed") == 1 and b.types(j)[-1] == "completed" for j in ids)
    assert downloads == len(ids)


def test_a_callback_whose_output_cannot_be_fetched_yet_is_retried(reconciled: tuple[ApiServer, TimedReplicate]
                                                                  ) -> None:
    """The output host fails once: the callback is answered 503 (the provider retries it) and the job
    stays parked; the provider's retry of the same message then completes it."""
    srv, fake = reconciled
    with srv.client(project(srv.db_url).secret_key) as http:
        job_id = http.post("/v1/jobs", json=AD).json()["id"]
    ref = str(parked(srv, [job_id]).rows[job_id]["provider_ref"])
    until(lambda: fake.prediction(ref)["status"] == "succeeded", 20, "prediction done")
    body, headers = callback(fake, fake.prediction(ref), f"msg_{job_id}")
    fake.fail_next("file", 503)
    with httpx.Client(base_url=srv.url, timeout=30, trust_env=False) as provider:
        first = provider.post(f"/v1/callbacks/replicate/{job_id}", content=body, headers=headers)
        row = books(srv.db_url, [job_id]).rows[job_id]
        retry = provider.post(f"/v1/callbacks/replicate/{job_id}", content=body, headers=headers)
    print(f"\ncallback while the output host fails: {first.status_code} {first.json()}; the job "
          f"{row['status']} (lease {row['lease_token']}); the retry: {retry.status_code} {retry.json()}")
    assert first.status_code == 503 and first.headers.get("retry-after")
    assert row["status"] == "running" and row["lease_token"] is None
    assert retry.status_code == 200 and retry.json() == {"job_id": job_id, "status": "completed", "applied": True}

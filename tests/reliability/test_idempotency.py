"""Idempotency under a burst: 50 identical creates at the same instant, each on its own connection,
make one job and one charge (a billed project with credits), through /v1/jobs (key as header or body
field) and through CutX's /api/generate; keys longer than 255 characters are refused."""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from typing import Any

import httpx

from tests.api.conftest import ApiServer, Tenant, error_of

BURST = 50


def burst(server: ApiServer, key: str, requests: list[tuple[str, dict[str, Any], dict[str, str]]]
          ) -> list[httpx.Response]:
    """Send every (path, json, headers) at once, one thread and one connection each."""
    ready = threading.Barrier(len(requests))
    answers: list[httpx.Response | None] = [None] * len(requests)

    def send(i: int) -> None:
        path, body, headers = requests[i]
        with server.client(key) as http:
            http.get("/healthz")  # connected before the barrier: the creates really race
            ready.wait(10)
            answers[i] = http.post(path, json=body, headers=headers)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(a is not None for a in answers)
    return [a for a in answers if a is not None]


def test_a_burst_of_identical_creates_makes_one_job_and_one_charge(billed: Tenant, admin: httpx.Client) -> None:
    user = f"u-{secrets.token_hex(4)}"
    grant = admin.post("/v1/admin/credits", json={"project_id": billed.project_id, "user": user, "amount": 10})
    assert grant.status_code == 200, grant.text
    body = {"type": "copy", "input": {"name": "Mug"}, "user": user}
    key = f"idem-{secrets.token_hex(8)}"
    requests = [("/v1/jobs", body | {"idempotency_key": key}, {}) if i % 2 else
                ("/v1/jobs", body, {"Idempotency-Key": key}) for i in range(BURST)]
    t0 = time.monotonic()
    answers = burst(billed.server, billed.keys.secret_key, requests)
    v1_seconds = time.monotonic() - t0
    v1_statuses = Counter(a.status_code for a in answers)
    v1_ids = {a.json()["id"] for a in answers}

    cutx_key = f"cutx-{secrets.token_hex(8)}"
    cutx_body = {"product_name": "Mug", "user_id": user, "idempotency_key": cutx_key}
    t0 = time.monotonic()
    cutx = burst(billed.server, billed.keys.secret_key, [("/api/generate/copy", cutx_body, {})] * BURST)
    cutx_seconds = time.monotonic() - t0
    cutx_statuses = Counter(a.status_code for a in cutx)
    cutx_ids = {a.json()["job_id"] for a in cutx}

    listed = billed.http.get("/v1/jobs", params={"user": user, "limit": 200}).json()["data"]
    credits = billed.http.get("/v1/credits", params={"user": user}).json()
    charges = [e for e in credits["ledger"] if e["reason"] == "charge"]
    print(f"\nidempotency: {BURST} concurrent POST /v1/jobs -> {dict(v1_statuses)}, {len(v1_ids)} job id(s) "
          f"in {v1_seconds:.2f} s; {BURST} concurrent POST /api/generate/copy -> {dict(cutx_statuses)}, "
          f"{len(cutx_ids)} job id(s) in {cutx_seconds:.2f} s; the user's jobs: {len(listed)}, "
          f"charges: {len(charges)}, balance {credits['balance']} of 10")
    assert v1_statuses == {201: 1, 200: BURST - 1} and len(v1_ids) == 1
    assert cutx_statuses == {201: 1, 200: BURST - 1} and len(cutx_ids) == 1
    assert sorted(j["id"] for j in listed) == sorted(v1_ids | cutx_ids)
    assert len(charges) == 2 and {c["job_id"] for c in charges} == v1_ids | cutx_ids
    assert credits["balance"] == 10 - 2  # copy costs 1, charged once per job


def test_over_long_and_malformed_keys_are_refused(billed: Tenant) -> None:
    body = {"type": "copy", "input": {"name": "Mug"}}
    long = "k" * 256
    refused = {
        "header of 256": billed.http.post("/v1/jobs", json=body, headers={"Idempotency-Key": long}),
        "header of 4096": billed.http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k" * 4096}),
        "field of 256": billed.http.post("/v1/jobs", json=body | {"idempotency_key": long}),
        "empty field": billed.http.post("/v1/jobs", json=body | {"idempotency_key": ""}),
        "number field": billed.http.post("/v1/jobs", json=body | {"idempotency_key": 12345}),
        "NUL in field": billed.http.post("/v1/jobs", json=body | {"idempotency_key": "a\x00b"}),
        "header and field differ": billed.http.post("/v1/jobs", json=body | {"idempotency_key": "a"},
                                                    headers={"Idempotency-Key": "b"}),
        "CutX 256": billed.http.post("/api/generate/copy", json={"product_name": "Mug", "idempotency_key": long}),
        "CutX number": billed.http.post("/api/generate/copy", json={"product_name": "Mug", "idempotency_key": 7}),
    }
    figures = {name: (r.status_code, error_of(r)["code"]) for name, r in refused.items()}
    print(f"\nidempotency keys refused: {figures}")
    assert all(status == 422 and code == "invalid_input" for status, code in figures.values()), figures
    assert billed.http.get("/v1/jobs").json()["data"] == [], "no job was made by a refused request"
    at_limit = billed.http.post("/v1/jobs", json=body | {"user": "rich"}, headers={"Idempotency-Key": "k" * 255})
    assert at_limit.status_code in (201, 402), at_limit.text  # 255 is allowed (402: this user has no credits)

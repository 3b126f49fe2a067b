"""CutX, as its document describes it: generate endpoints with per-user idempotency keys, credits
deducted and refunded, sync and async types, and the admin retry."""

from __future__ import annotations

from typing import Any

import httpx

from tests.api.conftest import Tenant


def grant(admin: httpx.Client, project_id: str, user: str, amount: int) -> None:
    r = admin.post("/v1/admin/credits", json={"project_id": project_id, "user": user, "amount": amount})
    assert r.status_code in (200, 201), r.text


def balance(tenant: Tenant, user: str) -> int:
    return int(tenant.http.get("/v1/credits", params={"user": user}).json()["balance"])


def cutx_job(tenant: Tenant, job_id: str, until: tuple[str, ...]) -> dict[str, Any]:
    return tenant.wait(job_id, until=lambda j: j["status"] in until)


def test_idempotent_double_submit_charges_once(billed: Tenant, admin: httpx.Client) -> None:
    grant(admin, billed.project_id, "user-123", 20)
    body = {"product_id": "6f1c2b8e", "product_name": "Aurora Lamp", "style": "lifestyle",
            "idempotency_key": "user-123-product-456-static-v1", "user_id": "user-123"}
    first = billed.http.post("/api/generate/static-ad", json=body)
    second = billed.http.post("/api/generate/static-ad", json=body)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["job_id"] == second.json()["job_id"]
    assert first.json()["status"] in ("pending", "queued", "processing")
    assert balance(billed, "user-123") == 20 - 5
    other_user = billed.http.post("/api/generate/static-ad", json=body | {"user_id": "user-999"})
    assert other_user.status_code == 402 and other_user.json()["error"]["code"] == "insufficient_credits"


def test_sync_copy_completes_in_the_worker(billed: Tenant, admin: httpx.Client) -> None:
    grant(admin, billed.project_id, "u-copy", 3)
    r = billed.http.post("/api/generate/copy", json={"product_name": "Aurora Lamp", "user_id": "u-copy"})
    assert r.status_code == 201 and r.json()["status"] == "pending"
    job = cutx_job(billed, r.json()["job_id"], ("completed", "failed"))
    assert job["status"] == "completed" and set(job["result"]) == {"headline", "body", "cta"}
    assert balance(billed, "u-copy") == 2


def test_failure_refunds_and_admin_retry_charges_again(billed: Tenant, admin: httpx.Client) -> None:
    grant(admin, billed.project_id, "u-scrape", 2)
    r = billed.http.post("/api/generate/scrape", json={"url": "http://127.0.0.1:9/nothing", "user_id": "u-scrape"})
    job_id = r.json()["job_id"]
    failed = cutx_job(billed, job_id, ("failed", "completed"))
    assert failed["status"] == "failed" and failed["error_code"]
    assert balance(billed, "u-scrape") == 2  # refunded
    retried = admin.post(f"/api/admin/jobs/{job_id}/retry")
    assert retried.status_code == 200 and retried.json()["status"] in ("pending", "queued", "processing", "failed")
    assert balance(billed, "u-scrape") <= 2
    again = cutx_job(billed, job_id, ("failed", "completed"))
    assert again["status"] == "failed" and balance(billed, "u-scrape") == 2
    copy = billed.http.post("/api/generate/copy", json={"product_name": "X", "user_id": "u-scrape"}).json()
    cutx_job(billed, copy["job_id"], ("completed",))
    refused = admin.post(f"/api/admin/jobs/{copy['job_id']}/retry")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "invalid_transition"
    assert billed.http.post(f"/api/admin/jobs/{job_id}/retry").status_code in (401, 403)


def test_states_use_cutx_names(billed: Tenant, admin: httpx.Client) -> None:
    grant(admin, billed.project_id, "u-tts", 2)
    r = billed.http.post("/api/generate/tts", json={"text": "Hello there.", "user_id": "u-tts"})
    assert r.status_code == 201
    job = cutx_job(billed, r.json()["job_id"], ("completed", "failed"))
    assert job["status"] == "completed" and job["result_url"]
    bad = billed.http.post("/api/generate/copy", json={"user_id": "u-tts"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_input"
    assert billed.http.post("/api/generate/poster", json={}).status_code in (404, 422)

"""Billing through the API: 402 without credits, grants, the ledger, and an admin retry that
charges again."""

from __future__ import annotations

import httpx

from tests.api.conftest import ApiServer, Tenant, error_of, make_project, motion

FAILING = motion(src="uploads/00/missing.jpg")  # a permanent input error: the job fails


def test_no_credits_is_402_then_a_grant_pays(server: ApiServer, admin: httpx.Client) -> None:
    keys = make_project(server.db_url, billing=True)
    with server.client(keys.secret_key) as http:
        r = http.post("/v1/jobs", json=motion() | {"user": "ann"})
        assert r.status_code == 402 and error_of(r)["code"] == "insufficient_credits"
        grant = admin.post("/v1/admin/credits", json={"project_id": keys.project.id, "user": "ann", "amount": 15})
        assert grant.status_code == 200
        assert grant.json() == {"project_id": keys.project.id, "user": "ann", "balance": 15}
        job = http.post("/v1/jobs", json=motion() | {"user": "ann"}, headers={"Prefer": "wait=30"}).json()
        assert job["status"] == "completed" and job["cost"] == 10
        credits = http.get("/v1/credits", params={"user": "ann"}).json()
        assert credits["balance"] == 5 and credits["project_id"] == keys.project.id
        assert [(e["reason"], e["amount"]) for e in credits["ledger"]] == [("charge", -10), ("grant", 15)]
        assert credits["ledger"][0]["job_id"] == job["id"] and credits["ledger"][0]["created_at"].endswith("Z")
        assert http.get("/v1/credits").json()["balance"] == 0
    missing = admin.post("/v1/admin/credits", json={"project_id": "prj_nope", "user": "ann", "amount": 1})
    assert missing.status_code == 404
    for bad in ({"user": "ann", "amount": 0}, {"user": "ann"}, {"user": "ann", "amount": -5}):
        assert error_of(admin.post("/v1/admin/credits", json=bad))["code"] == "invalid_input"


def test_admin_retry_of_a_failed_job_charges_again(server: ApiServer, admin: httpx.Client) -> None:
    keys = make_project(server.db_url, billing=True)
    admin.post("/v1/admin/credits", json={"project_id": keys.project.id, "user": "bo", "amount": 10})
    with server.client(keys.secret_key) as http:
        tenant = Tenant(server, keys, http)
        job = tenant.create(FAILING | {"user": "bo"})
        failed = tenant.wait(job["id"])
        assert failed["status"] == "failed" and failed["error_code"]
        assert http.get("/v1/credits", params={"user": "bo"}).json()["balance"] == 10  # refunded
        r = admin.post(f"/v1/admin/jobs/{job['id']}/retry", headers={"X-Request-ID": "retry-1"})
        assert r.status_code == 200, r.text
        assert r.json()["status"] in ("queued", "running", "failed") and r.json()["attempt"] in (0, 1)
        again = tenant.wait(job["id"], until=lambda j: j["terminal"] and j["attempt"] >= 1)
        assert again["status"] == "failed"
        ledger = http.get("/v1/credits", params={"user": "bo"}).json()["ledger"]
        assert [e["reason"] for e in ledger] == ["refund", "charge", "refund", "charge", "grant"]
        assert any(e["request_id"] == "retry-1" for e in http.get(job["events_url"]).json()["data"])
    broke = make_project(server.db_url, billing=True)
    with server.client(broke.secret_key) as http:
        admin.post("/v1/admin/credits", json={"project_id": broke.project.id, "user": "cy", "amount": 10})
        job = Tenant(server, broke, http).create(FAILING | {"user": "cy"})
        Tenant(server, broke, http).wait(job["id"])
        http.post("/v1/jobs", json={"type": "copy", "input": {"name": "x"}, "user": "cy"})  # spend 1 of the 10
    r = admin.post(f"/v1/admin/jobs/{job['id']}/retry")
    assert r.status_code == 402 and error_of(r)["code"] == "insufficient_credits"

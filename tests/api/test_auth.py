"""Keys, the admin token, local mode, per-key rate limits and project isolation."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.api.conftest import ADMIN_TOKEN, ApiServer, Tenant, error_of, make_project, motion
from tests.conftest import DIALECTS


def test_keys_are_required_once_any_exists(tenant: Tenant) -> None:
    with tenant.server.client() as anonymous:
        r = anonymous.get("/v1/jobs")
    assert r.status_code == 401 and error_of(r)["code"] == "unauthorized"
    with tenant.server.client("sk_not_a_real_key") as wrong:
        r = wrong.get("/v1/jobs")
    assert r.status_code == 401 and error_of(r)["code"] == "unauthorized"
    basic = httpx.get(f"{tenant.server.url}/v1/jobs", auth=("user", "pass"), trust_env=False)
    assert basic.status_code == 401
    assert tenant.http.get("/v1/jobs").status_code == 200
    logs = tenant.server.logs()
    assert tenant.keys.secret_key not in logs and "sk_not_a_real_key" not in logs  # keys never reach a log


def test_admin_routes_need_the_admin_token(tenant: Tenant, admin: httpx.Client) -> None:
    job = tenant.create({"type": "copy", "input": {"name": "x"}})
    path = f"/v1/admin/jobs/{job['id']}/retry"
    as_project = tenant.http.post(path)
    assert as_project.status_code == 403 and error_of(as_project)["code"] == "forbidden"
    with tenant.server.client() as anonymous:
        assert error_of(anonymous.post(path))["code"] == "unauthorized"
    with tenant.server.client("adm_wrong") as wrong:
        r = wrong.post(path)
        assert r.status_code == 401 and error_of(r)["code"] == "unauthorized"
    tenant.wait(job["id"])
    r = admin.post(path)
    assert r.status_code == 409 and error_of(r)["code"] == "invalid_transition"  # completed: nothing to retry
    assert admin.post("/v1/admin/jobs/0123456789abcdef/retry").status_code == 404


def test_rate_limit_is_per_key(server: ApiServer, tenant: Tenant) -> None:
    slow = make_project(server.db_url, rate_limit_per_minute=3)
    with server.client(slow.secret_key) as http:
        codes = [http.get("/v1/jobs").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        limited = http.get("/v1/jobs")
    assert error_of(limited)["code"] == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1
    assert tenant.http.get("/v1/jobs").status_code == 200  # other keys are unaffected


def test_another_projects_job_is_not_found(tenant: Tenant, other: Tenant) -> None:
    job = tenant.wait(tenant.create(motion())["id"])
    for method, path in [("GET", f"/v1/jobs/{job['id']}"), ("GET", f"/v1/jobs/{job['id']}/events"),
                         ("GET", f"/v1/jobs/{job['id']}/result"), ("POST", f"/v1/jobs/{job['id']}/cancel")]:
        r = other.http.request(method, path)
        assert r.status_code == 404 and error_of(r)["code"] == "not_found", path
    sse = other.http.get(f"/v1/jobs/{job['id']}/events", headers={"Accept": "text/event-stream"})
    assert sse.status_code == 404
    assert job["id"] not in {j["id"] for j in other.http.get("/v1/jobs").json()["data"]}
    assert tenant.http.get(f"/v1/jobs/{job['id']}/result").status_code == 200


@pytest.mark.parametrize("own_db", DIALECTS, indirect=True)
def test_local_mode_until_a_key_exists(own_db: str, spawn: Callable[..., ApiServer]) -> None:
    url = own_db
    local = spawn(url, name="local", wait=False)
    # The same database, but a server not on a loopback address: keys are always required there.
    exposed = spawn(url, name="exposed", env={"GENLOOM_HOST": "0.0.0.0"}, background=False, wait=False)
    local.wait_ready()
    exposed.wait_ready()
    with local.client() as http:
        r = http.post("/v1/jobs", json={"type": "copy", "input": {"name": "x"}}, headers={"Prefer": "wait=10"})
        assert r.status_code == 201 and r.json()["status"] == "completed"
        assert http.get("/v1/jobs").json()["data"][0]["id"] == r.json()["id"]
        grant = http.post("/v1/admin/credits", json={"user": "u", "amount": 5})  # no admin token: local only
        assert grant.status_code == 200 and grant.json()["balance"] == 5
    with exposed.client() as http:
        r = http.get("/v1/jobs")
        assert r.status_code == 401 and error_of(r)["code"] == "unauthorized"
        assert error_of(http.post("/v1/admin/credits", json={"user": "u", "amount": 5}))["code"] == "forbidden"
    keys = make_project(url)
    with local.client() as http:
        r = http.get("/v1/jobs")
        assert r.status_code == 401 and error_of(r)["code"] == "unauthorized"
        assert http.post("/v1/admin/credits", json={"user": "u", "amount": 5}).status_code == 403
    with local.client(keys.secret_key) as http:
        assert http.get("/v1/jobs").json()["data"] == []  # the default project's job is not this one's
    with local.client(ADMIN_TOKEN) as http:
        assert http.get("/v1/jobs").status_code == 401

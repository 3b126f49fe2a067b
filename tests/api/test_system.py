"""Health, readiness, metrics, the OpenAPI document and X-Request-ID, on a real server."""

from __future__ import annotations

import httpx

from tests.api.conftest import ApiServer, Tenant, error_of, motion


def test_metrics_take_the_metrics_or_admin_token(tenant: Tenant) -> None:
    with tenant.server.client() as anonymous:
        refused = anonymous.get("/metrics")
    assert refused.status_code == 401 and error_of(refused)["code"] == "unauthorized"
    assert tenant.http.get("/metrics").status_code == 401  # a project key reads only its own project
    with tenant.server.client("metrics_wrong_token") as wrong:
        assert wrong.get("/metrics").status_code == 401
    assert tenant.server.metrics().status_code == 200
    with tenant.server.admin() as admin:
        assert admin.get("/metrics").status_code == 200


def test_healthz_and_readyz(server: ApiServer) -> None:
    with server.client() as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "database": "ok", "migrations": "current"}


def test_metrics_count_jobs_at_scrape_time(tenant: Tenant) -> None:
    job = tenant.create(motion())
    tenant.wait(job["id"])
    tenant.create({"type": "copy", "input": {"name": "Mug"}})
    r = tenant.server.metrics()
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'genloom_jobs{status="completed",type="motion"}' in text
    assert "genloom_queue_depth " in text
    assert 'genloom_http_request_seconds_count{method="POST",route="/v1/jobs",status="201"}' in text


def test_openapi_documents_routes_and_the_error_shape(server: ApiServer) -> None:
    with server.client() as http:
        doc = http.get("/openapi.json").json()
    paths = doc["paths"]
    for path, method in [
        ("/v1/jobs", "post"), ("/v1/jobs", "get"), ("/v1/jobs/{job_id}", "get"),
        ("/v1/jobs/{job_id}/events", "get"), ("/v1/jobs/{job_id}/cancel", "post"),
        ("/v1/jobs/{job_id}/result", "get"), ("/v1/uploads", "post"), ("/v1/credits", "get"),
        ("/v1/admin/credits", "post"), ("/v1/admin/jobs/{job_id}/retry", "post"),
        ("/v1/callbacks/{provider}/{job_id}", "post"), ("/healthz", "get"), ("/readyz", "get"), ("/metrics", "get"),
    ]:
        assert method in paths[path], (path, method)
    create = paths["/v1/jobs"]["post"]["responses"]
    assert {"200", "201", "202", "402", "422", "429", "503"} <= set(create)
    assert create["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert "ProjectKey" in doc["components"]["securitySchemes"]


def test_request_id_is_echoed_or_generated(tenant: Tenant) -> None:
    r = tenant.http.get("/v1/jobs", headers={"X-Request-ID": "trace-abc.123"})
    assert r.headers["x-request-id"] == "trace-abc.123"
    generated = tenant.http.get("/v1/jobs").headers["x-request-id"]
    assert generated.startswith("req_")
    insane = tenant.http.get("/v1/jobs", headers={"X-Request-ID": "bad id with spaces" + "x" * 80})
    assert insane.headers["x-request-id"].startswith("req_")
    missing = tenant.http.get("/v1/nowhere", headers={"X-Request-ID": "trace-404"})
    assert missing.status_code == 404
    assert error_of(missing) == {"code": "not_found", "message": "Not Found", "request_id": "trace-404"}


def test_request_id_lands_on_the_jobs_events(tenant: Tenant) -> None:
    r = tenant.http.post("/v1/jobs", json=motion(), headers={"X-Request-ID": "create-req-1"})
    assert r.headers["x-request-id"] == "create-req-1"
    job = r.json()
    tenant.wait(job["id"])
    events = tenant.http.get(job["events_url"]).json()["data"]
    assert events and all(e["request_id"] == "create-req-1" for e in events)


def test_method_not_allowed_has_the_error_shape(server: ApiServer) -> None:
    r = httpx.delete(f"{server.url}/v1/jobs", trust_env=False)
    assert r.status_code == 405
    assert error_of(r)["code"] == "method_not_allowed"

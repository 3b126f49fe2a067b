"""/v1/jobs over real HTTP: creation (idempotency, validation, Prefer: wait), the job's shape,
listing, cancelling, and a GET that re-asks a provider whose callback never came."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from genloom.testing import FakeReplicate
from tests.api.conftest import MAX_BODY, Tenant, error_of, motion

AD = {"type": "static_ad", "input": {"name": "Mug", "description": "A mug"}}
FIELDS = {
    "id", "type", "mode", "status", "terminal", "stage", "progress", "attempt", "max_attempts", "priority", "cost",
    "user", "input", "result", "result_url", "error_code", "error_message", "cancel_requested", "idempotency_key",
    "created_at", "queued_at", "started_at", "completed_at", "updated_at", "queue_position", "events_url",
}


def test_create_answers_201_with_the_job(tenant: Tenant) -> None:
    r = tenant.http.post("/v1/jobs", json=motion() | {"user": "u1", "priority": 3})
    assert r.status_code == 201, r.text
    job = r.json()
    assert set(job) == FIELDS
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["terminal"] is False and job["user"] == "u1"
    assert job["events_url"] == f"/v1/jobs/{job['id']}/events" and job["result_url"] is None
    assert job["input"] == {"src": "sample", "dur": 1, "height": 240} and job["priority"] == 3
    assert isinstance(job["queue_position"], int)
    assert job["created_at"].endswith("Z")
    datetime.fromisoformat(job["created_at"])
    done = tenant.wait(job["id"])
    assert done["status"] == "completed" and done["terminal"] is True and done["progress"] == 1
    assert done["result_url"] == f"/v1/jobs/{job['id']}/result" and done["queue_position"] is None
    assert done["result"]["content_type"] == "video/mp4"
    assert done["created_at"] <= done["started_at"] <= done["completed_at"]


def test_idempotent_repeat_and_key_reuse(tenant: Tenant) -> None:
    body = {"type": "copy", "input": {"name": "Mug"}, "idempotency_key": "k-1"}
    first = tenant.http.post("/v1/jobs", json=body)
    again = tenant.http.post("/v1/jobs", json=body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    reused = tenant.http.post("/v1/jobs", json=body | {"input": {"name": "Cup"}})
    assert reused.status_code == 422
    assert error_of(reused)["code"] == "idempotency_key_reused"
    by_header = tenant.http.post("/v1/jobs", json={"type": "copy", "input": {"name": "Mug"}},
                                 headers={"Idempotency-Key": "k-1"})
    assert by_header.status_code == 200 and by_header.json()["id"] == first.json()["id"]
    clash = tenant.http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-2"})
    assert clash.status_code == 422 and error_of(clash)["code"] == "invalid_input"
    other_user = tenant.http.post("/v1/jobs", json=body | {"user": "someone"})
    assert other_user.status_code == 201  # keys are per user


def test_a_webhook_url_the_fetch_policy_allows(tenant: Tenant) -> None:
    r = tenant.http.post("/v1/jobs", json={"type": "copy", "input": {"name": "x"},
                                           "webhook_url": "http://127.0.0.1:9/hook"})  # the test server allows 127/8
    assert r.status_code == 201, r.text


def test_validation_errors_are_422_with_their_code(tenant: Tenant) -> None:
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"type": "nope", "input": {}}, "unknown_type", "unknown job type"),
        ({"type": "motion", "input": {"src": "sample", "dur": 99}}, "invalid_input", "input.dur"),
        ({"type": "motion", "mode": "sideways", "input": {"src": "sample"}}, "invalid_mode", "mode"),
        ({"input": {}}, "invalid_input", "body.type"),
        ({"type": "copy", "input": {"name": "x"}, "surprise": 1}, "invalid_input", "body.surprise"),
        ({"type": "copy", "input": {"name": "x\u0000y"}}, "invalid_input", "body.input"),
        ({"type": "copy", "input": {"name": "x"}, "priority": 10**9}, "invalid_input", "body.priority"),
        ({"type": "copy", "input": {"name": "x"}, "webhook_url": "http://169.254.169.254/x"}, "unsafe_url", ""),
        ({"type": "copy", "input": {"name": "x"}, "webhook_url": "ftp://example.com/x"}, "unsafe_url", ""),
    ]
    for body, code, fragment in cases:
        r = tenant.http.post("/v1/jobs", json=body)
        assert r.status_code == 422, (body, r.text)
        err = error_of(r)
        assert err["code"] == code, (body, err)
        assert fragment in err["message"], (body, err)
    broken = tenant.http.post("/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
    assert broken.status_code == 422 and error_of(broken)["code"] == "invalid_input"


def test_prefer_wait_returns_the_finished_job(tenant: Tenant) -> None:
    r = tenant.http.post("/v1/jobs", json=motion(), headers={"Prefer": "wait=30"})
    assert r.status_code == 201, r.text
    assert r.headers["preference-applied"] == "wait=30"
    job = r.json()
    assert job["status"] == "completed" and job["result_url"]
    repeat = tenant.http.post("/v1/jobs", json=motion() | {"idempotency_key": "w"}, headers={"Prefer": "wait=30"})
    assert repeat.status_code == 201
    again = tenant.http.post("/v1/jobs", json=motion() | {"idempotency_key": "w"}, headers={"Prefer": "wait=5"})
    assert again.status_code == 200 and again.json()["terminal"]


def test_prefer_wait_times_out_with_202(tenant: Tenant, replicate_script: Callable[..., None]) -> None:
    replicate_script(outcome="hang")
    t0 = time.monotonic()
    r = tenant.http.post("/v1/jobs", json=AD, headers={"Prefer": "respond-async, wait=1"})
    assert 0.9 <= time.monotonic() - t0 < 10
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["terminal"] is False and job["events_url"].endswith("/events")
    tenant.http.post(f"/v1/jobs/{job['id']}/cancel")


def test_list_is_keyset_paginated_newest_first(tenant: Tenant) -> None:
    ids = [tenant.create({"type": "copy", "input": {"name": f"n{i}"}, "user": "a" if i % 2 else "b"})["id"]
           for i in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = tenant.http.get("/v1/jobs", params=params).json()
        assert len(page["data"]) <= 2
        seen += [j["id"] for j in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    only_a = tenant.http.get("/v1/jobs", params={"user": "a"}).json()["data"]
    assert {j["id"] for j in only_a} == {ids[1], ids[3]}
    assert tenant.http.get("/v1/jobs", params={"type": "motion"}).json() == {"data": [], "next_cursor": None}
    tenant.wait(ids[0])
    done = tenant.http.get("/v1/jobs", params={"status": "completed", "limit": 200}).json()["data"]
    assert ids[0] in {j["id"] for j in done}
    for bad in ({"status": "asleep"}, {"cursor": "!!!"}, {"limit": 0}, {"limit": 201}):
        r = tenant.http.get("/v1/jobs", params=bad)
        assert r.status_code == 422 and error_of(r)["code"] == "invalid_input", bad


def test_cancel_then_cancel_again_is_409(tenant: Tenant, replicate_script: Callable[..., None],
                                         fake_replicate: FakeReplicate) -> None:
    replicate_script(outcome="hang")
    creates, cancels = fake_replicate.count("create"), len(fake_replicate.cancels)
    job = tenant.create(AD)
    assert fake_replicate.wait_until(lambda: fake_replicate.count("create") > creates, 10)
    r = tenant.http.post(f"/v1/jobs/{job['id']}/cancel", headers={"X-Request-ID": "cancel-req-7"})
    assert r.status_code == 202, r.text
    answer = r.json()
    assert answer["status"] == "cancelled" or answer["cancel_requested"]  # parked, or still held by the worker
    assert tenant.wait(job["id"])["status"] == "cancelled"
    again = tenant.http.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and error_of(again)["code"] == "invalid_transition"
    events = tenant.http.get(job["events_url"]).json()["data"]
    assert events[-1]["type"] == "cancelled"
    assert any(e["type"] in ("cancelled", "cancel_requested") and e["request_id"] == "cancel-req-7" for e in events)
    assert fake_replicate.wait_until(lambda: len(fake_replicate.cancels) > cancels, 5)  # the prediction was stopped


def test_get_requeries_a_provider_whose_callback_was_lost(
    tenant: Tenant, replicate_script: Callable[..., None], fake_replicate: FakeReplicate
) -> None:
    replicate_script(callback="drop")
    gets = fake_replicate.count("get")
    job = tenant.create(AD)
    done = tenant.wait(job["id"], within=20)
    assert done["status"] == "completed", done
    assert done["result"]["content_type"] == "image/png"
    assert fake_replicate.count("get") > gets
    image = tenant.http.get(done["result_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"


def test_unknown_and_malformed_ids_are_404(tenant: Tenant) -> None:
    for path in ("/v1/jobs/0123456789abcdef0123456789abcdef", "/v1/jobs/not a job", "/v1/jobs/x%00y",
                 "/v1/jobs/" + "a" * 300):
        r = tenant.http.get(path)
        assert r.status_code == 404 and error_of(r)["code"] == "not_found", path


def test_bodies_over_the_limit_are_413(tenant: Tenant) -> None:
    big = {"type": "copy", "input": {"name": "x", "description": "y" * MAX_BODY}}
    r = tenant.http.post("/v1/jobs", json=big)
    assert r.status_code == 413 and error_of(r)["code"] == "too_large"

    def chunks() -> Any:  # no Content-Length: counted as it arrives
        yield b'{"type": "copy", "input": {"name": "x", "description": "'
        for _ in range(MAX_BODY // 8192 + 2):
            yield b"y" * 8192
        yield b'"}}'

    streamed = tenant.http.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413 and error_of(streamed)["code"] == "too_large"

"""Motioness, as its document's examples use it: the proxy URL, the curl event stream with a
reconnect, content-addressed ids, the asset read, and public-key limits."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.api.conftest import ApiServer, Tenant
from tests.api.sse import read

PARAMS = {"src": "sample", "motion": "zoom-in", "mode": "single", "dur": "1", "seed": "3", "aspect": "1:1"}


def proxy(server: ApiServer, pk: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{server.url}/v1/{pk}/video", params=PARAMS | params, timeout=30, trust_env=False)


def test_the_same_parameters_are_the_same_asset_and_idem_makes_another(tenant: Tenant) -> None:
    pk = tenant.keys.public_key
    first, again = proxy(tenant.server, pk), proxy(tenant.server, pk, dur="1.0")
    assert first.status_code in (200, 202) and again.status_code in (200, 202)
    if first.status_code == 202:
        assert first.json()["asset_id"] == again.json().get("asset_id", first.json()["asset_id"])
    variant = proxy(tenant.server, pk, idem="variant-a")
    assert variant.status_code == 202
    assert variant.json()["asset_id"] != first.json().get("asset_id")
    assert variant.json()["asset_id"].startswith("asset_")


def test_curl_stream_with_a_reconnect_then_the_mp4(tenant: Tenant) -> None:
    pk = tenant.keys.public_key
    created = proxy(tenant.server, pk, seed="11")
    assert created.status_code == 202, created.text
    body = created.json()
    assert body["status"] == "pending" and body["events_url"] == f"/v1/{pk}/events/{body['asset_id']}"
    with httpx.Client(base_url=tenant.server.url, trust_env=False) as curl:  # no key: the pk is in the URL
        first = read(curl, body["events_url"], stop_after=2).events  # the client drops after two events ...
        assert first[0].event == "queued"
        rest = read(curl, body["events_url"], last_event_id=first[-1].id)  # ... and resumes
    assert rest.closed
    seen = first + rest.events
    ids = [e.id for e in seen]
    assert ids == sorted(set(ids)), "a duplicate-free resume"
    full = tenant.http.get(f"/v1/jobs/{body['asset_id']}/events").json()["data"]
    assert ids == [e["id"] for e in full], "and gap-free: every event of the log, in order"
    names = [e.event for e in seen]
    assert names[-1] == "ready" and "r2_write_completed" in names and "vision_completed" in names
    assert "storage_write_completed" not in names and "completed" not in names
    stage_done = next(e.json() for e in seen if e.event == "stage_completed")
    assert stage_done["stage"] == "single" and stage_done["latency_ms"] >= 0
    assert stage_done["asset_id"] == body["asset_id"] and "ts" in stage_done
    ready = proxy(tenant.server, pk, seed="11")
    assert ready.status_code == 200 and ready.headers["content-type"] == "video/mp4"
    assert ready.content[4:8] == b"ftyp"
    assert "immutable" in ready.headers["cache-control"] and ready.headers["etag"]
    part = proxy(tenant.server, pk, seed="11").request
    ranged = httpx.get(str(part.url), headers={"Range": "bytes=0-99"}, trust_env=False)
    assert ranged.status_code == 206 and len(ranged.content) == 100


def test_asset_read_reports_pending_ready_failed(tenant: Tenant) -> None:
    pk = tenant.keys.public_key
    asset_id = proxy(tenant.server, pk, seed="21").json()["asset_id"]
    deadline = time.monotonic() + 30
    while True:
        got = tenant.http.get(f"/api/assets/{asset_id}")
        assert got.status_code == 200, got.text
        if got.json()["status"] != "pending" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert got.json()["status"] == "ready" and got.json()["url"].startswith(f"/v1/{pk}/video?")
    by_pk = httpx.get(f"{tenant.server.url}/api/assets/{asset_id}", params={"pk": pk}, trust_env=False)
    assert by_pk.json()["status"] == "ready"
    broken = proxy(tenant.server, pk, src="sample", aspect="3:2")
    assert broken.status_code == 422 and broken.json()["error"]["code"] == "invalid_input"


def test_public_keys_are_limited_to_allowed_origins_and_their_own_assets(tenant: Tenant, other: Tenant) -> None:
    refused = proxy(tenant.server, tenant.keys.public_key, src="https://elsewhere.example.com/cat.jpg")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "origin_not_allowed"
    mine = proxy(tenant.server, tenant.keys.public_key, seed="31").json()["asset_id"]
    theirs = httpx.get(f"{tenant.server.url}/v1/{other.keys.public_key}/events/{mine}", trust_env=False)
    assert theirs.status_code == 404
    assert proxy(tenant.server, "pk_does_not_exist").status_code == 404

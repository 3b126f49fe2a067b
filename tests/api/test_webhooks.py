"""/v1/webhooks over real HTTP: endpoint CRUD with a secret shown once, a delivery signed per
Standard Webhooks arriving at a real receiver, deliveries and attempts listed, replays."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook

from tests.api.conftest import Tenant
from tests.webhooks.receiver import Answer, Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def until(check: object, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.05)


def test_endpoint_crud_and_a_signed_delivery(tenant: Tenant, other: Tenant, receiver: Receiver) -> None:
    made = tenant.http.post("/v1/webhooks", json={"url": f"{receiver.url}/hook"})
    assert made.status_code == 201, made.text
    endpoint = made.json()
    secret = endpoint.pop("secret")
    assert secret.startswith("whsec_") and endpoint["enabled"] is True
    assert "secret" not in tenant.http.get(f"/v1/webhooks/{endpoint['id']}").json()
    assert [e["id"] for e in tenant.http.get("/v1/webhooks").json()["data"]] == [endpoint["id"]]
    assert other.http.get(f"/v1/webhooks/{endpoint['id']}").status_code == 404

    job = tenant.create({"type": "copy", "input": {"name": "Aurora"}})
    until(lambda: receiver.count() >= 1)
    arrival = receiver.got()[0]
    payload = Webhook(secret).verify(arrival.request.content, arrival.request.headers)
    assert payload["type"] == "job.completed" and payload["data"]["id"] == job["id"]

    until(lambda: tenant.http.get(f"/v1/webhooks/{endpoint['id']}/deliveries").json()["data"][0]["status"]
          == "delivered")
    delivery = tenant.http.get(f"/v1/webhooks/{endpoint['id']}/deliveries").json()["data"][0]
    attempts = tenant.http.get(f"/v1/webhooks/deliveries/{delivery['id']}/attempts").json()["data"]
    assert attempts and attempts[0]["status_code"] == 204
    events = [e["type"] for e in tenant.http.get(f"/v1/jobs/{job['id']}/events").json()["data"]]
    assert "webhook_delivered" in events

    again = tenant.http.post(f"/v1/webhooks/deliveries/{delivery['id']}/replay")
    assert again.status_code == 202
    until(lambda: receiver.count() >= 2)
    assert receiver.got()[1].webhook_id == arrival.webhook_id  # the same webhook-id on a replay

    rotated = tenant.http.post(f"/v1/webhooks/{endpoint['id']}/rotate").json()["secret"]
    assert rotated.startswith("whsec_") and rotated != secret
    patched = tenant.http.patch(f"/v1/webhooks/{endpoint['id']}", json={"enabled": False})
    assert patched.json()["enabled"] is False
    assert tenant.http.delete(f"/v1/webhooks/{endpoint['id']}").status_code == 204
    assert tenant.http.get(f"/v1/webhooks/{endpoint['id']}").status_code == 404


def test_range_replay_and_bad_input(tenant: Tenant, receiver: Receiver) -> None:
    receiver.set_default(Answer(status=500))
    endpoint = tenant.http.post("/v1/webhooks", json={"url": f"{receiver.url}/hook"}).json()
    tenant.create({"type": "copy", "input": {"name": "Aurora"}})
    until(lambda: receiver.count() >= 1)
    receiver.set_default(Answer(status=204))
    now = datetime.now(UTC)
    body = {"from": (now - timedelta(minutes=5)).isoformat(), "to": (now + timedelta(minutes=1)).isoformat(),
            "statuses": ["dead", "delivered"]}
    replayed = tenant.http.post(f"/v1/webhooks/{endpoint['id']}/replay", json=body)
    assert replayed.status_code == 202 and replayed.json()["replayed"] >= 0
    bad = tenant.http.post("/v1/webhooks", json={"url": "ftp://example.com/x"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_input"
    unsafe = tenant.http.post("/v1/webhooks", json={"url": "http://169.254.169.254/latest"})
    assert unsafe.status_code == 422
    filtered = tenant.http.post("/v1/webhooks", json={"url": f"{receiver.url}/x", "events": ["job.nonsense"]})
    assert filtered.status_code == 422

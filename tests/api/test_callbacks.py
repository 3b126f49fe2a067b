"""/v1/callbacks/replicate/{job_id}: signed callbacks settle a parked job once; anything else is
refused or changes nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from genloom.providers.callbacks import sign_callback
from genloom.testing import FakeReplicate
from tests.api.conftest import Tenant, error_of

AD = {"type": "static_ad", "input": {"name": "Mug", "description": "A mug"}}


def _post(tenant: Tenant, job_id: str, body: bytes, secret: str, msg_id: str = "msg_test"
          ) -> tuple[int, dict[str, Any]]:
    headers = sign_callback(body, secret, msg_id=msg_id) | {"content-type": "application/json"}
    r = tenant.http.post(f"/v1/callbacks/replicate/{job_id}", content=body, headers=headers)
    return r.status_code, r.json()


def test_a_signed_callback_completes_the_job_once(tenant: Tenant, fake_replicate: FakeReplicate) -> None:
    before = len(fake_replicate.deliveries)
    job = tenant.create(AD)
    done = tenant.wait(job["id"])
    assert done["status"] == "completed" and done["result"]["content_type"] == "image/png"
    assert fake_replicate.wait_until(lambda: len(fake_replicate.deliveries) > before, 5)
    delivery = next(d for d in fake_replicate.deliveries[before:] if d.url.endswith(job["id"]))
    assert delivery.status == 200
    events = tenant.http.get(job["events_url"]).json()["data"]
    status, ack = _post(tenant, job["id"], delivery.body, fake_replicate.webhook_secret, delivery.webhook_id)
    assert status == 200 and ack == {"job_id": job["id"], "status": "completed", "applied": False}
    assert tenant.http.get(job["events_url"]).json()["data"] == events  # the repeat changed nothing
    assert tenant.job(job["id"])["updated_at"] == done["updated_at"]


def test_refused_and_ignored_callbacks(tenant: Tenant, fake_replicate: FakeReplicate,
                                       replicate_script: Callable[..., None]) -> None:
    replicate_script(outcome="hang")
    job = tenant.create(AD)
    secret = fake_replicate.webhook_secret
    body = json.dumps({"id": "not-the-prediction", "status": "succeeded", "output": "http://x/y.png"}).encode()
    forged = tenant.http.post(f"/v1/callbacks/replicate/{job['id']}", content=body,
                              headers=sign_callback(body, "whsec_" + "A" * 32, msg_id="m1"))
    assert forged.status_code == 401 and error_of(forged)["code"] == "invalid_signature"
    unsigned = tenant.http.post(f"/v1/callbacks/replicate/{job['id']}", content=body)
    assert unsigned.status_code == 401 and error_of(unsigned)["code"] == "invalid_signature"
    status, ack = _post(tenant, job["id"], body, secret)
    assert status == 200 and ack["applied"] is False  # not the prediction this job waits on
    assert _post(tenant, "0123456789abcdef0123456789abcdef", body, secret)[0] == 404
    assert tenant.http.post(f"/v1/callbacks/nobody/{job['id']}", content=body).status_code == 404
    garbage = b'{"status": "succeeded"}'
    status, err = _post(tenant, job["id"], garbage, secret)
    assert status == 422 and err["error"]["code"] == "invalid_input"
    assert not tenant.job(job["id"])["terminal"]
    tenant.http.post(f"/v1/jobs/{job['id']}/cancel")

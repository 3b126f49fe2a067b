"""Forged provider callbacks to POST /v1/callbacks/replicate/{job_id} for a static_ad job parked on the
Replicate stand-in: bad, missing or malformed signatures, stale and future timestamps, an altered
body or id, a secret that is not (or no longer) configured, replays, another job's prediction, the
wrong provider or job. None is applied, and the job's row and its events stay exactly as they were;
then one genuine callback settles the job, so the refusals were not the route being broken."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from typing import Any

import httpx
from sqlalchemy import select

from genloom.providers.callbacks import sign_callback
from genloom.store.engine import Database
from genloom.store.schema import job_events, jobs
from genloom.testing import FakeReplicate
from tests.api.conftest import Tenant, run

AD = {"type": "static_ad", "input": {"name": "Mug", "description": "A mug"}}


def snapshot(db_url: str, job_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The job's row and its events, straight from the database."""

    async def go() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        db = Database(db_url)
        try:
            async with db.read() as conn:
                row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).mappings().one()
                events = (await conn.execute(select(job_events).where(job_events.c.job_id == job_id)
                                             .order_by(job_events.c.id))).mappings().all()
            return dict(row), [dict(e) for e in events]
        finally:
            await db.dispose()

    result: tuple[dict[str, Any], list[dict[str, Any]]] = run(go)
    return result


def prediction_ref(tenant: Tenant, job_id: str) -> str:
    """The prediction the parked job waits on (its submit stage's event names it)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for e in tenant.http.get(f"/v1/jobs/{job_id}/events").json()["data"]:
            if e["type"] == "stage_completed" and (e.get("data") or {}).get("ref"):
                return str(e["data"]["ref"])
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never parked")


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def test_forged_callbacks_are_never_applied(tenant: Tenant, fake_replicate: FakeReplicate,
                                            replicate_script: Callable[..., None]) -> None:
    secret = fake_replicate.webhook_secret
    # Another job of the same project, completed with a genuine callback: its delivery is what a replay uses.
    before = len(fake_replicate.deliveries)
    other = tenant.create(AD)
    assert tenant.wait(other["id"])["status"] == "completed"
    assert fake_replicate.wait_until(lambda: any(d.url.endswith(other["id"]) and d.status == 200
                                                 for d in fake_replicate.deliveries[before:]), 10)
    genuine = next(d for d in fake_replicate.deliveries[before:] if d.url.endswith(other["id"]))
    other_ref = prediction_ref(tenant, other["id"])

    replicate_script(outcome="hang")
    job = tenant.create(AD)
    ref = prediction_ref(tenant, job["id"])
    url = f"/v1/callbacks/replicate/{job['id']}"
    done = {"id": ref, "status": "succeeded", "output": f"{fake_replicate.url}/files/output.png",
            "error": None, "logs": "", "metrics": {}}
    body = json.dumps(done).encode()
    failed = json.dumps(done | {"status": "failed", "output": None, "error": "x"}).encode()
    theirs = json.dumps(done | {"id": other_ref}).encode()
    now = int(time.time())

    def signed(payload: bytes, key: str = secret, msg_id: str = "msg_forge", at: float | None = None
               ) -> dict[str, str]:
        return sign_callback(payload, key, msg_id=msg_id, timestamp=at) | {"content-type": "application/json"}

    good = signed(body)
    random_sig = "v1," + base64.b64encode(os.urandom(32)).decode()
    v2_sig = good["webhook-signature"].replace("v1,", "v2,")
    replayed = signed(genuine.body, msg_id=genuine.webhook_id)  # its id, re-signed within the tolerance
    forgeries: list[tuple[str, str, bytes, dict[str, str]]] = [
        ("no signature headers", url, body, {"content-type": "application/json"}),
        ("only a webhook-id", url, body, {"webhook-id": "msg_forge"}),
        ("a random signature", url, body, good | {"webhook-signature": random_sig}),
        ("a signature that is not base64", url, body, good | {"webhook-signature": "v1,!!!not-base64!!!"}),
        ("an empty signature", url, body, good | {"webhook-signature": "v1,"}),
        ("a v2 signature scheme", url, body, good | {"webhook-signature": v2_sig}),
        ("signed with an unknown secret", url, body, signed(body, new_secret())),
        ("signed with a retired (no longer set) secret", url, body, signed(body, new_secret(), msg_id="msg_old")),
        ("a stale timestamp (-10 min)", url, body, signed(body, at=now - 600)),
        ("a future timestamp (+10 min)", url, body, signed(body, at=now + 600)),
        ("a malformed timestamp", url, body, good | {"webhook-timestamp": "1e9"}),
        ("a negative timestamp", url, body, good | {"webhook-timestamp": "-5"}),
        ("an altered body (failed -> succeeded)", url, body, signed(failed)),
        ("an altered webhook-id", url, body, good | {"webhook-id": "msg_other"}),
        ("a body that is not UTF-8", url, b"\xff" + body, good),
        ("another job's prediction, validly signed", url, theirs, signed(theirs)),
        ("a replay of another job's genuine callback", url, genuine.body, replayed),
        ("the replay again, same webhook-id", url, genuine.body, replayed),
        ("the right prediction, wrong provider", f"/v1/callbacks/openai/{job['id']}", body, good),
        ("the right prediction, unknown job", "/v1/callbacks/replicate/0123456789abcdef0123456789abcdef", body, good),
        ("the right prediction, a malformed job id", "/v1/callbacks/replicate/..%2f..%2fadmin", body, good),
        ("validly signed, not a prediction", url, b'{"hello": "world"}', signed(b'{"hello": "world"}')),
        ("validly signed, a JSON array", url, b"[]", signed(b"[]")),
    ]
    row, events = snapshot(tenant.server.db_url, job["id"])
    rows, applied = [], 0
    with httpx.Client(base_url=tenant.server.url, timeout=30, trust_env=False) as provider:  # no key: a provider
        for name, path, payload, headers in forgeries:
            r = provider.post(path, content=payload, headers=headers)
            assert r.status_code < 500, (name, r.text)
            ack = r.json()
            applied += bool(ack.get("applied"))
            code = ack["error"]["code"] if "error" in ack else f"applied={ack['applied']}"
            assert r.status_code in (401, 404, 422) or ack == {"job_id": job["id"] if path == url else other["id"],
                                                               "status": "running", "applied": False}, (name, ack)
            rows.append(f"  {name:<46} {r.status_code} {code}")
            assert snapshot(tenant.server.db_url, job["id"]) == (row, events), f"{name} changed the job"
        # The replayed genuine callback to its own job: already settled, so nothing happens there either.
        own = provider.post(f"/v1/callbacks/replicate/{other['id']}", content=genuine.body, headers=replayed)
        assert own.status_code == 200 and own.json()["applied"] is False
        unchanged = snapshot(tenant.server.db_url, job["id"]) == (row, events)
        real = provider.post(url, content=body, headers=signed(body, msg_id="msg_real"))
    print(f"\nforged callbacks: {len(forgeries)} sent, {applied} applied, job row and "
          f"{len(events)} events unchanged: {unchanged}")
    print("\n".join(rows))
    print(f"  then a genuine callback: {real.status_code} {real.json()}")
    assert applied == 0 and unchanged
    assert real.status_code == 200 and real.json() == {"job_id": job["id"], "status": "completed", "applied": True}

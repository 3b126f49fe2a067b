"""MoneyPrinter, as its document's examples use it: the job shape, cooperative cancel, and the
document's own `wait_for_completion` helper, run as written (only its host and port changed)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import pytest

from genloom.testing import FakeReplicate
from tests.api.conftest import Tenant

SEEDS = Path(__file__).resolve().parents[3] / "shared" / "seeds" / "001_8ac970ef6fda100b.txt"
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def document_helper(base_url: str, key: str) -> Any:
    """The document's `wait_for_completion`, taken from the document itself when it is present."""
    if SEEDS.is_file():
        text = SEEDS.read_text()
        source = text[text.index("import requests"):text.index("# Usage")]
    else:  # the same code, kept here for a checkout without the product documents beside it
        source = HELPER
    source = source.replace("http://localhost:8080", base_url)
    source = source.replace("requests.get(f\"", f"requests.get(headers={{'Authorization': 'Bearer {key}'}}, url=f\"")
    namespace: dict[str, Any] = {}
    exec(compile(source, "moneyprinter-docs", "exec"), namespace)
    return namespace["wait_for_completion"]


HELPER = '''import requests
import time

def wait_for_completion(job_id, timeout=600, poll_interval=2):
    start_time = time.time()
    while time.time() - start_time < timeout:
        response = requests.get(f"http://localhost:8080/api/jobs/{job_id}")
        job = response.json()["job"]
        if job["state"] == "completed":
            return job["resultPath"]
        elif job["state"] == "failed":
            raise Exception(f"Job failed: {job['errorMessage']}")
        elif job["state"] == "cancelled":
            raise Exception("Job was cancelled")
        time.sleep(poll_interval)
    raise TimeoutError(f"Job did not complete within {timeout} seconds")
'''


def test_a_job_runs_and_the_documented_helper_returns_its_video(tenant: Tenant) -> None:
    created = tenant.http.post("/api/jobs", json={"videoSubject": "cold brew coffee", "paragraphNumber": 1,
                                                  "voice": "en_us_001", "aiModel": "gpt4"})
    assert created.status_code == 201, created.text
    job = created.json()["job"]
    assert job["state"] == "queued" and job["cancelRequested"] is False and job["resultPath"] is None
    assert ISO_MS.match(job["createdAt"]) and job["startedAt"] is None and job["completedAt"] is None
    wait_for_completion = document_helper(tenant.server.url, tenant.keys.secret_key)
    path = wait_for_completion(job["id"], timeout=60, poll_interval=0.2)
    with av.open(path) as box:
        assert box.streams.video[0].frames > 0 and box.streams.audio
    done = tenant.http.get(f"/api/jobs/{job['id']}").json()["job"]
    assert done["state"] == "completed" and done["resultPath"] == path and done["errorMessage"] is None
    assert ISO_MS.match(done["startedAt"]) and ISO_MS.match(done["completedAt"])
    events = tenant.http.get(f"/api/jobs/{job['id']}/events").json()["events"]
    assert [e["type"] for e in events][:2] == ["queued", "started"] and events[-1]["type"] == "completed"


def test_cancel_sets_the_flag_and_the_helper_raises(tenant: Tenant) -> None:
    created = tenant.http.post("/api/jobs", json={"videoSubject": "a long documentary", "paragraphNumber": 6})
    job_id = created.json()["job"]["id"]
    deadline = time.monotonic() + 20
    while tenant.http.get(f"/api/jobs/{job_id}").json()["job"]["state"] == "queued":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    flagged = tenant.http.post(f"/api/jobs/{job_id}/cancel").json()["job"]
    assert flagged["cancelRequested"] is True
    wait_for_completion = document_helper(tenant.server.url, tenant.keys.secret_key)
    with pytest.raises(Exception, match="Job was cancelled"):
        wait_for_completion(job_id, timeout=30, poll_interval=0.1)
    final = tenant.http.get(f"/api/jobs/{job_id}").json()["job"]
    assert final["state"] == "cancelled" and final["errorMessage"] == "Job cancelled by user request"
    assert final["resultPath"] is None and ISO_MS.match(final["completedAt"])


def test_bad_payload_is_a_clear_422(tenant: Tenant) -> None:
    r = tenant.http.post("/api/jobs", json={"paragraphNumber": 2})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"
    assert "videoSubject" in r.json()["error"]["message"]


def test_cancelling_a_parked_job_cancels_its_prediction(tenant: Tenant, fake_replicate: FakeReplicate,
                                                        replicate_script: Callable[..., None]) -> None:
    """Any job of the project may be cancelled here; one waiting on a provider stops its prediction too."""
    replicate_script(outcome="hang")
    job_id = tenant.create({"type": "static_ad", "input": {"name": "Mug", "description": "A mug"}})["id"]
    parked = tenant.wait(job_id, until=lambda j: any(
        e["type"] == "stage_completed" for e in tenant.http.get(j["events_url"]).json()["data"]))
    ref = next(e["data"]["ref"] for e in tenant.http.get(parked["events_url"]).json()["data"]
               if e["type"] == "stage_completed")
    cancelled = tenant.http.post(f"/api/jobs/{job_id}/cancel").json()["job"]
    assert cancelled["state"] == "cancelled"
    assert ref in fake_replicate.cancels and fake_replicate.prediction(ref)["status"] == "canceled"

"""A job's events: JSON pages, and the SSE stream (format, replay from any Last-Event-ID across
reconnects, heartbeats, the end after a terminal event, and events from another process)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.api.conftest import ApiServer, Tenant, error_of, make_project, motion
from tests.api.sse import read

TERMINAL = {"completed", "failed", "cancelled", "expired"}


def _ids(events: list[dict[str, Any]]) -> list[int]:
    return [e["id"] for e in events]


def test_json_pages(tenant: Tenant) -> None:
    job = tenant.wait(tenant.create(motion())["id"])
    page = tenant.http.get(job["events_url"]).json()
    events = page["data"]
    assert [e["type"] for e in events][:2] == ["queued", "started"] and events[-1]["type"] == "completed"
    assert page["last_event_id"] == events[-1]["id"] and _ids(events) == sorted(_ids(events))
    assert {"id", "job_id", "type", "ts", "attempt"} <= set(events[0])
    rest = tenant.http.get(job["events_url"], params={"after": events[1]["id"], "limit": 2}).json()
    assert rest["data"] == events[2:4]
    empty = tenant.http.get(job["events_url"], params={"after": events[-1]["id"]}).json()
    assert empty == {"data": [], "last_event_id": events[-1]["id"]}
    assert tenant.http.get(job["events_url"], params={"after": -1}).status_code == 422


def test_stream_replays_and_ends_after_the_terminal_event(tenant: Tenant) -> None:
    job = tenant.wait(tenant.create(motion())["id"])
    logged = tenant.http.get(job["events_url"]).json()["data"]
    full = read(tenant.http, job["events_url"])
    assert full.closed
    assert [m.id for m in full.events] == _ids(logged)
    assert [m.event for m in full.events] == [e["type"] for e in logged]
    assert [m.json() for m in full.events] == logged
    assert full.events[-1].event == "completed"
    # Resume from every position: exactly the rest, then the end.
    for i, event in enumerate(logged):
        rest = read(tenant.http, job["events_url"], last_event_id=event["id"])
        assert rest.closed and [m.id for m in rest.events] == _ids(logged[i + 1:])
    by_query = read(tenant.http, job["events_url"], params={"last_event_id": logged[2]["id"]})
    assert [m.id for m in by_query.events] == _ids(logged[3:])
    bad = tenant.http.get(job["events_url"], headers={"Accept": "text/event-stream", "Last-Event-ID": "x"})
    assert bad.status_code == 422 and error_of(bad)["code"] == "invalid_input"


def test_reconnecting_mid_job_loses_and_repeats_nothing(tenant: Tenant) -> None:
    job = tenant.create(motion(dur=3, height=360) | {"mode": "loop"})
    seen: list[int] = []
    streams = 0
    closed = False
    while not closed:  # read two events per connection, then reconnect where we left off
        part = read(tenant.http, job["events_url"], last_event_id=seen[-1] if seen else None, stop_after=2)
        seen += [m.id for m in part.events if m.id is not None]
        streams += 1
        closed = part.closed or part.events[-1].event in TERMINAL
        assert streams < 50
    logged = tenant.http.get(job["events_url"]).json()["data"]
    terminal_at = next(i for i, e in enumerate(logged) if e["type"] in TERMINAL)
    assert seen == _ids(logged[: terminal_at + 1])  # no gap, no duplicate
    assert streams >= 3


def test_heartbeats_while_quiet_then_the_end_on_cancel(tenant: Tenant, replicate_script: Callable[..., None]) -> None:
    replicate_script(outcome="hang")
    job = tenant.create({"type": "static_ad", "input": {"name": "Mug"}})
    result: dict[str, Any] = {}

    def follow() -> None:
        result["read"] = read(tenant.http, job["events_url"], within=20)

    reader = threading.Thread(target=follow)
    reader.start()
    time.sleep(1.5)  # heartbeats every 0.3 s on the test server
    assert tenant.http.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    reader.join(20)
    got = result["read"]
    assert got.closed and got.events[-1].event == "cancelled"
    assert got.heartbeats >= 2
    assert got.events[0].event == "queued"


@pytest.mark.parametrize("own_db", ["postgresql"], indirect=True)  # NOTIFY crosses processes there
def test_stream_sees_a_worker_in_another_process(own_db: str, spawn: Callable[..., ApiServer]) -> None:
    url = own_db
    api = spawn(url, background=False, name="api")  # no worker in this process
    keys = make_project(url)
    with api.client(keys.secret_key) as http:
        job = http.post("/v1/jobs", json=motion()).json()
        result: dict[str, Any] = {}
        reader = threading.Thread(target=lambda: result.update(read=read(http, job["events_url"], within=30)))
        reader.start()
        time.sleep(0.5)
        assert http.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
        spawn(url, background=True, name="worker")  # the worker runs here, in another process
        reader.join(30)
        got = result["read"]
        assert got.closed and got.events[0].event == "queued" and got.events[-1].event == "completed"
        assert [m.id for m in got.events] == _ids(http.get(job["events_url"]).json()["data"])[: len(got.events)]
        assert {m.event for m in got.events} >= {"started", "vision_started", "storage_write_completed"}


@pytest.mark.parametrize("own_db", ["sqlite"], indirect=True)
def test_shutdown_ends_open_streams(own_db: str, spawn: Callable[..., ApiServer]) -> None:
    # No worker: the job stays queued and the stream open. Without the drain, uvicorn would hold the
    # shutdown for the whole grace period waiting for the stream.
    srv = spawn(own_db, background=False, env={"GENLOOM_SHUTDOWN_GRACE_SECONDS": "30"})
    keys = make_project(own_db)
    with srv.client(keys.secret_key) as http:
        job = http.post("/v1/jobs", json=motion()).json()
        result: dict[str, Any] = {}
        reader = threading.Thread(target=lambda: result.update(read=read(http, job["events_url"], within=30)))
        reader.start()
        time.sleep(0.8)
        t0 = time.monotonic()
        srv.proc.terminate()
        reader.join(10)
        assert result["read"].closed and [m.event for m in result["read"].events] == ["queued"]
        assert time.monotonic() - t0 < 3
        srv.proc.wait(10)
        assert time.monotonic() - t0 < 5

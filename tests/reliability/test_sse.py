"""SSE under bad input and behind compression: a garbage Last-Event-ID (header or query) is a 4xx in
the one error shape on all three streams (never a 500 or a broken stream), and a stream is neither
gzipped nor buffered: its first event arrives while the job is still running."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from tests.api.conftest import Tenant, error_of
from tests.api.sse import messages

AD = {"type": "static_ad", "input": {"name": "Mug", "description": "A mug"}}
GARBAGE: list[bytes] = [
    b"x", b"-1", b"1.5", b"1e3", b"0x10", b"12abc", b"99999999999999999999999", b"9223372036854775808",
    "\u00b2".encode("latin-1"),  # superscript two: str.isdigit() says yes, int() says no
    "\u0661\u0662".encode(),  # Arabic-Indic digits, as UTF-8 bytes
    b"\xff\xfe", b"1 2", b"+5",
]
QUERY_GARBAGE = ["abc", "-1", "1.5", "99999999999999999999999", "9223372036854775808"]


def _streams(tenant: Tenant, job_id: str) -> dict[str, str]:
    pk = tenant.keys.public_key
    return {"/v1/jobs/{id}/events": f"/v1/jobs/{job_id}/events", "/api/jobs/{id}/events": f"/api/jobs/{job_id}/events",
            "/v1/{pk}/events/{id}": f"/v1/{pk}/events/{job_id}"}


def test_garbage_last_event_ids_are_4xx_never_5xx(tenant: Tenant, replicate_script: Callable[..., None]) -> None:
    replicate_script(outcome="hang")  # parked on the provider: the job stays open while we probe
    job = tenant.create(AD)
    figures: dict[str, set[int]] = {}
    for route, path in _streams(tenant, job["id"]).items():
        for value in GARBAGE:
            r = tenant.http.get(path, headers=[(b"Accept", b"text/event-stream"), (b"Last-Event-ID", value)])
            assert r.status_code in (400, 422) and error_of(r)["code"] == "invalid_input", (route, value, r.text)
            figures.setdefault(f"{route} Last-Event-ID", set()).add(r.status_code)
        param = "after" if route.startswith("/api/") else "last_event_id"
        for q in QUERY_GARBAGE:
            for accept in ("text/event-stream", "application/json"):
                r = tenant.http.get(path, params={param: q}, headers={"Accept": accept})
                assert r.status_code in (400, 422) and error_of(r)["code"] == "invalid_input", (route, q, r.text)
                figures.setdefault(f"{route} ?{param}=", set()).add(r.status_code)
    tenant.http.post(f"/v1/jobs/{job['id']}/cancel")
    n = len(GARBAGE) + 2 * len(QUERY_GARBAGE)
    print(f"\nSSE garbage resume points: {n} per stream x 3 streams -> " +
          "; ".join(f"{k}: {sorted(v)}" for k, v in figures.items()))


def test_streams_are_neither_gzipped_nor_buffered(tenant: Tenant, replicate_script: Callable[..., None]) -> None:
    replicate_script(outcome="hang")
    job = tenant.create(AD)
    rows = []
    for route, path in _streams(tenant, job["id"]).items():
        headers = {"Accept": "text/event-stream", "Accept-Encoding": "gzip, deflate, br, zstd"}
        t0 = time.monotonic()
        with tenant.http.stream("GET", path, headers=headers, timeout=10) as r:
            assert r.status_code == 200
            assert "content-encoding" not in r.headers and "content-length" not in r.headers, r.headers
            assert r.headers["cache-control"].startswith("no-") and r.headers["x-accel-buffering"] == "no"
            first = next(m for m in messages(r) if m.id is not None)
            first_ms = (time.monotonic() - t0) * 1000
            state = tenant.job(job["id"])
        assert first.event == "queued" and not state["terminal"], (first, state)
        rows.append(f"{route}: first event {first.event!r} after {first_ms:.0f} ms while the job was "
                    f"{state['status']}; Content-Encoding none, {r.headers.get('transfer-encoding')}")
    with tenant.http.stream("GET", f"/v1/jobs/{job['id']}/events", headers={"Accept": "text/event-stream"},
                            timeout=10) as r:
        seen = []
        t_cancel = time.monotonic()
        for m in messages(r):
            if m.id is None:
                continue
            seen.append(m.event)
            if m.event == "stage_completed":  # the whole backlog is in: end the job while we watch
                t_cancel = time.monotonic()
                assert httpx.post(f"{tenant.server.url}/v1/jobs/{job['id']}/cancel", trust_env=False,
                                  headers={"Authorization": f"Bearer {tenant.keys.secret_key}"}).status_code == 202
        ended_ms = (time.monotonic() - t_cancel) * 1000
    assert seen[-1] == "cancelled"
    print("\nSSE delivery (Accept-Encoding: gzip, deflate, br, zstd):\n  " + "\n  ".join(rows) +
          f"\n  live: the cancel reached an open stream and ended it {ended_ms:.0f} ms later ({' > '.join(seen)})")

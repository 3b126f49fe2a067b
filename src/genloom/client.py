"""The Python client for genloom's HTTP API, sync and async (httpx).

    from genloom.client import Client
    with Client("http://127.0.0.1:8080", api_key="sk_…") as gl:
        job = gl.submit("motion", {"src": "sample", "dur": 4}, mode="loop")
        for event in gl.events(job["id"]):     # SSE; reconnects with Last-Event-ID
            print(event.type, event.data)
        done = gl.wait(job["id"], timeout=120)  # raises JobFailed / JobCancelled / JobExpired / WaitTimeout

Errors the server reports come back as ``ApiError`` with its machine-readable ``code``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from standardwebhooks import Webhook

TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})
TERMINAL_EVENTS = TERMINAL


class ClientError(Exception):
    """Anything this client raises."""


class ApiError(ClientError):
    def __init__(self, status: int, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status, self.code, self.message, self.request_id = status, code, message, request_id


class JobEnded(ClientError):
    """The job reached a terminal state other than completed."""

    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__(f"job {job['id']} {job['status']}: {job.get('error_message') or job.get('error_code') or ''}")
        self.job = job


class JobFailed(JobEnded):
    pass


class JobCancelled(JobEnded):
    pass


class JobExpired(JobEnded):
    pass


class WaitTimeout(ClientError):
    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__(f"job {job['id']} is still {job['status']}")
        self.job = job


_ENDED = {"failed": JobFailed, "cancelled": JobCancelled, "expired": JobExpired}


@dataclass
class Event:
    id: int
    type: str
    data: dict[str, Any] = field(default_factory=dict)


def check(job: dict[str, Any]) -> dict[str, Any]:
    """Return a completed job; raise the typed error for any other terminal state."""
    cls = _ENDED.get(job["status"])
    if cls is not None:
        raise cls(job)
    return job


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        err = response.json()["error"]
        raise ApiError(response.status_code, err.get("code", "error"), err.get("message", ""), err.get("request_id"))
    except (ValueError, KeyError, TypeError):
        raise ApiError(response.status_code, "http_error", response.text[:200] or response.reason_phrase) from None


class _SSE:
    """Incremental parser of an event stream (the WHATWG rules genloom's server needs)."""

    def __init__(self) -> None:
        self.id: int | None = None
        self.type = "message"
        self.data: list[str] = []

    def feed(self, line: str) -> Event | None:
        if not line:
            if not self.data:
                self.type = "message"
                return None
            event = Event(self.id or 0, self.type, json.loads("\n".join(self.data)))
            self.type, self.data = "message", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id" and value.isdigit():
            self.id = int(value)
        elif name == "event":
            self.type = value
        elif name == "data":
            self.data.append(value)
        return None


def _job_body(
    type_: str, input: Mapping[str, Any], mode: str | None, user: str | None, idempotency_key: str | None,
    priority: int | None, webhook_url: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"type": type_, "input": dict(input)}
    for k, v in (("mode", mode), ("user", user), ("idempotency_key", idempotency_key), ("priority", priority),
                 ("webhook_url", webhook_url)):
        if v is not None:
            body[k] = v
    return body


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def verify_webhook(headers: Mapping[str, str], body: bytes | str, secret: str) -> dict[str, Any]:
    """Check a genloom webhook's Standard Webhooks signature and return its payload (raises on a bad one)."""
    payload: dict[str, Any] = Webhook(secret).verify(body, dict(headers))
    return payload


class Client:
    """Blocking client."""

    def __init__(self, base_url: str = "http://127.0.0.1:8080", api_key: str | None = None,
                 timeout: float = 30.0, transport: httpx.BaseTransport | None = None) -> None:
        self._http = httpx.Client(base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        _raise_for(response)
        return response.json()

    def submit(self, type_: str, input: Mapping[str, Any], *, mode: str | None = None, user: str | None = None,
               idempotency_key: str | None = None, priority: int | None = None,
               webhook_url: str | None = None) -> dict[str, Any]:
        body = _job_body(type_, input, mode, user, idempotency_key, priority, webhook_url)
        job: dict[str, Any] = self._json("POST", "/v1/jobs", json=body)
        return job

    def upload(self, path: Path) -> str:
        """Upload a local image; returns the key to use as a job's ``src``."""
        with path.open("rb") as f:
            data = self._json("POST", "/v1/uploads", files={"file": (path.name, f)})
        return str(data["key"])

    def get(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self._json("GET", f"/v1/jobs/{job_id}")
        return job

    def list(self, **filters: Any) -> dict[str, Any]:
        params = {k: v for k, v in filters.items() if v is not None}
        page: dict[str, Any] = self._json("GET", "/v1/jobs", params=params)
        return page

    def cancel(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self._json("POST", f"/v1/jobs/{job_id}/cancel")
        return job

    def retry(self, job_id: str, admin_token: str) -> dict[str, Any]:
        job: dict[str, Any] = self._json("POST", f"/v1/admin/jobs/{job_id}/retry",
                                         headers={"Authorization": f"Bearer {admin_token}"})
        return job

    def download(self, job_id: str, dest: Path) -> Path:
        with self._http.stream("GET", f"/v1/jobs/{job_id}/result") as response:
            if not response.is_success:
                response.read()
                _raise_for(response)
            with dest.open("wb") as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
        return dest

    def events(self, job_id: str, last_event_id: int = 0, *, max_reconnects: int = 20) -> Iterator[Event]:
        """Every event of the job until its terminal one; a dropped stream resumes where it stopped."""
        reconnects = 0
        while True:
            headers = {"Accept": "text/event-stream", "Last-Event-ID": str(last_event_id)}
            try:
                with self._http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers,
                                       timeout=httpx.Timeout(30.0, read=60.0)) as response:
                    if not response.is_success:
                        response.read()
                        _raise_for(response)
                    parser = _SSE()
                    for line in response.iter_lines():
                        event = parser.feed(line)
                        if event is None:
                            continue
                        last_event_id = event.id
                        reconnects = 0
                        yield event
                        if event.type in TERMINAL_EVENTS:
                            return
            except (httpx.TransportError, httpx.RemoteProtocolError):
                reconnects += 1
                if reconnects > max_reconnects:
                    raise
                time.sleep(min(2.0, 0.1 * 2**reconnects))
                continue
            if self.get(job_id)["terminal"]:  # the server closed the stream after the end
                return

    def wait(self, job_id: str, timeout: float = 300.0) -> dict[str, Any]:
        """Block until the job is terminal: the completed job, or a typed error."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            wait = max(1, min(60, int(left)))
            response = self._http.get(f"/v1/jobs/{job_id}", headers={"Prefer": f"wait={wait}"},
                                      timeout=httpx.Timeout(30.0, read=wait + 15.0))
            _raise_for(response)
            job: dict[str, Any] = response.json()
            if job["terminal"]:
                return check(job)
            if time.monotonic() >= deadline:
                raise WaitTimeout(job)
            if not response.headers.get("Preference-Applied"):
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


class AsyncClient:
    """The same API for asyncio code."""

    def __init__(self, base_url: str = "http://127.0.0.1:8080", api_key: str | None = None,
                 timeout: float = 30.0, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, headers=_headers(api_key), timeout=timeout,
                                       transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._http.request(method, path, **kwargs)
        _raise_for(response)
        return response.json()

    async def submit(self, type_: str, input: Mapping[str, Any], *, mode: str | None = None,
                     user: str | None = None, idempotency_key: str | None = None, priority: int | None = None,
                     webhook_url: str | None = None) -> dict[str, Any]:
        body = _job_body(type_, input, mode, user, idempotency_key, priority, webhook_url)
        job: dict[str, Any] = await self._json("POST", "/v1/jobs", json=body)
        return job

    async def get(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = await self._json("GET", f"/v1/jobs/{job_id}")
        return job

    async def cancel(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = await self._json("POST", f"/v1/jobs/{job_id}/cancel")
        return job

    async def events(self, job_id: str, last_event_id: int = 0, *, max_reconnects: int = 20) -> AsyncIterator[Event]:
        reconnects = 0
        while True:
            headers = {"Accept": "text/event-stream", "Last-Event-ID": str(last_event_id)}
            try:
                async with self._http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers,
                                             timeout=httpx.Timeout(30.0, read=60.0)) as response:
                    if not response.is_success:
                        await response.aread()
                        _raise_for(response)
                    parser = _SSE()
                    async for line in response.aiter_lines():
                        event = parser.feed(line)
                        if event is None:
                            continue
                        last_event_id = event.id
                        reconnects = 0
                        yield event
                        if event.type in TERMINAL_EVENTS:
                            return
            except (httpx.TransportError, httpx.RemoteProtocolError):
                reconnects += 1
                if reconnects > max_reconnects:
                    raise
                await asyncio.sleep(min(2.0, 0.1 * 2**reconnects))
                continue
            if (await self.get(job_id))["terminal"]:
                return

    async def wait(self, job_id: str, timeout: float = 300.0) -> dict[str, Any]:  # noqa: ASYNC109 - the sync twin's signature
        deadline = time.monotonic() + timeout
        while True:
            wait = max(1, min(60, int(deadline - time.monotonic())))
            response = await self._http.get(f"/v1/jobs/{job_id}", headers={"Prefer": f"wait={wait}"},
                                            timeout=httpx.Timeout(30.0, read=wait + 15.0))
            _raise_for(response)
            job: dict[str, Any] = response.json()
            if job["terminal"]:
                return check(job)
            if time.monotonic() >= deadline:
                raise WaitTimeout(job)
            if not response.headers.get("Preference-Applied"):
                await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

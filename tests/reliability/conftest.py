"""Reliability scenarios (tracker issue 10) against real server processes: bad input and security.

The shared server (``server``: keys required, 127.0.0.0/8 allowlisted for the FakeReplicate stand-in
and local sources, small body limits) comes from tests/api; tests that need another configuration
start their own through ``own_server`` (module-scoped, one per dialect): default body limits for
the limit scenarios, no allowlist at all for the SSRF scenarios, no worker for the fuzzing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from genloom.clock import SystemClock
from genloom.projects import IssuedKeys, Projects
from genloom.store.engine import Database
from tests.api.conftest import (  # noqa: F401 - fixtures, by name
    ADMIN_TOKEN,
    ApiServer,
    Tenant,
    admin,
    fake_replicate,
    new_db,
    other,
    replicate_script,
    run,
    server,
    tenant,
)


@pytest.fixture
def billed(server: ApiServer) -> Iterator[Tenant]:  # noqa: F811 - the imported fixture, by name
    """A metered project: jobs are charged to their user's credits."""
    keys = project(server.db_url, billing=True)
    with server.client(keys.secret_key) as http:
        yield Tenant(server, keys, http)


def project(db_url: str, *, billing: bool = False, allowed_origins: list[str] | None = None,
            name: str = "reliability") -> IssuedKeys:
    """A project with a secret key (and the allowed source origins its public key may use)."""

    async def go() -> IssuedKeys:
        db = Database(db_url)
        try:
            return await Projects(db, SystemClock()).create(
                name, billing=billing, allowed_origins=allowed_origins, rate_limit_per_minute=1_000_000)
        finally:
            await db.dispose()

    keys: IssuedKeys = run(go)
    return keys


def start_server(request: pytest.FixtureRequest, factory: pytest.TempPathFactory, name: str,
                 env: dict[str, str], *, background: bool = True) -> Iterator[ApiServer]:
    """A server of the module's own on a fresh database of the fixture's dialect (``request.param``)."""
    root = factory.mktemp(f"{name}-{request.param}")
    url, drop = new_db(request, request.param, root)
    srv = ApiServer(url, root / "data", background=background, env={"GENLOOM_ADMIN_TOKEN": ADMIN_TOKEN} | env)
    try:
        srv.wait_ready()
        project(url, name="keys-exist")  # keys exist from the start: never local mode
        yield srv
    finally:
        srv.stop()
        drop()


def rss_mb(pid: int) -> float:
    """The process's resident set (VmRSS) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


class PeakRss:
    """Samples a process's RSS every few milliseconds while the block runs: ``before``, ``peak``, ``grew``."""

    def __init__(self, pid: int, every: float = 0.005) -> None:
        self.pid, self.every = pid, every
        self.before = self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(self.every)

    def __enter__(self) -> PeakRss:
        self.before = self.peak = rss_mb(self.pid)
        self._thread.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, rss_mb(self.pid))

    @property
    def grew(self) -> float:
        return self.peak - self.before


def healthy(srv: ApiServer, key: str) -> None:
    """The server still answers, and still creates and reads a job."""
    with srv.client(key) as http:
        assert http.get("/healthz").status_code == 200
        r = http.post("/v1/jobs", json={"type": "copy", "input": {"name": "still alive"}})
        assert r.status_code == 201, r.text
        assert http.get(f"/v1/jobs/{r.json()['id']}").status_code == 200


def wait_all(http: Any, ids: list[str], within: float = 60.0,
             done: Callable[[dict[str, Any]], bool] = lambda j: bool(j["terminal"])) -> dict[str, dict[str, Any]]:
    """Each job (by id) once ``done``; the listing is paged so this is one query per 200 jobs."""
    deadline = time.monotonic() + within
    wanted = set(ids)
    while True:
        seen: dict[str, dict[str, Any]] = {}
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 200} | ({"cursor": cursor} if cursor else {})
            page = http.get("/v1/jobs", params=params).json()
            seen |= {j["id"]: j for j in page["data"] if j["id"] in wanted}
            cursor = page["next_cursor"]
            if not cursor:
                break
        if len(seen) == len(wanted) and all(done(j) for j in seen.values()):
            return seen
        if time.monotonic() > deadline:
            waiting = {i: seen.get(i, {}).get("status") for i in wanted if not done(seen.get(i, {"terminal": False}))}
            raise AssertionError(f"jobs not done after {within}s: {waiting}")
        time.sleep(0.1)

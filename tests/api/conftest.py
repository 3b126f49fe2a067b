"""API fixtures: real server processes (uvicorn, over real HTTP) on the test databases, projects
with keys made straight in the database, and a FakeReplicate the servers talk to.

The main server is per dialect and shared by the whole tests/api session (it starts in about a
second, the tests share it through separate projects); tests that need their own configuration
(local mode, a database that goes away, a second process) start their own.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from genloom.clock import SystemClock
from genloom.projects import IssuedKeys, Projects
from genloom.store.engine import Database
from genloom.testing import FakeReplicate, ReplicateScript
from tests.conftest import DIALECTS
from tests.dbs import PgTemplates, SqliteTemplate

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "adm_test_token_0123456789"
METRICS_TOKEN = "metrics_test_token_0123456789"
MAX_BODY = 256 * 1024
MAX_UPLOAD = 200 * 1024
HEARTBEAT = 0.3


def png_bytes(size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 80, 40)).save(buf, "PNG")
    return buf.getvalue()


class ApiServer:
    """``python -m tests.api.serve`` on a pre-bound loopback socket; stderr kept for failures."""

    def __init__(self, db_url: str, data_dir: Path, *, background: bool = True, env: dict[str, str] | None = None,
                 heartbeat: float = HEARTBEAT) -> None:
        self.db_url, self.data_dir = db_url, data_dir
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("GENLOOM_")}
        full_env |= {
            "GENLOOM_DATABASE_URL": db_url, "GENLOOM_DATA_DIR": str(data_dir), "GENLOOM_HOST": "127.0.0.1",
            "GENLOOM_PORT": str(self.port), "GENLOOM_CONFIG": str(data_dir / "absent.toml"),
            "GENLOOM_LOG_LEVEL": "info", "GENLOOM_POLL_SECONDS": "0.2", "GENLOOM_SHUTDOWN_GRACE_SECONDS": "2",
            "GENLOOM_METRICS_TOKEN": METRICS_TOKEN,
            "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT),
        } | (env or {})
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir / f"server-{self.port}.log"
        self._log = self.log_path.open("wb")
        sock.set_inheritable(True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.api.serve", str(sock.fileno()), "1" if background else "0", str(heartbeat)],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, pass_fds=(sock.fileno(),),
        )
        sock.close()

    def wait_ready(self, within: float = 30.0) -> ApiServer:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API server exited ({self.proc.returncode}):\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1, trust_env=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the API server did not start:\n{self.logs()}")

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-20000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, trust_env=False, **kwargs)

    def admin(self) -> httpx.Client:
        return self.client(ADMIN_TOKEN)

    def metrics(self) -> httpx.Response:
        """/metrics, as a Prometheus scraper asks for it (with the metrics token)."""
        with self.client(METRICS_TOKEN) as http:
            return http.get("/metrics")


def run(coro_fn: Callable[[], Any]) -> Any:
    """Run a coroutine from a sync test (each call its own loop)."""
    return asyncio.run(coro_fn())


def make_project(db_url: str, *, billing: bool = False, rate_limit_per_minute: int = 100_000,
                 name: str = "test") -> IssuedKeys:
    async def go() -> IssuedKeys:
        db = Database(db_url)
        try:
            return await Projects(db, SystemClock()).create(name, billing=billing,
                                                            rate_limit_per_minute=rate_limit_per_minute)
        finally:
            await db.dispose()

    result: IssuedKeys = run(go)
    return result


@dataclass
class Tenant:
    """A project with a key, and a client that sends it."""

    server: ApiServer
    keys: IssuedKeys
    http: httpx.Client

    @property
    def project_id(self) -> str:
        return self.keys.project.id

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.http.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def create(self, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        r = self.http.post("/v1/jobs", json=body, **kwargs)
        assert r.status_code in (200, 201, 202), r.text
        created: dict[str, Any] = r.json()
        return created

    def wait(self, job_id: str, within: float = 20.0, until: Callable[[dict[str, Any]], bool] | None = None
             ) -> dict[str, Any]:
        deadline = time.monotonic() + within
        check = until or (lambda j: bool(j["terminal"]))
        while True:
            job = self.job(job_id)
            if check(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['status']} after {within}s:\n{self.server.logs()}")
            time.sleep(0.05)


def motion(**input: Any) -> dict[str, Any]:
    return {"type": "motion", "input": {"src": "sample", "dur": 1, "height": 240} | input}


def new_db(request: pytest.FixtureRequest, dialect: str, dest: Path) -> tuple[str, Callable[[], None]]:
    """A fresh migrated database from the session templates, and how to drop it."""
    if dialect == "sqlite":
        template: SqliteTemplate = request.getfixturevalue("sqlite_template")
        return template.clone(dest), lambda: None
    templates: PgTemplates = request.getfixturevalue("pg_templates")
    url = templates.clone()
    return url, lambda: templates.drop(url)


@pytest.fixture(scope="session")
def fake_replicate() -> Iterator[FakeReplicate]:
    with FakeReplicate(files={"output.png": png_bytes()}) as fake:
        yield fake


@pytest.fixture
def replicate_script(fake_replicate: FakeReplicate) -> Iterator[Callable[..., None]]:
    """Set how the next predictions behave; restored after the test."""

    def set_script(**kwargs: Any) -> None:
        fake_replicate.script = ReplicateScript(**kwargs)

    yield set_script
    fake_replicate.script = ReplicateScript()


def provider_env(fake: FakeReplicate) -> dict[str, str]:
    return {
        "GENLOOM_STATIC_AD_PROVIDER": "replicate", "GENLOOM_REPLICATE_URL": fake.url,
        "GENLOOM_REPLICATE_TOKEN": fake.token or "", "GENLOOM_REPLICATE_WEBHOOK_SECRET": fake.webhook_secret,
        "GENLOOM_FETCH_ALLOW_NETWORKS": '["127.0.0.0/8"]',
    }


@pytest.fixture(scope="session", params=DIALECTS)
def server(request: pytest.FixtureRequest, fake_replicate: FakeReplicate,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """The shared server: keys required, admin token set, small body limits, Replicate stand-in."""
    root = tmp_path_factory.mktemp(f"api-{request.param}")
    url, drop = new_db(request, request.param, root)
    env = provider_env(fake_replicate) | {
        "GENLOOM_ADMIN_TOKEN": ADMIN_TOKEN, "GENLOOM_MAX_BODY_BYTES": str(MAX_BODY),
        "GENLOOM_MAX_UPLOAD_BYTES": str(MAX_UPLOAD), "GENLOOM_PROVIDER_REQUERY_AFTER_SECONDS": "1",
        "GENLOOM_RECONCILE_SECONDS": "3600",
    }
    srv = ApiServer(url, root / "data", env=env).wait_ready()
    make_project(url, name="keys-exist")  # keys exist from the start: no local mode on this server
    yield srv
    srv.stop()
    drop()


@pytest.fixture
def tenant(server: ApiServer) -> Iterator[Tenant]:
    keys = make_project(server.db_url)
    with server.client(keys.secret_key) as http:
        yield Tenant(server, keys, http)


@pytest.fixture
def other(server: ApiServer) -> Iterator[Tenant]:
    keys = make_project(server.db_url, name="other")
    with server.client(keys.secret_key) as http:
        yield Tenant(server, keys, http)


@pytest.fixture
def admin(server: ApiServer) -> Iterator[httpx.Client]:
    with server.admin() as http:
        yield http


@pytest.fixture
def own_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of the test's own, for the dialect it is parametrized with (indirect)."""
    url, drop = new_db(request, request.param, tmp_path)
    yield url
    drop()


@pytest.fixture
def spawn(own_db: str, tmp_path: Path) -> Iterator[Callable[..., ApiServer]]:
    """Start servers of one's own (stopped after the test, before its database is dropped)."""
    started: list[ApiServer] = []

    def start(db_url: str, *, background: bool = True, env: dict[str, str] | None = None,
              name: str = "data", wait: bool = True) -> ApiServer:
        srv = ApiServer(db_url, tmp_path / name, background=background, env=env)
        started.append(srv)
        return srv.wait_ready() if wait else srv

    yield start
    for srv in started:
        srv.stop()


def error_of(response: httpx.Response) -> dict[str, str]:
    """The error object, after checking the one shape and the request id."""
    body = response.json()
    assert set(body) == {"error"}, body
    err: dict[str, str] = body["error"]
    assert set(err) == {"code", "message", "request_id"}, err
    assert err["request_id"] == response.headers["x-request-id"]
    return err

"""The README's scale-out guide, proven: PostgreSQL, two `serve --no-worker` API processes, three
`worker` processes and S3 storage (a real S3-protocol server). Jobs submitted to either API are
processed once; an SSE client on API A sees the events of a job sent to B, run by any worker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.sse import read
from tests.dbs import PgTemplates
from tests.storage.conftest import ACCESS_KEY, REGION, SECRET_KEY, S3Server

GENLOOM = [sys.executable, "-m", "genloom"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    def __init__(self, db_url: str, s3: S3Server, root: Path) -> None:
        self.root = root
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GENLOOM_")} | {
            "GENLOOM_DATABASE_URL": db_url, "GENLOOM_DATA_DIR": str(root / "data"), "GENLOOM_STORAGE": "s3",
            "GENLOOM_S3_BUCKET": s3.bucket, "GENLOOM_S3_ENDPOINT_URL": s3.endpoint_url, "GENLOOM_S3_REGION": REGION,
            "GENLOOM_S3_ACCESS_KEY": ACCESS_KEY, "GENLOOM_S3_SECRET_KEY": SECRET_KEY, "GENLOOM_S3_PATH_STYLE": "true",
            "GENLOOM_S3_PREFIX": f"scale-{root.name}", "GENLOOM_LOG_LEVEL": "warning", "GENLOOM_POLL_SECONDS": "0.5",
            "GENLOOM_SHUTDOWN_GRACE_SECONDS": "3",
        }
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, name: str) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("wb")
        proc = subprocess.Popen([*GENLOOM, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def api(self, name: str) -> str:
        port = free_port()
        self.start("serve", "--no-worker", "--host", "127.0.0.1", "--port", str(port), name=name)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1, trust_env=False).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (self.root / f"{name}.log").read_text()
            time.sleep(0.1)

    def stop(self) -> list[int | None]:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(30))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(None)
        return codes


@pytest.fixture
def cluster(pg_templates: PgTemplates, s3_server: S3Server, tmp_path: Path) -> Iterator[Cluster]:
    url = pg_templates.clone()
    c = Cluster(url, s3_server, tmp_path)
    yield c
    c.stop()
    pg_templates.drop(url)


def test_two_apis_three_workers_postgresql_and_s3(cluster: Cluster) -> None:
    subprocess.run([*GENLOOM, "db", "upgrade"], env=cluster.env, check=True, capture_output=True, timeout=60)
    create = [*GENLOOM, "projects", "create", "scale", "--credits", "1000", "--json"]
    made = subprocess.run(create, env=cluster.env, check=True, capture_output=True, text=True, timeout=60)
    key = json.loads(made.stdout)["secret_key"]
    api_a, api_b = cluster.api("api-a"), cluster.api("api-b")
    workers = [cluster.start("worker", "--concurrency", "2", name=f"worker-{i}") for i in range(3)]
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(headers=headers, timeout=30, trust_env=False) as http:
        ids = []
        for i in range(24):
            base = api_a if i % 2 else api_b
            body = ({"type": "motion", "input": {"src": "sample", "dur": 1, "height": 240, "seed": i}} if i % 3 == 0
                    else {"type": "copy", "input": {"name": f"product {i}"}})
            r = http.post(f"{base}/v1/jobs", json=body)
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        watched = ids[0]  # sent to B ...
        stream = read(httpx.Client(base_url=api_a, headers=headers, trust_env=False), f"/v1/jobs/{watched}/events")
        assert stream.closed and stream.events[-1].event == "completed"  # ... followed live on A
        deadline = time.monotonic() + 90
        while True:
            jobs = [http.get(f"{api_a}/v1/jobs/{i}").json() for i in ids]
            if all(j["terminal"] for j in jobs) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert [j["status"] for j in jobs] == ["completed"] * len(ids)
        for job_id in ids:
            types = [e["type"] for e in http.get(f"{api_b}/v1/jobs/{job_id}/events").json()["data"]]
            assert types.count("completed") == 1 and types.count("started") == 1, types
        video = http.get(f"{api_b}/v1/jobs/{ids[3]}/result")  # written to S3 by some worker, read through B
        assert video.status_code == 200 and video.content[4:8] == b"ftyp"
    assert all(w.poll() is None for w in workers), "no worker died"
    codes = cluster.stop()
    # uvicorn re-raises the signal after its graceful shutdown, so an API process ends "by SIGTERM";
    # workers handle it themselves and exit 0.
    assert codes[:2] in ([0, 0], [-signal.SIGTERM, -signal.SIGTERM], [0, -signal.SIGTERM], [-signal.SIGTERM, 0])
    assert codes[2:] == [0, 0, 0], "workers exit 0 on SIGTERM"

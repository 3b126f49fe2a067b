"""A real S3-protocol server (moto, as a subprocess on a free loopback port) and the `storage` fixture."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx
import pytest

from genloom.storage.base import Storage
from genloom.storage.local import LocalStorage
from genloom.storage.s3 import S3Storage

REGION = "us-east-1"
ACCESS_KEY = "genloom-test"
SECRET_KEY = "genloom-test-secret"


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    bucket: str

    def storage(self, prefix: str) -> S3Storage:
        return S3Storage(self.bucket, self.endpoint_url, REGION, ACCESS_KEY, SECRET_KEY, prefix=prefix, path_style=True)

    def raw_client(self) -> object:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("moto") / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_up(endpoint, process, log_path)
        server = S3Server(endpoint, "genloom-test")
        server.raw_client().create_bucket(Bucket=server.bucket)  # type: ignore[attr-defined]
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_up(endpoint: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"moto server exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            httpx.get(endpoint, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail(f"moto server did not answer on {endpoint}:\n{log_path.read_text()}")


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """Each implementation, isolated per test (a fresh directory; a fresh key prefix in the shared bucket)."""
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    server: S3Server = request.getfixturevalue("s3_server")
    return server.storage(prefix=f"t-{uuid.uuid4().hex}")

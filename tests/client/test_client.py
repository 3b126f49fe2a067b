"""genloom.client against a running server: submit, wait with typed errors, SSE that resumes with
no gap across a dropped connection (a proxy that cuts the first stream), downloads, webhook checks."""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import av
import pytest
from standardwebhooks import Webhook

from genloom.client import ApiError, AsyncClient, Client, JobFailed, verify_webhook
from tests.api.conftest import Tenant


class CuttingProxy:
    """Forwards TCP to the server; the first connection is cut after ``cut_after`` response bytes."""

    def __init__(self, upstream_port: int, cut_after: int) -> None:
        self.upstream_port, self.cut_after = upstream_port, cut_after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            limit = self.cut_after if self.connections == 1 else None
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, limit), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while data := src.recv(4096):
                if limit is not None and sent + len(data) >= limit:
                    dst.sendall(data[: max(0, limit - sent)])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def client(tenant: Tenant) -> Iterator[Client]:
    with Client(tenant.server.url, tenant.keys.secret_key) as c:
        yield c


def test_submit_wait_and_download(client: Client, tmp_path: Path) -> None:
    job = client.submit("motion", {"src": "sample", "dur": 1, "height": 240}, mode="loop")
    done = client.wait(job["id"], timeout=60)
    assert done["status"] == "completed" and done["terminal"]
    out = client.download(job["id"], tmp_path / "clip.mp4")
    with av.open(str(out)) as box:
        assert box.streams.video[0].frames > 0


def test_failed_job_raises_a_typed_error_and_api_errors_carry_codes(client: Client) -> None:
    job = client.submit("scrape", {"url": "http://127.0.0.1:9/unreachable"})
    with pytest.raises(JobFailed) as info:
        client.wait(job["id"], timeout=30)
    assert info.value.job["error_code"]
    with pytest.raises(ApiError) as bad:
        client.submit("motion", {"src": "sample", "dur": 999})
    assert bad.value.status == 422 and bad.value.code == "invalid_input"


def test_a_dropped_stream_resumes_with_no_gap_and_no_duplicate(tenant: Tenant) -> None:
    job = tenant.create({"type": "motion", "mode": "loop", "input": {"src": "sample", "dur": 1, "height": 240}})
    tenant.wait(job["id"])
    everything = [e["id"] for e in tenant.http.get(f"/v1/jobs/{job['id']}/events").json()["data"]]
    proxy = CuttingProxy(int(tenant.server.url.rsplit(":", 1)[1]), cut_after=700)  # mid-way through the replay
    try:
        with Client(f"http://127.0.0.1:{proxy.port}", tenant.keys.secret_key) as c:
            seen = [e.id for e in c.events(job["id"])]
    finally:
        proxy.close()
    assert proxy.connections >= 2, "the first stream was cut and the client came back"
    assert seen == everything


@pytest.mark.anyio
async def test_async_client_follows_a_job_live(tenant: Tenant) -> None:
    async with AsyncClient(tenant.server.url, tenant.keys.secret_key) as c:
        job = await c.submit("copy", {"name": "Aurora lamp"})
        types = [e.type async for e in c.events(job["id"])]
        assert types[-1] == "completed" and "started" in types
        assert (await c.wait(job["id"], timeout=10))["result"]["headline"]


def test_verify_webhook_accepts_a_signed_payload_and_refuses_a_forged_one() -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    body = b'{"type":"job.completed","data":{"id":"j1"}}'
    from datetime import UTC, datetime

    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(datetime.now(UTC).timestamp()))}
    headers["webhook-signature"] = Webhook(secret).sign("msg_1", datetime.now(UTC), body.decode())
    assert verify_webhook(headers, body, secret)["type"] == "job.completed"
    with pytest.raises(Exception):  # noqa: B017 - the library's own verification error
        verify_webhook(headers, body.replace(b"j1", b"j2"), secret)

"""The stand-in servers themselves: lifecycle from sync and async code, recording, scripting."""

from __future__ import annotations

import contextlib
import math
import time

import anyio
import httpx
import pytest

from genloom.testing import CallbackSink, FakeOpenAI, FakeReplicate


def test_sync_context_serves_then_frees_the_port() -> None:
    with FakeReplicate(files={"a.png": b"png-bytes"}) as fake, httpx.Client(trust_env=False) as client:
        assert fake.url.startswith("http://127.0.0.1:")
        response = client.get(f"{fake.url}/files/a.png")
        assert response.content == b"png-bytes" and response.headers["content-type"] == "image/png"
        assert client.get(f"{fake.url}/files/missing.png").status_code == 404
        url = fake.url
    with httpx.Client(trust_env=False) as client, pytest.raises(httpx.ConnectError):
        client.get(f"{url}/files/a.png")


@pytest.mark.anyio
async def test_async_context_serves() -> None:
    async with FakeOpenAI(["hi"]) as fake, httpx.AsyncClient(trust_env=False) as client:
        response = await client.post(
            f"{fake.url}/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]}
        )
        assert response.json()["choices"][0]["message"] == {"role": "assistant", "content": "hi"}
        assert fake.count("chat") == 1


@pytest.mark.anyio
async def test_stop_is_prompt_while_a_request_hangs() -> None:
    fake = FakeReplicate()
    async with fake, httpx.AsyncClient(trust_env=False) as client, anyio.create_task_group() as tg:
        fake.delay("get", math.inf)

        async def hang() -> None:
            with contextlib.suppress(httpx.HTTPError):
                await client.get(f"{fake.url}/v1/predictions/x", timeout=30)

        tg.start_soon(hang)
        assert await fake.wait_until_async(lambda: fake.count("get") == 1)
        started = time.monotonic()
        await anyio.to_thread.run_sync(fake.stop)
        assert time.monotonic() - started < 3
        tg.cancel_scope.cancel()


def test_faults_apply_in_order_per_route_then_pass() -> None:
    with FakeReplicate(token=None) as fake, httpx.Client(trust_env=False) as client:
        fake.fail_next("get", 503, times=2)
        fake.fail_next("get", 429, retry_after="3")
        statuses = [client.get(f"{fake.url}/v1/predictions/nope") for _ in range(4)]
        assert [r.status_code for r in statuses] == [503, 503, 429, 404]
        assert statuses[2].headers["retry-after"] == "3"
        assert statuses[0].headers["content-type"] == "application/problem+json"
        assert fake.count("get") == 4 and fake.count("create") == 0


def test_replicate_requires_its_token() -> None:
    with FakeReplicate(token="r8_x") as fake, httpx.Client(trust_env=False) as client:
        response = client.post(f"{fake.url}/v1/predictions", json={"version": "v", "input": {}})
        assert response.status_code == 401
        ok = client.post(
            f"{fake.url}/v1/predictions", json={"version": "v", "input": {}}, headers={"Authorization": "Bearer r8_x"}
        )
        assert ok.status_code == 201 and ok.json()["status"] == "starting"
        assert fake.prediction(ok.json()["id"])["input"] == {}


def test_openai_stand_in_speaks_openai_errors() -> None:
    with FakeOpenAI(api_key="sk-1") as fake, httpx.Client(trust_env=False) as client:
        fake.fail_next("chat", 400, detail="bad")
        failed = client.post(f"{fake.url}/v1/chat/completions", json={})
        assert failed.json() == {
            "error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}
        }
        unauthorized = client.post(f"{fake.url}/v1/chat/completions", json={"model": "m", "messages": [{}]})
        assert unauthorized.status_code == 401
        missing = client.post(f"{fake.url}/v1/chat/completions", json={}, headers={"Authorization": "Bearer sk-1"})
        assert missing.status_code == 400


def test_sink_records_raw_bodies_and_can_refuse() -> None:
    with CallbackSink() as sink, httpx.Client(trust_env=False) as client:
        sink.fail_next("callback", 500)
        assert client.post(f"{sink.url}/hook", content=b"first").status_code == 500
        assert client.post(f"{sink.url}/hook", content=b"second").status_code == 204
        assert [r.content for r in sink.received] == [b"first", b"second"]
        assert sink.wait_until(lambda: len(sink.received) == 2, within=0.1)
        assert not sink.wait_until(lambda: len(sink.received) == 3, within=0.05)


def test_a_stand_in_cannot_start_twice_but_can_restart() -> None:
    fake = FakeOpenAI()
    with fake, pytest.raises(RuntimeError):
        fake.start()
    with fake, httpx.Client(trust_env=False) as client:
        assert client.post(f"{fake.url}/v1/chat/completions", json={}).status_code == 400

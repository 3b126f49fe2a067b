"""FakeReplicate's completion callbacks, verified as genloom would verify Replicate's."""

from __future__ import annotations

import anyio
import httpx
import pytest

from genloom.errors import Unauthorized
from genloom.providers.callbacks import verify_callback, webhook_id
from genloom.providers.replicate import ReplicateProvider, parse_prediction
from genloom.testing import CallbackSink, FakeReplicate, ReplicateScript
from tests.providers.conftest import settle

pytestmark = pytest.mark.anyio
VERSION = "abc123"


async def test_completion_callback_is_signed_and_verifies(
    replicate: ReplicateProvider, replicate_server: FakeReplicate, sink: CallbackSink
) -> None:
    created = await replicate.submit(VERSION, {"prompt": "x"}, webhook_url=f"{sink.url}/hooks/replicate")
    assert await sink.wait_until_async(lambda: len(sink.received) == 1)

    [callback] = sink.received
    assert callback.path == "/hooks/replicate"
    payload = verify_callback(callback.headers, callback.content, [replicate_server.webhook_secret])
    prediction = parse_prediction(payload)
    assert (prediction.id, prediction.status) == (created.id, "succeeded")
    assert prediction.output == f"{replicate_server.url}/files/clip.mp4"
    with pytest.raises(Unauthorized):
        verify_callback(callback.headers, callback.content, ["whsec_" + "QUJD" * 8])
    assert await replicate_server.wait_until_async(lambda: len(replicate_server.deliveries) == 1)
    [delivery] = replicate_server.deliveries
    assert (delivery.status, delivery.attempt, delivery.webhook_id) == (204, 1, webhook_id(callback.headers))


async def test_failed_prediction_callback_carries_the_error(
    replicate: ReplicateProvider, replicate_server: FakeReplicate, sink: CallbackSink
) -> None:
    replicate_server.script = ReplicateScript(outcome="fail", error="NSFW content detected")
    await replicate.submit(VERSION, {}, webhook_url=sink.url)
    assert await sink.wait_until_async(lambda: len(sink.received) == 1)
    payload = verify_callback(sink.received[0].headers, sink.received[0].content, [replicate_server.webhook_secret])
    assert parse_prediction(payload).error == "NSFW content detected"


async def test_duplicated_callback_repeats_the_webhook_id(
    replicate: ReplicateProvider, replicate_server: FakeReplicate, sink: CallbackSink
) -> None:
    replicate_server.script = ReplicateScript(callback="duplicate")
    await replicate.submit(VERSION, {}, webhook_url=sink.url)
    assert await sink.wait_until_async(lambda: len(sink.received) == 2)
    first, second = sink.received
    assert webhook_id(first.headers) == webhook_id(second.headers) is not None  # the caller's replay key
    for callback in (first, second):
        verify_callback(callback.headers, callback.content, [replicate_server.webhook_secret])


async def test_dropped_callback_never_arrives_but_polling_sees_the_result(
    replicate: ReplicateProvider, replicate_server: FakeReplicate, sink: CallbackSink
) -> None:
    replicate_server.script = ReplicateScript(callback="drop")
    created = await replicate.submit(VERSION, {}, webhook_url=sink.url)
    assert (await settle(replicate, created.id)).status == "succeeded"
    await anyio.sleep(0.2)
    assert sink.received == [] and replicate_server.deliveries == []


async def test_delayed_callback_arrives_after_the_prediction_finished(
    replicate: ReplicateProvider, replicate_server: FakeReplicate, sink: CallbackSink
) -> None:
    replicate_server.script = ReplicateScript(callback_delay=0.4)
    created = await replicate.submit(VERSION, {}, webhook_url=sink.url)
    assert (await settle(replicate, created.id)).status == "succeeded"
    assert sink.received == []
    assert await sink.wait_until_async(lambda: len(sink.received) == 1)


async def test_callback_refused_by_the_receiver_is_retried_with_the_same_id(
    replicate: ReplicateProvider, replicate_server: FakeReplicate, sink: CallbackSink
) -> None:
    sink.fail_next("callback", 500)
    await replicate.submit(VERSION, {}, webhook_url=sink.url)
    assert await replicate_server.wait_until_async(lambda: len(replicate_server.deliveries) == 2)
    first, second = replicate_server.deliveries
    assert (first.status, second.status) == (500, 204)
    assert (first.attempt, second.attempt) == (1, 2)
    assert first.webhook_id == second.webhook_id


async def test_cancel_sends_a_canceled_callback(
    replicate: ReplicateProvider, replicate_server: FakeReplicate, sink: CallbackSink
) -> None:
    replicate_server.script = ReplicateScript(outcome="hang")
    created = await replicate.submit(VERSION, {}, webhook_url=sink.url)
    await replicate.cancel(created.id)
    assert await sink.wait_until_async(lambda: len(sink.received) == 1)
    payload = verify_callback(sink.received[0].headers, sink.received[0].content, [replicate_server.webhook_secret])
    assert payload["status"] == "canceled" and payload["id"] == created.id


async def test_configured_secret_signs_and_auth_can_be_off(http: httpx.AsyncClient) -> None:
    secret = "whsec_" + "c2VjcmV0" * 4
    with FakeReplicate(webhook_secret=secret, token=None) as fake, CallbackSink() as receiver:
        provider = ReplicateProvider(http, fake.url, token="anything")
        await provider.submit(VERSION, {}, webhook_url=receiver.url)
        assert await receiver.wait_until_async(lambda: len(receiver.received) == 1)
        callback = receiver.received[0]
        assert verify_callback(callback.headers, callback.content, [secret])["status"] == "succeeded"

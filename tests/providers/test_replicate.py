"""ReplicateProvider against FakeReplicate over real HTTP: routes, bodies, outcomes, error classes."""

from __future__ import annotations

import math
import time
from email.utils import formatdate

import anyio
import httpx
import pytest

from genloom.errors import PermanentError, TransientError
from genloom.providers.replicate import ReplicateProvider, parse_prediction, parse_retry_after
from genloom.testing import FakeReplicate, ReplicateScript
from tests.providers.conftest import CLIP, FRAME, settle

pytestmark = pytest.mark.anyio
VERSION = "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa"


async def test_submit_by_version_and_poll_to_success(
    replicate: ReplicateProvider, replicate_server: FakeReplicate, http: httpx.AsyncClient
) -> None:
    created = await replicate.submit(f"acme/animate:{VERSION}", {"prompt": "a cat"}, "https://hooks.example/r")

    assert created.status == "starting" and not created.terminal
    [request] = replicate_server.requests
    assert (request.method, request.path) == ("POST", "/v1/predictions")
    assert request.json() == {
        "version": VERSION,
        "input": {"prompt": "a cat"},
        "webhook": "https://hooks.example/r",
        "webhook_events_filter": ["completed"],
    }
    assert request.headers["authorization"] == f"Bearer {replicate_server.token}"
    assert "prefer" not in request.headers  # never Prefer: wait

    done = await settle(replicate, created.id)
    assert done.status == "succeeded" and done.error is None
    assert done.output == f"{replicate_server.url}/files/clip.mp4"
    assert done.raw["id"] == created.id
    fetched = await http.get(done.output)
    assert fetched.content == CLIP and fetched.headers["content-type"] == "video/mp4"
    assert replicate_server.count("create") == 1


async def test_bare_version_id_goes_to_predictions(
    replicate: ReplicateProvider, replicate_server: FakeReplicate
) -> None:
    await replicate.submit(VERSION, {"n": 1})
    [request] = replicate_server.requests
    assert request.path == "/v1/predictions"
    assert request.json() == {"version": VERSION, "input": {"n": 1}}


async def test_official_model_goes_to_models_route(
    replicate: ReplicateProvider, replicate_server: FakeReplicate
) -> None:
    created = await replicate.submit("black-forest-labs/flux-schnell", {"prompt": "x"})
    [request] = replicate_server.requests
    assert request.path == "/v1/models/black-forest-labs/flux-schnell/predictions"
    assert request.json() == {"input": {"prompt": "x"}}  # no version, no webhook fields
    assert (await settle(replicate, created.id)).status == "succeeded"


@pytest.mark.parametrize("model", ["", "a/b/c", "owner/", "/name", ":v1", "owner/name:", "a b", "o/n:v/1"])
async def test_malformed_model_reference_is_permanent_and_sends_nothing(
    replicate: ReplicateProvider, replicate_server: FakeReplicate, model: str
) -> None:
    with pytest.raises(PermanentError) as caught:
        await replicate.submit(model, {})
    assert caught.value.code == "invalid_model"
    assert replicate_server.requests == []


async def test_failed_prediction_is_returned_not_raised(
    replicate: ReplicateProvider, replicate_server: FakeReplicate
) -> None:
    replicate_server.script = ReplicateScript(outcome="fail", error="CUDA out of memory", latency=0.05)
    created = await replicate.submit(VERSION, {})
    done = await settle(replicate, created.id)
    assert done.status == "failed" and done.error == "CUDA out of memory" and done.output is None


async def test_output_list_and_chosen_file(
    replicate: ReplicateProvider, replicate_server: FakeReplicate, http: httpx.AsyncClient
) -> None:
    replicate_server.script = ReplicateScript(output_file="frame.png", output_list=True)
    done = await settle(replicate, (await replicate.submit(VERSION, {})).id)
    assert done.output == [f"{replicate_server.url}/files/frame.png"]
    assert (await http.get(done.output[0])).content == FRAME


async def test_hanging_prediction_is_canceled(replicate: ReplicateProvider, replicate_server: FakeReplicate) -> None:
    replicate_server.script = ReplicateScript(outcome="hang")
    created = await replicate.submit(VERSION, {})
    await anyio.sleep(0.1)
    assert (await replicate.get(created.id)).status == "processing"

    await replicate.cancel(created.id)

    assert replicate_server.cancels == [created.id]
    assert replicate_server.count("cancel") == 1
    [request] = [r for r in replicate_server.requests if r.route == "cancel"]
    assert request.path == f"/v1/predictions/{created.id}/cancel"
    after = await replicate.get(created.id)
    assert after.status == "canceled" and after.terminal and after.error is None


async def test_cancel_after_completion_leaves_the_result(
    replicate: ReplicateProvider, replicate_server: FakeReplicate
) -> None:
    done = await settle(replicate, (await replicate.submit(VERSION, {})).id)
    await replicate.cancel(done.id)
    assert (await replicate.get(done.id)).status == "succeeded"


async def test_slow_answer_beyond_client_timeout_is_transient(
    replicate_server: FakeReplicate, http: httpx.AsyncClient
) -> None:
    replicate_server.delay("create", math.inf)
    assert replicate_server.token is not None
    provider = ReplicateProvider(http, replicate_server.url, token=replicate_server.token, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        await provider.submit(VERSION, {})
    assert time.monotonic() - started < 2
    assert caught.value.code == "provider_timeout"
    assert replicate_server.count("create") == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 425])
async def test_unavailable_is_transient_until_it_passes(
    replicate: ReplicateProvider, replicate_server: FakeReplicate, status: int
) -> None:
    replicate_server.fail_next("create", status, times=2)
    for _ in range(2):
        with pytest.raises(TransientError) as caught:
            await replicate.submit(VERSION, {})
        assert caught.value.code == "provider_unavailable"
        assert caught.value.details["status"] == status
        assert "retry_after" not in caught.value.details
    created = await replicate.submit(VERSION, {})
    assert created.status == "starting"
    assert replicate_server.count("create") == 3  # exactly one create per attempt


async def test_rate_limit_carries_retry_after_seconds(
    replicate: ReplicateProvider, replicate_server: FakeReplicate
) -> None:
    replicate_server.fail_next("get", 429, retry_after="7", detail="Request was throttled.")
    with pytest.raises(TransientError) as caught:
        await replicate.get("abc")
    assert caught.value.code == "provider_rate_limited"
    assert caught.value.details["retry_after"] == 7.0
    assert caught.value.details["detail"] == "Request was throttled."


async def test_rate_limit_carries_retry_after_http_date(
    replicate: ReplicateProvider, replicate_server: FakeReplicate
) -> None:
    replicate_server.fail_next("create", 429, retry_after=formatdate(time.time() + 30, usegmt=True))
    with pytest.raises(TransientError) as caught:
        await replicate.submit(VERSION, {})
    assert 25 <= caught.value.details["retry_after"] <= 31


async def test_503_with_retry_after_keeps_it(replicate: ReplicateProvider, replicate_server: FakeReplicate) -> None:
    replicate_server.fail_next("cancel", 503, retry_after="2")
    with pytest.raises(TransientError) as caught:
        await replicate.cancel("abc")
    assert caught.value.details["retry_after"] == 2.0


@pytest.mark.parametrize("status", [400, 402, 403, 404, 409, 422])
async def test_client_errors_are_permanent_with_the_providers_detail(
    replicate: ReplicateProvider, replicate_server: FakeReplicate, status: int
) -> None:
    replicate_server.fail_next("create", status, detail="- input.prompt: prompt is required")
    with pytest.raises(PermanentError) as caught:
        await replicate.submit(VERSION, {})
    assert caught.value.code == "provider_rejected"
    assert caught.value.details == {
        "provider": "replicate",
        "status": status,
        "detail": "- input.prompt: prompt is required",
    }
    assert "prompt is required" in str(caught.value)


async def test_real_validation_error_is_permanent(replicate_server: FakeReplicate, http: httpx.AsyncClient) -> None:
    response = await http.post(
        f"{replicate_server.url}/v1/predictions",
        json={"input": {}},
        headers={"Authorization": f"Bearer {replicate_server.token}"},
    )
    assert response.status_code == 422 and "version" in response.json()["detail"]


async def test_unknown_prediction_is_permanent(replicate: ReplicateProvider) -> None:
    with pytest.raises(PermanentError) as caught:
        await replicate.get("doesnotexist")
    assert caught.value.details["status"] == 404


async def test_prediction_id_cannot_escape_its_path(
    replicate: ReplicateProvider, replicate_server: FakeReplicate
) -> None:
    with pytest.raises(PermanentError):
        await replicate.cancel("../../v1/predictions")
    assert replicate_server.count("create") == 0 and replicate_server.cancels == []


async def test_wrong_token_is_permanent_and_the_token_never_shows(
    replicate_server: FakeReplicate, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "r8_DoNotLeakMe0123456789"
    provider = ReplicateProvider(http, replicate_server.url, token=secret, timeout=2)
    with pytest.raises(PermanentError) as rejected:
        await provider.submit(VERSION, {})
    assert rejected.value.details["status"] == 401
    replicate_server.delay("get", math.inf)
    slow = ReplicateProvider(http, replicate_server.url, token=secret, timeout=0.2)
    with pytest.raises(TransientError) as timed_out:
        await slow.get("abc")
    for exc in (rejected.value, timed_out.value):
        assert secret not in f"{exc} {exc!r} {exc.details!r} {exc.__cause__!r}"
    assert secret not in repr(provider)
    assert secret not in caplog.text


async def test_unreachable_provider_is_transient(http: httpx.AsyncClient) -> None:
    with FakeReplicate() as gone:
        url = gone.url
    provider = ReplicateProvider(http, url, token="t", timeout=2)
    with pytest.raises(TransientError) as caught:
        await provider.get("abc")
    assert caught.value.code == "provider_unreachable"
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


async def test_base_url_may_end_in_v1(replicate_server: FakeReplicate, http: httpx.AsyncClient) -> None:
    assert replicate_server.token is not None
    provider = ReplicateProvider(http, replicate_server.url + "/v1/", token=replicate_server.token)
    await provider.submit(VERSION, {})
    assert replicate_server.requests[0].path == "/v1/predictions"


def test_parse_prediction_maps_aborted_and_fills_missing_errors() -> None:
    aborted = parse_prediction({"id": "p1", "status": "aborted", "error": None})
    assert (aborted.status, aborted.error) == ("failed", "prediction aborted before it ran")
    failed = parse_prediction({"id": "p1", "status": "failed"})
    assert failed.error == "prediction failed"
    structured = parse_prediction({"id": "p1", "status": "failed", "error": {"msg": "boom"}})
    assert structured.error == '{"msg": "boom"}'
    assert parse_prediction({"id": "p1", "status": "canceled"}).error is None


@pytest.mark.parametrize(
    "data", [{"status": "starting"}, {"id": "", "status": "starting"}, {"id": "p", "status": "queued"}]
)
def test_parse_prediction_refuses_malformed_objects(data: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        parse_prediction(data)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        (" 120 ", 120.0),
        ("1.5", 1.5),
        ("-3", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("Thu, 01 Jan 2026 00:01:00 GMT", 60.0),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    now = 1767225600.0  # 2026-01-01T00:00:00Z
    assert parse_retry_after(header, now=now) == expected

"""The dispatcher over real HTTP: signed deliveries, retries on 500s, timeouts and refused
connections following the schedule, dead letters, 410 and long failure disabling the endpoint,
Retry-After, replay, rotation, prompt wake-ups, and several dispatchers sharing the outbox."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from genloom.lifecycle import Status
from genloom.webhooks.deliveries import Deliveries
from genloom.webhooks.dispatcher import Dispatcher
from genloom.webhooks.endpoints import Endpoints
from tests.store.helpers import event_rows, in_state, make_project
from tests.webhooks.conftest import SCHEDULE, TIMEOUT
from tests.webhooks.helpers import attempt_rows, completed_job, completed_jobs, delivery_rows, settled, until
from tests.webhooks.receiver import Answer, Receiver

pytestmark = pytest.mark.anyio
Start = Callable[..., Awaitable[Dispatcher]]


def gaps(rows: list[dict[str, Any]]) -> list[int]:
    return [b["created_at"] - a["created_at"] for a, b in itertools.pairwise(rows)]


async def test_a_completed_job_is_delivered_signed(
    core: Any, endpoints: Endpoints, receiver: Receiver, dispatch: Start, capsys: Any
) -> None:
    project = await make_project(core, billing=False)
    created = await endpoints.create(project.id, receiver.url + "/hooks/a")
    await dispatch()
    job = await completed_job(core, project)
    [arrival] = await receiver.wait_for(1)
    [row] = await settled(core, 1)
    headers, body = arrival.request.headers, arrival.request.content
    assert headers["webhook-id"] == row["id"] and headers["content-type"] == "application/json"
    assert arrival.request.path == "/hooks/a"
    payload = Webhook(created.secret).verify(body, headers)
    assert payload["type"] == "job.completed" and payload["timestamp"].endswith("Z")
    data = payload["data"]
    assert (data["id"], data["status"], data["type"], data["user"]) == (job.id, "completed", "noop", "")
    assert data["result_url"] == f"/v1/jobs/{job.id}/result" and data["cost"] == 1 and data["attempt"] == 1
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("delivered", 1, 204)
    types = [e["type"] for e in await until(lambda: _events_through(core, job.id, "webhook_delivered"))]
    assert types[-3:] == ["completed", "webhook_dispatched", "webhook_delivered"]
    out = capsys.readouterr()
    assert created.secret not in out.out + out.err


async def _events_through(core: Any, job_id: str, last: str) -> list[dict[str, Any]] | None:
    rows = await event_rows(core, job_id)
    return rows if rows and rows[-1]["type"] == last else None


async def test_a_job_url_is_signed_with_the_project_secret(
    core: Any, endpoints: Endpoints, receiver: Receiver, dispatch: Start
) -> None:
    project = await make_project(core, billing=False)
    await dispatch()
    job = await in_state(core, project, Status.FAILED, webhook_url=receiver.url + "/mine?x=1")
    [arrival] = await receiver.wait_for(1)
    assert arrival.request.path == "/mine"
    secret = await endpoints.project_secret(project.id)  # created by the dispatcher on first use
    payload = Webhook(secret).verify(arrival.request.content, arrival.request.headers)
    assert (payload["type"], payload["data"]["id"], payload["data"]["error_code"]) == ("job.failed", job.id, "boom")


async def test_500s_are_retried_on_the_schedule(
    core: Any, endpoints: Endpoints, receiver: Receiver, dispatch: Start
) -> None:
    project = await make_project(core, billing=False)
    await endpoints.create(project.id, receiver.url)
    receiver.answer(Answer(500), Answer(502))
    await dispatch()
    await completed_job(core, project)
    [row] = await settled(core, 1)
    attempts = await attempt_rows(core, row["id"])
    assert [a["status_code"] for a in attempts] == [500, 502, 204]
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert attempts[0]["error"] == "HTTP 500" and attempts[0]["response"] == "scripted"
    assert gaps(attempts)[0] >= SCHEDULE[0] * 1000 and gaps(attempts)[1] >= SCHEDULE[1] * 1000
    assert len({a.webhook_id for a in receiver.got()}) == 1  # the same webhook-id on every attempt
    types = [e["type"] for e in await event_rows(core, row["job_id"])]
    assert types.count("webhook_failed") == 2 and types.count("webhook_dispatched") == 3


async def test_timeouts_are_retried(core: Any, endpoints: Endpoints, receiver: Receiver, dispatch: Start) -> None:
    project = await make_project(core, billing=False)
    await endpoints.create(project.id, receiver.url)
    receiver.answer(Answer(204, delay=TIMEOUT * 3))
    await dispatch()
    await completed_job(core, project)
    [row] = await settled(core, 1)
    first, second = await attempt_rows(core, row["id"])
    assert first["status_code"] is None and "no answer within" in first["error"]
    assert first["latency_ms"] >= TIMEOUT * 1000 * 0.9
    assert second["status_code"] == 204
    assert gaps([first, second])[0] >= SCHEDULE[0] * 1000


async def test_refused_connections_are_retried_then_dead_lettered(
    core: Any, endpoints: Endpoints, refused_url: str, dispatch: Start
) -> None:
    project = await make_project(core, billing=False)
    await endpoints.create(project.id, refused_url)
    await dispatch()
    job = await completed_job(core, project)
    [row] = await settled(core, 1, status="dead")
    attempts = await attempt_rows(core, row["id"])
    assert len(attempts) == len(SCHEDULE) == row["attempts"]
    assert all(a["status_code"] is None and a["error"].startswith("could not connect") for a in attempts)
    assert all(g >= s * 1000 for g, s in zip(gaps(attempts), SCHEDULE, strict=False))
    events = await until(lambda: _events_through(core, job.id, "webhook_dead_letter"))
    assert [e["type"] for e in events].count("webhook_failed") == len(SCHEDULE)
    assert events[-1]["error_msg"] == f"{len(SCHEDULE)} attempts failed"


async def test_410_disables_the_endpoint(
    core: Any, endpoints: Endpoints, receiver: Receiver, dispatch: Start
) -> None:
    project = await make_project(core, billing=False)
    ep = (await endpoints.create(project.id, receiver.url)).endpoint
    receiver.set_default(Answer(410))
    await dispatch()
    await completed_job(core, project)
    [row] = await settled(core, 1, status="dead")
    assert row["attempts"] == 1 and row["last_status_code"] == 410
    now = await endpoints.get(project.id, ep.id)
    assert not now.enabled and now.disabled_reason == "the endpoint answered 410 Gone"
    await completed_job(core, project)
    assert len(await delivery_rows(core)) == 1  # a disabled endpoint gets nothing new
    assert receiver.count() == 1


async def test_a_disabled_endpoint_dead_letters_what_is_due(
    core: Any, endpoints: Endpoints, receiver: Receiver, dispatch: Start
) -> None:
    project = await make_project(core, billing=False)
    ep = (await endpoints.create(project.id, receiver.url)).endpoint
    await completed_job(core, project)
    await endpoints.update(project.id, ep.id, enabled=False)
    await dispatch()
    [row] = await settled(core, 1, status="dead")
    assert row["last_error"] == "the endpoint is disabled: disabled by request"
    assert receiver.count() == 0


async def test_an_endpoint_failing_for_too_long_is_disabled(
    core: Any, endpoints: Endpoints, receiver: Receiver, dispatch: Start
) -> None:
    project = await make_project(core, billing=False)
    ep = (await endpoints.create(project.id, receiver.url)).endpoint
    receiver.set_default(Answer(500))
    settings = core.settings.model_copy(update={"webhook_disable_after_seconds": 0.15})
    await dispatch(settings=settings)
    await completed_job(core, project)

    async def disabled() -> Any:
        now = await endpoints.get(project.id, ep.id)
        return None if now.enabled else now

    now = await until(disabled)
    assert now.disabled_reason.startswith("failing without a success since")
    await settled(core, 1, status="dead")
    assert receiver.count() < len(SCHEDULE)


async def test_a_success_resets_the_failure_clock(
    core: Any, endpoints: Endpoints, receiver: Receiver, dispatch: Start
) -> None:
    project = await make_project(core, billing=False)
    ep = (await endpoints.create(project.id, receiver.url)).endpoint
    receiver.answer(Answer(500))
    await dispatch()
    await completed_job(core, project)
    await settled(core, 1)
    now = await endpoints.get(project.id, ep.id)
    assert now.enabled and now.failing_since is None


async def test_retry_after_is_honoured(core: Any, endpoints: Endpoints, receiver: Receiver, dispatch: Start) -> None:
    project = await make_project(core, billing=False)
    await endpoints.create(project.id, receiver.url)
    receiver.answer(Answer(503, retry_after="1"))
    await dispatch()
    await completed_job(core, project)
    [row] = await settled(core, 1)
    first, second = await attempt_rows(core, row["id"])
    assert first["status_code"] == 503 and second["status_code"] == 204
    assert gaps([first, second])[0] >= 1000  # not the schedule's 50 ms
    events = [e for e in await event_rows(core, row["job_id"]) if e["type"] == "webhook_failed"]
    assert events[0]["data"]["next_attempt_in_ms"] >= 1000


async def test_replay_one_and_a_range(
    core: Any, endpoints: Endpoints, deliveries: Deliveries, receiver: Receiver, dispatch: Start
) -> None:
    project = await make_project(core, billing=False)
    ep = (await endpoints.create(project.id, receiver.url)).endpoint
    receiver.set_default(Answer(400))
    await dispatch()
    started = int(time.time() * 1000) - 1
    await completed_jobs(core, project, 3)
    dead = await settled(core, 3, status="dead", within=15)
    assert receiver.count() == 3 * len(SCHEDULE)
    receiver.set_default(Answer(204))

    one = await deliveries.replay(project.id, dead[0]["id"])
    assert (one.id, one.status, one.attempts) == (dead[0]["id"], "pending", 0)
    await settled(core, 1)
    history = await deliveries.attempts(project.id, one.id)
    assert [a.attempt for a in history] == [*range(1, len(SCHEDULE) + 1), 1]
    assert history[-1].status_code == 204
    assert {a.webhook_id for a in receiver.got() if a.body()["data"]["id"] == dead[0]["job_id"]} == {one.id}

    later = int(time.time() * 1000) + 1
    assert await deliveries.replay_range(project.id, ep.id, since=started, until=later) == 2  # the dead ones
    await settled(core, 3)
    assert Counter(a.webhook_id for a in receiver.got()) == {r["id"]: len(SCHEDULE) + 1 for r in dead}
    listed = await deliveries.list(project.id, endpoint_id=ep.id)
    assert {d.id for d in listed} == {r["id"] for r in dead} and all(d.status == "delivered" for d in listed)
    assert [d.id for d in await deliveries.list(project.id, endpoint_id=ep.id, limit=2, before=(
        listed[1].created_at, listed[1].id))] == [listed[2].id]


async def test_a_rotation_sends_both_signatures(
    core: Any, endpoints: Endpoints, receiver: Receiver, dispatch: Start
) -> None:
    project = await make_project(core, billing=False)
    created = await endpoints.create(project.id, receiver.url)
    new = await endpoints.rotate_secret(project.id, created.endpoint.id)
    await dispatch()
    await completed_job(core, project)
    [arrival] = await receiver.wait_for(1)
    assert len(arrival.request.headers["webhook-signature"].split(" ")) == 2
    for secret in (new, created.secret):
        Webhook(secret).verify(arrival.request.content, arrival.request.headers)


async def test_webhook_events_can_be_subscribed_without_a_loop(
    core: Any, endpoints: Endpoints, receiver: Receiver, dispatch: Start
) -> None:
    project = await make_project(core, billing=False)
    await endpoints.create(project.id, receiver.url, events=["job.completed", "job.webhook_delivered"])
    await dispatch()
    await completed_job(core, project)
    rows = await settled(core, 2)
    await asyncio.sleep(0.3)  # time for a loop to show itself
    rows = await delivery_rows(core)
    assert sorted(r["event_type"] for r in rows) == ["job.completed", "job.webhook_delivered"]
    assert receiver.count() == 2


async def test_an_idle_dispatcher_is_woken_at_once(
    core: Any, endpoints: Endpoints, receiver: Receiver, dispatch: Start
) -> None:
    project = await make_project(core, billing=False)
    await endpoints.create(project.id, receiver.url)
    await dispatch(poll_seconds=30)  # only a wake-up can deliver in time
    await asyncio.sleep(0.2)
    latencies = []
    for n in range(1, 4):
        await completed_job(core, project)
        done = time.monotonic()
        [*_, arrival] = await receiver.wait_for(n, within=5)
        latencies.append(arrival.at - done)
    assert max(latencies) < 0.5, latencies  # typically a few ms; the issue asks for ~100 ms


async def test_dispatchers_share_the_outbox_without_double_sending(
    core: Any, endpoints: Endpoints, receiver: Receiver, dispatch: Start
) -> None:
    project = await make_project(core, billing=False)
    await endpoints.create(project.id, receiver.url)
    receiver.set_default(Answer(204, delay=0.01))
    for _ in range(3):
        await dispatch(concurrency=4, batch=4)
    await completed_jobs(core, project, 40)
    await settled(core, 40, within=30)
    counts = Counter(a.webhook_id for a in receiver.got())
    assert len(counts) == 40 and set(counts.values()) == {1}


async def test_a_claim_takes_at_most_its_limit(core: Any, endpoints: Endpoints, receiver: Receiver) -> None:
    """Regression: as ``IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)`` PostgreSQL leased every due row."""
    project = await make_project(core, billing=False)
    await endpoints.create(project.id, receiver.url)
    await completed_jobs(core, project, 8)
    dispatcher = Dispatcher(core)
    try:
        assert await dispatcher.run_once(limit=3) == 3
        rows = await delivery_rows(core)
        assert sum(r["status"] == "delivered" for r in rows) == 3
        assert sum(r["lease_owner"] is None and r["status"] == "pending" for r in rows) == 5
        assert await dispatcher.run_once() == 5
    finally:
        await dispatcher.close()


async def test_a_job_url_refused_by_the_address_policy_is_dead_at_once(core: Any, dispatch: Start) -> None:
    project = await make_project(core, billing=False)
    await dispatch()
    job = await completed_job(core, project, webhook_url="http://169.254.169.254/latest/meta-data")
    [row] = await settled(core, 1, status="dead")
    [attempt] = await attempt_rows(core, row["id"])
    assert attempt["status_code"] is None and "metadata" in attempt["error"]
    events = await until(lambda: _events_through(core, job.id, "webhook_dead_letter"))
    assert events[-2]["error_code"] == "webhook_unsafe_url"

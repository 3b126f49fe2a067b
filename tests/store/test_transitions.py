"""Transitions through the jobs service on real rows: every edge, every refusal, and races."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from structlog.testing import capture_logs

from genloom import lifecycle
from genloom.errors import InvalidTransition, LeaseLost
from genloom.lifecycle import STATUS_EVENT, EventType, Status
from genloom.models import EventSpec
from tests.store.helpers import (
    event_rows,
    in_state,
    job_row,
    ledger_rows,
    make_project,
)

pytestmark = pytest.mark.anyio

STATES = list(Status)


def denials(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "job.transition_denied"]


@pytest.mark.parametrize("current", STATES, ids=[s.value for s in STATES])
async def test_every_target_from_a_real_row(core: Any, current: Status) -> None:
    """From a row in ``current``, every allowed target commits with its event (and refund);
    every other target is refused, leaves the row exactly as it was, writes no event and logs."""
    project = await make_project(core, credits=100)
    for target in STATES:
        job = await in_state(core, project, current)
        before = await job_row(core, job.id)
        events_before = await event_rows(core, job.id)
        ledger_before = await ledger_rows(core, job.id)
        if lifecycle.is_allowed(current, target):
            new = await core.jobs.transition(job.id, target, request_id="req-edge")
            after = await job_row(core, job.id)
            assert new.status == target == after["status"]
            assert after["updated_at"] >= before["updated_at"]
            written = (await event_rows(core, job.id))[len(events_before):]
            expected = STATUS_EVENT[target]
            assert [e["type"] for e in written] == ([expected.value] if expected else [])
            assert all(e["request_id"] == "req-edge" for e in written)
            refunds = [r for r in await ledger_rows(core, job.id) if r not in ledger_before]
            if target in lifecycle.REFUNDED and before["charged"]:
                assert [(r["reason"], r["amount"]) for r in refunds] == [("refund", before["cost"])]
                assert not after["charged"]
            else:
                assert refunds == []
            if target in lifecycle.TERMINAL or target == Status.QUEUED:
                assert after["lease_token"] is None and after["lease_owner"] is None
            if target in lifecycle.TERMINAL:
                assert after["completed_at"] is not None
            if target in (Status.QUEUED, Status.PENDING):  # keep the queue clear for the next claim
                await core.jobs.cancel(job.id)
        else:
            with capture_logs() as logs, pytest.raises(InvalidTransition) as info:
                await core.jobs.transition(job.id, target, request_id="req-denied")
            assert type(info.value) is InvalidTransition
            assert info.value.code == "invalid_transition"
            assert await job_row(core, job.id) == before
            assert await event_rows(core, job.id) == events_before
            assert await ledger_rows(core, job.id) == ledger_before
            [line] = denials(logs)
            assert line["log_level"] == "warning"
            assert line["job_id"] == job.id
            assert line["project_id"] == project.id
            assert line["from_status"] == current.value
            assert line["to_status"] == target.value
            assert line["request_id"] == "req-denied"


async def test_a_stale_lease_token_is_refused_and_changes_nothing(core: Any) -> None:
    project = await make_project(core, credits=10)
    job = await in_state(core, project, Status.RUNNING)
    before = await job_row(core, job.id)
    events_before = await event_rows(core, job.id)
    for target in (Status.COMPLETED, Status.FAILED, Status.QUEUED, Status.CANCELLED):
        with capture_logs() as logs, pytest.raises(LeaseLost) as info:
            await core.jobs.transition(job.id, target, lease_token="not-the-token", events=[
                EventSpec(EventType.STAGE_COMPLETED, stage="x")])
        assert info.value.code == "lease_lost"
        [line] = denials(logs)
        assert line["reason"] == "lease_lost" and line["to_status"] == target.value
    assert await job_row(core, job.id) == before
    assert await event_rows(core, job.id) == events_before
    assert [r["reason"] for r in await ledger_rows(core, job.id)] == ["charge"]


async def test_caller_events_are_written_with_the_transition_and_not_without_it(core: Any) -> None:
    project = await make_project(core, credits=10)
    job = await in_state(core, project, Status.RUNNING)
    extra = [EventSpec(EventType.STAGE_COMPLETED, stage="render", latency_ms=12)]
    await core.jobs.transition(job.id, Status.COMPLETED, lease_token=job.lease_token, events=extra)
    types = [e["type"] for e in await event_rows(core, job.id)]
    assert types == ["queued", "started", "stage_completed", "completed"]
    with pytest.raises(InvalidTransition):
        await core.jobs.transition(job.id, Status.FAILED, events=extra)
    assert [e["type"] for e in await event_rows(core, job.id)] == types


async def test_requeue_of_a_current_lease_is_refused(core: Any) -> None:
    """The rescue of an expired lease (lease_expired_before) must not touch a live lease."""
    project = await make_project(core, credits=10)
    job = await in_state(core, project, Status.RUNNING)
    before = await job_row(core, job.id)
    with pytest.raises(InvalidTransition):
        await core.jobs.transition(job.id, Status.QUEUED, lease_expired_before=before["lease_expires_at"] - 1)
    assert await job_row(core, job.id) == before


async def test_missing_job_and_foreign_project_are_not_found(core: Any) -> None:
    from genloom.errors import NotFound

    project = await make_project(core, credits=10)
    other = await make_project(core)
    job = await in_state(core, project, Status.QUEUED)
    with pytest.raises(NotFound):
        await core.jobs.transition("nope", Status.CANCELLED)
    with pytest.raises(NotFound):
        await core.jobs.transition(job.id, Status.CANCELLED, project_id=other.id)
    assert (await job_row(core, job.id))["status"] == "queued"


async def test_cancel_of_a_terminal_job_is_refused_and_logged(core: Any) -> None:
    project = await make_project(core, credits=10)
    job = await in_state(core, project, Status.COMPLETED)
    before = await job_row(core, job.id)
    events_before = await event_rows(core, job.id)
    with capture_logs() as logs, pytest.raises(InvalidTransition):
        await core.jobs.cancel(job.id, request_id="req-c")
    assert await job_row(core, job.id) == before
    assert await event_rows(core, job.id) == events_before
    [line] = denials(logs)
    assert (line["from_status"], line["to_status"]) == ("completed", "cancelled")


async def test_cancel_of_a_running_job_is_a_request_until_the_worker_stops(core: Any) -> None:
    project = await make_project(core, credits=10)
    job = await in_state(core, project, Status.RUNNING)
    flagged = await core.jobs.cancel(job.id)
    assert flagged.status == Status.RUNNING and flagged.cancel_requested
    again = await core.jobs.cancel(job.id)  # a repeat changes nothing
    assert again.cancel_requested
    assert [e["type"] for e in await event_rows(core, job.id)] == ["queued", "started", "cancel_requested"]
    done = await core.queue.complete(job, result_key="discarded")
    assert done.status == Status.CANCELLED and done.result_key is None
    assert [e["type"] for e in await event_rows(core, job.id)][-1] == "cancelled"


RACES = 25


async def test_racing_complete_and_cancel_exactly_one_wins(core: Any) -> None:
    project = await make_project(core, credits=RACES)
    outcomes = set()
    for _ in range(RACES):
        job = await in_state(core, project, Status.RUNNING)
        results = await asyncio.gather(
            core.jobs.transition(job.id, Status.COMPLETED, lease_token=job.lease_token),
            core.jobs.transition(job.id, Status.CANCELLED),
            return_exceptions=True,
        )
        wins = [r for r in results if not isinstance(r, BaseException)]
        losses = [r for r in results if isinstance(r, BaseException)]
        assert len(wins) == 1 and len(losses) == 1, results
        assert type(losses[0]) in (InvalidTransition, LeaseLost)
        winner = wins[0].status
        outcomes.add(winner)
        row = await job_row(core, job.id)
        assert row["status"] == winner.value
        terminal = [e["type"] for e in await event_rows(core, job.id) if e["type"] in {"completed", "cancelled"}]
        assert terminal == [winner.value]
        refunds = [r for r in await ledger_rows(core, job.id) if r["reason"] == "refund"]
        assert len(refunds) == (1 if winner == Status.CANCELLED else 0)
    assert outcomes <= {Status.COMPLETED, Status.CANCELLED}


async def test_racing_workers_on_one_job_exactly_one_wins(core: Any) -> None:
    """fail, complete and requeue racing from running: one commits, the others are refused."""
    project = await make_project(core, credits=RACES)
    for _ in range(RACES):
        job = await in_state(core, project, Status.RUNNING)
        results = await asyncio.gather(
            core.jobs.transition(job.id, Status.FAILED, lease_token=job.lease_token),
            core.jobs.transition(job.id, Status.COMPLETED, lease_token=job.lease_token),
            core.jobs.transition(job.id, Status.QUEUED, lease_token=job.lease_token),
            core.jobs.transition(job.id, Status.EXPIRED),
            return_exceptions=True,
        )
        wins = [r for r in results if not isinstance(r, BaseException)]
        assert len(wins) == 1, results
        assert all(isinstance(r, InvalidTransition) for r in results if isinstance(r, BaseException))
        types = [e["type"] for e in await event_rows(core, job.id)]
        assert types == ["queued", "started", STATUS_EVENT[wins[0].status].value]  # type: ignore[union-attr]
        if wins[0].status == Status.QUEUED:  # clear the way for the next claim
            await core.jobs.transition(job.id, Status.CANCELLED)

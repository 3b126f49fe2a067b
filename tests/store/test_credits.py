"""The credit ledger: exact under concurrency, refunds exactly once, admin retry charges again."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from genloom import credits
from genloom.errors import InsufficientCredits, InvalidTransition
from genloom.jobs import JobSpec
from genloom.lifecycle import Status
from genloom.runtime import open_core
from genloom.store.unit import unit
from tests.store.helpers import (
    claim_exactly,
    count_jobs,
    event_rows,
    in_state,
    job_row,
    ledger_rows,
    make_project,
    permanent,
    run_procs,
)
from tests.support import TestCatalog

pytestmark = pytest.mark.anyio


def summary(rows: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    return [(r["reason"], r["round"], r["amount"]) for r in rows]


async def assert_books_balance(core: Any, project_id: str, user: str = "") -> int:
    balance = await core.credits.balance(project_id, user)
    assert await core.credits.ledger_sum(project_id, user) == balance
    assert balance >= 0
    return balance


def split(results: list[Any]) -> tuple[list[Any], list[BaseException], list[BaseException]]:
    ok = [r for r in results if isinstance(r, tuple)]
    broke = [r for r in results if isinstance(r, InsufficientCredits)]
    other = [r for r in results if isinstance(r, BaseException) and not isinstance(r, InsufficientCredits)]
    return ok, broke, other


async def test_grant_and_balance(core: Any) -> None:
    project = await make_project(core)
    assert await core.credits.balance(project.id, "u1") == 0
    assert await core.credits.grant(project.id, "u1", 7) == 7
    assert await core.credits.grant(project.id, "u1", 3) == 10
    assert await core.credits.balance(project.id, "u2") == 0
    assert await assert_books_balance(core, project.id, "u1") == 10


async def test_a_job_costs_its_price_and_nothing_without_credits(core: Any) -> None:
    project = await make_project(core, credits=10)
    job, _ = await core.jobs.create(project, JobSpec(type="motion", input={}))
    assert job.charged and job.cost == 10
    assert summary(await ledger_rows(core, job.id)) == [("charge", 0, -10)]
    with pytest.raises(InsufficientCredits) as info:
        await core.jobs.create(project, JobSpec(type="noop", input={}))
    assert info.value.code == "insufficient_credits" and info.value.status == 402
    assert await count_jobs(core) == 1
    assert await assert_books_balance(core, project.id) == 0


async def test_hundred_concurrent_creates_against_ten_credits(core: Any) -> None:
    project = await make_project(core, credits=10)
    results = await asyncio.gather(
        *(core.jobs.create(project, JobSpec(type="noop", input={"i": i})) for i in range(100)),
        return_exceptions=True,
    )
    ok, broke, other = split(results)
    assert other == []
    assert (len(ok), len(broke)) == (10, 90)
    assert await count_jobs(core) == 10
    assert await assert_books_balance(core, project.id) == 0
    assert len([r for r in await ledger_rows(core) if r["reason"] == "charge"]) == 10


async def test_creates_arriving_together_are_charged_each_on_its_own_balance(core: Any) -> None:
    """Creates that arrive together (one commit on SQLite): each accepted job has its charge and
    its ``queued`` event, each refused one left nothing, and one user's empty balance never
    refuses another user's job."""
    project = await make_project(core, credits=2, user="a")
    await core.credits.grant(project.id, "b", 1)
    users = ["a", "b", "a", "b", "a", "c"]
    results = await asyncio.gather(
        *(core.jobs.create(project, JobSpec(type="noop", input={"i": i}, user=u)) for i, u in enumerate(users)),
        return_exceptions=True,
    )
    ok, broke, other = split(results)
    assert other == []
    assert sorted(u for u, r in zip(users, results, strict=True) if isinstance(r, tuple)) == ["a", "a", "b"]
    assert len(broke) == 3
    for job, _ in ok:
        assert summary(await ledger_rows(core, job.id)) == [("charge", 0, -1)]
        assert [e["type"] for e in await event_rows(core, job.id)] == ["queued"]
        assert (await job_row(core, job.id))["status"] == "queued"
    assert await count_jobs(core) == 3
    assert len(await event_rows(core)) == 3
    for user in ("a", "b", "c"):
        assert await assert_books_balance(core, project.id, user) == 0


async def test_concurrent_creates_from_several_cores(core: Any, settings: Any) -> None:
    """Separate engines (separate pools; on SQLite separate write locks) against one account."""
    project = await make_project(core, credits=10)
    cores = [await open_core(settings, TestCatalog()) for _ in range(4)]
    try:
        results = await asyncio.gather(
            *(c.jobs.create(project, JobSpec(type="noop", input={})) for c in cores for _ in range(25)),
            return_exceptions=True,
        )
    finally:
        for c in cores:
            await c.close()
    ok, broke, other = split(results)
    assert other == []
    assert (len(ok), len(broke)) == (10, 90)
    assert await count_jobs(core) == 10
    assert await assert_books_balance(core, project.id) == 0


@pytest.mark.postgresql_only  # several writer processes are the PostgreSQL deployment; SQLite: the test above
async def test_concurrent_creates_from_several_processes(core: Any, db_url: str) -> None:
    project = await make_project(core, credits=10)
    results = await run_procs([["create", db_url, project.id, str(n)] for n in (34, 33, 33)])
    assert [r["other"] for r in results] == [[], [], []]
    created = [j for r in results for j in r["created"]]
    assert len(created) == len(set(created)) == 10
    assert sum(r["insufficient"] for r in results) == 90
    assert await count_jobs(core) == 10
    assert await assert_books_balance(core, project.id) == 0


async def test_failure_refunds_exactly_once(core: Any) -> None:
    project = await make_project(core, credits=5)
    job = await in_state(core, project, Status.QUEUED)
    running = await claim_exactly(core, job.id)
    assert await core.credits.balance(project.id, "") == 4
    failed = await core.queue.fail(running, permanent(), "it broke")
    assert failed.status == Status.FAILED and not failed.charged
    assert summary(await ledger_rows(core, job.id)) == [("charge", 0, -1), ("refund", 0, 1)]
    with pytest.raises(InvalidTransition):
        await core.queue.fail(running, permanent(), "again")
    with pytest.raises(InvalidTransition):
        await core.jobs.transition(job.id, Status.FAILED)
    assert summary(await ledger_rows(core, job.id)) == [("charge", 0, -1), ("refund", 0, 1)]
    assert await assert_books_balance(core, project.id) == 5


async def test_concurrent_failures_refund_once(core: Any) -> None:
    project = await make_project(core, credits=5)
    job = await in_state(core, project, Status.RUNNING)
    results = await asyncio.gather(
        *(core.jobs.transition(job.id, Status.FAILED) for _ in range(10)), return_exceptions=True
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert summary(await ledger_rows(core, job.id)) == [("charge", 0, -1), ("refund", 0, 1)]
    assert await assert_books_balance(core, project.id) == 5


async def test_cancel_refunds(core: Any) -> None:
    project = await make_project(core, credits=5)
    queued = await in_state(core, project, Status.QUEUED)
    cancelled = await core.jobs.cancel(queued.id)
    assert cancelled.status == Status.CANCELLED and not cancelled.charged
    pending = await in_state(core, project, Status.PENDING)
    await core.jobs.cancel(pending.id)
    running = await in_state(core, project, Status.RUNNING)
    await core.jobs.cancel(running.id)  # flagged, not refunded yet
    assert summary(await ledger_rows(core, running.id)) == [("charge", 0, -1)]
    acknowledged = await core.queue.cancelled(running)
    assert acknowledged.status == Status.CANCELLED
    for j in (queued, pending, running):
        rows = await ledger_rows(core, j.id)
        assert summary(rows) == [("charge", 0, -1), ("refund", 0, 1)]
        assert rows[1]["note"] == "cancelled"
    with pytest.raises(InvalidTransition):
        await core.jobs.cancel(queued.id)
    assert await assert_books_balance(core, project.id) == 5


async def test_expiry_refunds(core: Any) -> None:
    project = await make_project(core, credits=5)
    job = await in_state(core, project, Status.EXPIRED)
    rows = await ledger_rows(core, job.id)
    assert summary(rows) == [("charge", 0, -1), ("refund", 0, 1)]
    assert rows[1]["note"] == "expired"
    assert await assert_books_balance(core, project.id) == 5


async def test_completion_keeps_the_charge(core: Any) -> None:
    project = await make_project(core, credits=5)
    job = await in_state(core, project, Status.COMPLETED)
    assert summary(await ledger_rows(core, job.id)) == [("charge", 0, -1)]
    assert (await job_row(core, job.id))["charged"]
    assert await assert_books_balance(core, project.id) == 4


async def test_admin_retry_charges_a_new_round_and_refunds_it_again(core: Any) -> None:
    project = await make_project(core, credits=3)
    job = await in_state(core, project, Status.RUNNING)
    await core.queue.fail(job, permanent(), "first")
    retried = await core.jobs.admin_retry(job.id)
    assert (retried.status, retried.round, retried.attempt, retried.charged) == (Status.QUEUED, 1, 0, True)
    assert retried.error_code is None and retried.error_message is None
    assert await core.credits.balance(project.id, "") == 2
    again = await claim_exactly(core, job.id)
    assert again.attempt == 1
    await core.queue.fail(again, permanent(), "second")
    assert summary(await ledger_rows(core, job.id)) == [
        ("charge", 0, -1), ("refund", 0, 1), ("charge", 1, -1), ("refund", 1, 1)
    ]
    assert await assert_books_balance(core, project.id) == 3


async def test_admin_retry_of_an_expired_job_then_completion_keeps_the_new_charge(core: Any) -> None:
    project = await make_project(core, credits=3)
    job = await in_state(core, project, Status.EXPIRED)
    await core.jobs.admin_retry(job.id)
    running = await claim_exactly(core, job.id)
    await core.queue.complete(running)
    assert summary(await ledger_rows(core, job.id)) == [("charge", 0, -1), ("refund", 0, 1), ("charge", 1, -1)]
    assert await assert_books_balance(core, project.id) == 2


async def test_admin_retry_without_credits_changes_nothing(core: Any) -> None:
    project = await make_project(core, credits=1)
    job = await in_state(core, project, Status.FAILED)
    await core.jobs.create(project, JobSpec(type="noop", input={}))  # spends the refunded credit
    before = await job_row(core, job.id)
    with pytest.raises(InsufficientCredits):
        await core.jobs.admin_retry(job.id)
    assert await job_row(core, job.id) == before
    assert await assert_books_balance(core, project.id) == 0


async def test_admin_retry_of_a_live_or_final_job_is_refused_and_charges_nothing(core: Any) -> None:
    project = await make_project(core, credits=5)
    done = await in_state(core, project, Status.COMPLETED)
    with pytest.raises(InvalidTransition):
        await core.jobs.admin_retry(done.id)
    queued = await in_state(core, project, Status.QUEUED)
    with pytest.raises(InvalidTransition):
        await core.jobs.admin_retry(queued.id)
    for j in (done, queued):
        assert summary(await ledger_rows(core, j.id)) == [("charge", 0, -1)]
    assert await assert_books_balance(core, project.id) == 3


async def test_billing_disabled_project_writes_no_ledger_rows(core: Any) -> None:
    project = await make_project(core, billing=False)
    jobs = [await in_state(core, project, s) for s in (
        Status.COMPLETED, Status.FAILED, Status.EXPIRED, Status.CANCELLED, Status.RUNNING
    )]
    await core.jobs.admin_retry(jobs[1].id)
    await core.jobs.cancel(jobs[1].id)
    await core.queue.fail(jobs[4], permanent(), "x")
    queued = await in_state(core, project, Status.QUEUED)
    pending = await in_state(core, project, Status.PENDING)
    for j in [*jobs, queued, pending]:
        assert not (await job_row(core, j.id))["charged"]
    assert await ledger_rows(core) == []
    assert await core.credits.balance(project.id, "") == 0


async def test_accounts_are_per_user(core: Any) -> None:
    project = await make_project(core, credits=1, user="alice")
    await core.jobs.create(project, JobSpec(type="noop", input={}, user="alice"))
    with pytest.raises(InsufficientCredits):
        await core.jobs.create(project, JobSpec(type="noop", input={}, user="bob"))
    assert await assert_books_balance(core, project.id, "alice") == 0
    assert await assert_books_balance(core, project.id, "bob") == 0


async def test_charges_decided_together_take_in_order_as_the_balance_allows(core: Any) -> None:
    """``charge_many``: a charge the remaining balance cannot cover is refused and the ones after
    it still take if they fit; an account that does not exist refuses; each taken charge is one
    ledger row and the balance moves by their sum."""
    project = await make_project(core, credits=4, user="a")
    await core.credits.grant(project.id, "b", 1)
    charges = [credits.Charge(project.id, user, f"job_{i}", amount, 1) for i, (user, amount) in enumerate(
        [("a", 3), ("a", 2), ("b", 1), ("a", 1), ("nobody", 1), ("b", 1)])]
    async with unit(core.db, core.notifier) as u:
        took = await credits.charge_many(u, charges)
    assert took == [True, False, True, True, False, False]
    assert await core.credits.balance(project.id, "a") == 0
    assert await core.credits.balance(project.id, "b") == 0
    rows = [r for r in await ledger_rows(core) if r["reason"] == "charge"]
    assert sorted((r["job_id"], r["amount"]) for r in rows) == [("job_0", -3), ("job_2", -1), ("job_3", -1)]

"""Idempotent creates: one key or one content-addressed id gives one job and one charge."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from genloom.errors import IdempotencyKeyReused
from genloom.ids import content_address
from genloom.jobs import JobSpec
from genloom.lifecycle import Status
from tests.store.helpers import claim_exactly, count_jobs, ledger_rows, make_project

pytestmark = pytest.mark.anyio

N = 50


def charges(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["reason"] == "charge"]


async def concurrent_creates(core: Any, project: Any, spec: JobSpec) -> list[tuple[Any, bool]]:
    results = await asyncio.gather(*(core.jobs.create(project, spec) for _ in range(N)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    return results  # type: ignore[return-value]


async def test_concurrent_identical_creates_give_one_job_and_one_charge(core: Any) -> None:
    project = await make_project(core, credits=100)
    spec = JobSpec(type="noop", input={"prompt": "wave"}, idempotency_key="key-1")
    results = await concurrent_creates(core, project, spec)
    assert len({job.id for job, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert await count_jobs(core) == 1
    assert len(charges(await ledger_rows(core))) == 1
    assert await core.credits.balance(project.id, "") == 99


async def test_concurrent_identical_creates_with_exactly_enough_credits(core: Any) -> None:
    """A repeat of a paid request is answered with the job, not 402, however tight the balance."""
    project = await make_project(core, credits=1)
    spec = JobSpec(type="noop", input={"prompt": "wave"}, idempotency_key="key-tight")
    results = await concurrent_creates(core, project, spec)
    assert len({job.id for job, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert len(charges(await ledger_rows(core))) == 1
    assert await core.credits.balance(project.id, "") == 0


async def test_same_key_different_params_is_refused_without_charge(core: Any) -> None:
    project = await make_project(core, credits=10)
    first, created = await core.jobs.create(project, JobSpec(type="noop", input={"a": 1}, idempotency_key="k"))
    assert created
    for other in (
        JobSpec(type="noop", input={"a": 2}, idempotency_key="k"),
        JobSpec(type="motion", input={"a": 1}, idempotency_key="k"),
        JobSpec(type="noop", input={"a": 1}, idempotency_key="k", priority=5),
        JobSpec(type="noop", input={"a": 1}, idempotency_key="k", mode="fast"),
        JobSpec(type="noop", input={"a": 1}, idempotency_key="k", webhook_url="https://example.com/h"),
    ):
        with pytest.raises(IdempotencyKeyReused) as info:
            await core.jobs.create(project, other)
        assert info.value.code == "idempotency_key_reused"
        assert info.value.status == 422
        assert info.value.details["job_id"] == first.id
    assert await count_jobs(core) == 1
    assert len(charges(await ledger_rows(core))) == 1
    assert await core.credits.balance(project.id, "") == 9


async def test_key_order_of_the_input_does_not_matter(core: Any) -> None:
    project = await make_project(core, credits=10)
    a, _ = await core.jobs.create(project, JobSpec(type="noop", input={"x": 1, "y": 2}, idempotency_key="k"))
    b, created = await core.jobs.create(project, JobSpec(type="noop", input={"y": 2, "x": 1}, idempotency_key="k"))
    assert (b.id, created) == (a.id, False)


async def test_concurrent_creates_same_key_different_params(core: Any) -> None:
    project = await make_project(core, credits=100)
    specs = [JobSpec(type="noop", input={"v": i % 2}, idempotency_key="k") for i in range(20)]
    results = await asyncio.gather(*(core.jobs.create(project, s) for s in specs), return_exceptions=True)
    ok = [r for r in results if isinstance(r, tuple)]
    reused = [r for r in results if isinstance(r, IdempotencyKeyReused)]
    assert len(ok) + len(reused) == 20
    assert len({job.id for job, _ in ok}) == 1
    assert sum(created for _, created in ok) == 1
    assert len(charges(await ledger_rows(core))) == 1


async def test_repeat_of_a_terminal_job_returns_it(core: Any) -> None:
    project = await make_project(core, credits=10)
    spec = JobSpec(type="noop", input={"p": 1}, idempotency_key="done")
    job, _ = await core.jobs.create(project, spec)
    running = await claim_exactly(core, job.id)
    await core.queue.complete(running, result_key="out.mp4")
    again, created = await core.jobs.create(project, spec)
    assert not created
    assert (again.id, again.status, again.result_key) == (job.id, Status.COMPLETED, "out.mp4")
    assert len(charges(await ledger_rows(core))) == 1
    assert await count_jobs(core) == 1


async def test_repeat_of_a_failed_job_returns_it_without_a_new_charge(core: Any) -> None:
    project = await make_project(core, credits=10)
    spec = JobSpec(type="noop", input={"p": 1}, idempotency_key="bad")
    job, _ = await core.jobs.create(project, spec)
    await core.jobs.transition(job.id, Status.FAILED)
    again, created = await core.jobs.create(project, spec)
    assert (again.id, again.status, created) == (job.id, Status.FAILED, False)
    assert [r["reason"] for r in await ledger_rows(core, job.id)] == ["charge", "refund"]
    assert await core.credits.balance(project.id, "") == 10


async def test_keys_are_scoped_to_user_and_project(core: Any) -> None:
    project = await make_project(core, billing=False)
    other = await make_project(core, billing=False)
    a, _ = await core.jobs.create(project, JobSpec(type="noop", input={}, idempotency_key="k", user="alice"))
    b, created_b = await core.jobs.create(project, JobSpec(type="noop", input={}, idempotency_key="k", user="bob"))
    c, created_c = await core.jobs.create(other, JobSpec(type="noop", input={}, idempotency_key="k", user="alice"))
    assert created_b and created_c
    assert len({a.id, b.id, c.id}) == 3


async def test_no_key_means_no_dedup(core: Any) -> None:
    project = await make_project(core, billing=False)
    spec = JobSpec(type="noop", input={"same": True})
    ids = {(await core.jobs.create(project, spec))[0].id for _ in range(3)}
    assert len(ids) == 3


async def test_content_addressed_id_dedups_concurrent_creates(core: Any) -> None:
    project = await make_project(core, credits=100)
    params = {"image": "https://example.com/a.png", "prompt": "wave"}
    job_id = content_address(project.id, params)
    spec = JobSpec(type="noop", input=params, job_id=job_id)
    results = await concurrent_creates(core, project, spec)
    assert {job.id for job, _ in results} == {job_id}
    assert sum(created for _, created in results) == 1
    assert await count_jobs(core) == 1
    assert len(charges(await ledger_rows(core))) == 1
    # the same id from the same parameters in another key order is the same job
    reordered = JobSpec(type="noop", input={"prompt": "wave", "image": "https://example.com/a.png"},
                        job_id=content_address(project.id, {"prompt": "wave", "image": "https://example.com/a.png"}))
    again, created = await core.jobs.create(project, reordered)
    assert (again.id, created) == (job_id, False)


async def test_content_addressed_id_with_different_params_is_refused(core: Any) -> None:
    project = await make_project(core, credits=100)
    job_id = content_address(project.id, {"prompt": "wave"})
    await core.jobs.create(project, JobSpec(type="noop", input={"prompt": "wave"}, job_id=job_id))
    with pytest.raises(IdempotencyKeyReused):
        await core.jobs.create(project, JobSpec(type="noop", input={"prompt": "other"}, job_id=job_id))
    assert len(charges(await ledger_rows(core))) == 1

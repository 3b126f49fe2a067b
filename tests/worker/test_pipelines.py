"""Job types as pipelines: each stage's events by kind, the decorator, sync types and progress."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from genloom.app import App, open_app
from genloom.config import Settings
from genloom.lifecycle import EventType, Status
from genloom.pipelines.context import StageContext
from genloom.pipelines.registry import Registry, Stage
from tests.store.helpers import event_rows, job_row, ledger_rows, make_project
from tests.worker.conftest import default_project, eventually, running, submit, wait_status
from tests.worker.pipelines import Control

pytestmark = pytest.mark.anyio


def kinds(events: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(e["type"], e["stage"]) for e in events]


async def test_each_stage_kind_writes_its_events(app: App) -> None:
    project = await default_project(app.core)
    job = await submit(app.core, project, input={"stages": [
        {"name": "look", "kind": "vision", "ms": 5},
        {"name": "work", "ms": 20, "result": {"answer": 42}},
        {"name": "save", "kind": "storage"},
    ]})
    async with running(app):
        done = await wait_status(app.core, job.id, Status.COMPLETED)
    assert done.result is not None and done.result["answer"] == 42
    assert done.progress == 1.0 and done.lease_token is None and done.stage is None
    events = await event_rows(app.core, job.id)
    assert kinds(events) == [
        ("queued", None), ("started", None),
        ("vision_started", "look"), ("vision_completed", "look"),
        ("stage_started", "work"), ("stage_completed", "work"),
        ("storage_write_completed", "save"),
        ("completed", None),
    ]
    work = next(e for e in events if e["type"] == "stage_completed")
    assert work["latency_ms"] >= 20 and work["data"] == {"step": "work"}
    assert all(e["attempt"] == 1 for e in events[1:])


async def test_a_workdir_exists_only_for_stages_that_use_it_and_only_while_they_run(
    app: App, control: Control,
) -> None:
    project = await default_project(app.core)
    quiet = await submit(app.core, project, input={"stages": [{"name": "a"}, {"name": "b", "gate": "go"}]})
    files = await submit(app.core, project, input={"stages": [{"name": "a", "file": "out.txt"},
                                                              {"name": "b", "gate": "go"}]})
    work = app.settings.data_dir / "work"

    async def dirs() -> list[str]:
        names = [p.name for p in work.iterdir()] if work.exists() else []
        return sorted(n for n in names if n.startswith((quiet.id, files.id)))

    async def at_the_gate() -> bool:
        return all([(await job_row(app.core, j.id))["stage"] == "b" for j in (quiet, files)])

    async with running(app):
        await eventually(at_the_gate)
        assert await dirs() == [f"{files.id}-a1"]
        assert (work / f"{files.id}-a1" / "out.txt").read_text() == "a"
        control.gate("go").set()
        await wait_status(app.core, quiet.id, Status.COMPLETED)
        await wait_status(app.core, files.id, Status.COMPLETED)

        async def removed() -> bool:
            return not await dirs()

        await eventually(removed)


async def test_a_failing_stage_of_each_kind_writes_its_failure(app: App) -> None:
    project = await default_project(app.core)
    jobs = {kind: await submit(app.core, project, input={"stages": [
        {"name": "first"}, {"name": "bad", "kind": kind, "fail": "permanent", "code": f"no_{kind}"},
        {"name": "never"},
    ]}) for kind in ("stage", "vision", "storage")}
    async with running(app):
        for kind, job in jobs.items():
            failed = await wait_status(app.core, job.id, Status.FAILED)
            assert failed.error_code == f"no_{kind}"
    expected = {"stage": "stage_failed", "vision": "vision_failed", "storage": "stage_failed"}
    for kind, job in jobs.items():
        events = kinds(await event_rows(app.core, job.id))
        assert (expected[kind], "bad") in events
        assert events[-1] == ("failed", None)
        assert not any(stage == "never" for _, stage in events)


async def test_a_type_registered_with_the_decorator_runs(fast_settings: Settings) -> None:
    registry = Registry()
    seen: list[dict[str, Any]] = []

    async def shout(ctx: StageContext) -> None:
        seen.append(ctx.input)
        ctx.result = {"text": ctx.input["text"].upper(), "mode": ctx.mode}

    @registry.job_type("shout", modes=("loud", "quiet"), price=2)
    def shout_plan(mode: str | None, input: dict[str, Any]) -> list[Stage]:
        return [Stage("shout", shout)]

    assert registry.names() == ["shout"] and registry.cost("shout", None) == 2
    app = await open_app(fast_settings, registry, migrate=False)
    try:
        project = await make_project(app.core, credits=5)
        job = await submit(app.core, project, "shout", input={"text": "hi"}, mode="loud")
        assert job.cost == 2 and job.charged
        async with running(app):
            done = await wait_status(app.core, job.id, Status.COMPLETED)
        assert done.result == {"text": "HI", "mode": "loud"} and seen == [{"text": "hi"}]
        assert [r["amount"] for r in await ledger_rows(app.core, job.id)] == [-2]
    finally:
        await app.close()


async def test_a_sync_type_goes_from_pending_to_running_without_the_queue(app: App) -> None:
    project = await default_project(app.core)
    job = await submit(app.core, project, "sync_script", input={"stages": [{"name": "now", "result": {"ok": 1}}]})
    assert job.status == Status.PENDING
    async with running(app):
        done = await wait_status(app.core, job.id, Status.COMPLETED)
    assert done.result is not None and done.result["ok"] == 1
    events = kinds(await event_rows(app.core, job.id))
    assert events == [("started", None), ("stage_started", "now"), ("stage_completed", "now"), ("completed", None)]
    assert EventType.QUEUED.value not in {t for t, _ in events}
    row = await job_row(app.core, job.id)
    assert row["queued_at"] is None and row["started_at"] is not None


async def test_progress_and_the_stage_are_written_while_a_stage_runs(app: App, control: Control) -> None:
    project = await default_project(app.core)
    job = await submit(app.core, project, input={"stages": [
        {"name": "half", "progress": 0.5}, {"name": "wait", "gate": "go"}]})
    async with running(app):
        async def halfway() -> bool:
            row = await job_row(app.core, job.id)
            return bool(row["progress"] == 0.5 and row["stage"] == "wait")

        await eventually(halfway, within=5)
        control.gate("go").set()
        done = await wait_status(app.core, job.id, Status.COMPLETED)
    assert done.progress == 1.0


async def test_a_stopping_worker_hands_back_what_outlasts_the_grace(app: App, control: Control) -> None:
    project = await default_project(app.core)
    job = await submit(app.core, project, input={"stages": [{"name": "wait", "gate": "never"}]})
    async with running(app):
        await eventually(lambda: _stage_is(app, job.id, "wait"), within=5)
    row = await job_row(app.core, job.id)
    assert row["status"] == "queued" and row["attempt"] == 0 and row["lease_token"] is None
    assert row["run_after"] <= row["updated_at"]


async def _stage_is(app: App, job_id: str, stage: str) -> bool:
    return bool((await job_row(app.core, job_id))["stage"] == stage)


async def test_an_unknown_type_fails_the_job_at_once(app: App) -> None:
    registry_with_ghost = Registry()
    registry_with_ghost.job_type("ghost")(lambda mode, input: [])
    other = await open_app(app.settings, registry_with_ghost, migrate=False)
    try:
        job = await submit(other.core, await default_project(other.core), "ghost")
    finally:
        await other.close()
    async with running(app):
        failed = await wait_status(app.core, job.id, Status.FAILED)
    assert failed.error_code == "unknown_type" and failed.attempt == 1


async def test_no_task_outlives_its_job(app: App) -> None:
    """Each job's watcher ends with it, even when the job's own last event has just woken it."""
    project = await default_project(app.core)
    jobs = [await submit(app.core, project, input={"stages": [{"name": "s"}] * (i % 2)}) for i in range(20)]
    async with running(app):
        for job in jobs:
            await wait_status(app.core, job.id, Status.COMPLETED)
    await asyncio.sleep(0.05)
    left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    assert [t.get_coro() for t in left if "Worker" in repr(t.get_coro()) or "Event.wait" in repr(t.get_coro())] == []

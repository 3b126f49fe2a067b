"""Worker processes for multi-process store tests: ``python -m tests.store.procs <command> <url> …``.

Each opens its own runtime.Core (own engine, own pool), prints ``ready``, waits for ``go`` on
stdin so that all processes start together, does its work and prints ``RESULT <json>``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from genloom.config import Settings
from genloom.errors import InsufficientCredits, LeaseLost
from genloom.jobs import JobSpec
from genloom.lifecycle import EventType
from genloom.models import EventSpec
from genloom.observability import configure_logging
from genloom.runtime import Core, open_core
from tests.support import TestCatalog


async def create(core: Core, project_id: str, n: str) -> dict[str, Any]:
    """``n`` concurrent creates of a cost-1 job (no idempotency key)."""
    project = await core.projects.get(project_id)
    results = await asyncio.gather(
        *(core.jobs.create(project, JobSpec(type="noop", input={})) for _ in range(int(n))),
        return_exceptions=True,
    )
    created = [r[0].id for r in results if isinstance(r, tuple)]
    insufficient = sum(isinstance(r, InsufficientCredits) for r in results)
    other = [repr(r) for r in results if isinstance(r, BaseException) and not isinstance(r, InsufficientCredits)]
    return {"created": created, "insufficient": insufficient, "other": other}


async def work(core: Core, worker_id: str, batch: str) -> dict[str, Any]:
    """Claim in batches and complete each batch until the queue stays empty."""
    claimed: list[str] = []
    completed: list[str] = []
    batches: list[int] = []
    empty = 0
    while empty < 3:
        jobs = await core.queue.claim(worker_id, limit=int(batch))
        if not jobs:
            empty += 1
            await asyncio.sleep(0.02)
            continue
        empty = 0
        batches.append(len(jobs))
        claimed += [j.id for j in jobs]
        completed += [j.id for j in await core.queue.complete_many(jobs)]
    return {"claimed": claimed, "completed": completed, "batches": batches}


async def touch(core: Core, rounds: str, *job_ids: str) -> dict[str, Any]:
    """``rounds`` fenced writes with two events each, for every job, interleaved across jobs."""
    written = 0
    jobs = [await core.jobs.get(j) for j in job_ids]
    for r in range(int(rounds)):
        for job in jobs:
            try:
                await core.queue.touch(job, values={"stage": f"s{r}"}, events=[
                    EventSpec(EventType.STAGE_STARTED, stage=f"s{r}"),
                    EventSpec(EventType.STAGE_COMPLETED, stage=f"s{r}", latency_ms=r),
                ])
                written += 2
            except LeaseLost:
                pass
    return {"written": written}


COMMANDS = {"create": create, "work": work, "touch": touch}


async def main(argv: list[str]) -> None:
    command, url, *args = argv
    configure_logging(level="warning")
    settings = Settings(database_url=url, data_dir=Path(tempfile.gettempdir()), _env_file=None)  # type: ignore[call-arg]
    core = await open_core(settings, TestCatalog())
    try:
        print("ready", flush=True)
        sys.stdin.readline()
        result = await COMMANDS[command](core, *args)
    finally:
        await core.close()
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))

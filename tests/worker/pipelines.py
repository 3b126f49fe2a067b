"""Job types for worker tests whose stages sleep, fail, render or wait as their input says.

The input drives everything, so the same types behave alike in this process and in a worker
subprocess (tests/worker/runner.py); ``Control`` adds what only this process can do (gates a
stage waits on, a record of what ran).

    script          queued   {"stages": [Step, …]}
    sync_script     sync     the same, without the queue
    replicate_wait  queued   submit to the "replicate" provider, poll until it ends (checkpointing)
    replicate_park  async    submit to the "replicate" provider, then park ({"deadline": s | null})

The provider types also read fail_after_submit (+ fail_attempts) and gate_before_park.

A Step is a dict: name, kind ("stage" | "vision" | "storage"), ms (an asyncio sleep, checkpointed
every 10 ms), first_ms (more sleep on the first attempt only), render (seconds of blocking work off
the loop that polls should_stop), gate (wait for ``Control.gate(name)``), fail ("transient" |
"permanent", while attempt <= fail_attempts when given; code), probe (write an event carrying this
process's pid), progress (reported at the end), result (merged into the job's result), deaf (the
gate and sleep do not checkpoint: only the worker's checkpoints between stages can stop it), file
(write this file in the attempt's workdir; its path goes in the result as ``file``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from genloom.errors import PermanentError, TransientError
from genloom.lifecycle import EventType
from genloom.models import EventSpec
from genloom.pipelines.context import StageContext
from genloom.pipelines.registry import Registry, Stage, StageFn

MODEL = "stand-in/model"


@dataclass
class Control:
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    ran: list[tuple[str, str, int]] = field(default_factory=list)  # (job id, stage, attempt)
    renders_stopped: list[str] = field(default_factory=list)

    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())


def _render(seconds: float, should_stop: Callable[[], bool], stopped: Callable[[], None]) -> None:
    """Blocking 'frames' for ``seconds``, polling should_stop between them like the renderer."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if should_stop():
            stopped()
            raise InterruptedError("The render was stopped.")
        time.sleep(0.005)


def step(spec: dict[str, Any], control: Control | None) -> StageFn:
    name = str(spec.get("name", "s"))

    async def run(ctx: StageContext) -> None:
        if control is not None:
            control.ran.append((ctx.job.id, name, ctx.job.attempt))
        if spec.get("gate"):
            assert control is not None, "gates work in-process only"
            gate = control.gate(str(spec["gate"]))
            while not gate.is_set():
                if not spec.get("deaf"):
                    await ctx.checkpoint()
                await asyncio.sleep(0.01)
        ms = float(spec.get("ms", 0)) + (float(spec.get("first_ms", 0)) if ctx.job.attempt == 1 else 0.0)
        end = time.monotonic() + ms / 1000
        while (left := end - time.monotonic()) > 0:
            if not spec.get("deaf"):
                await ctx.checkpoint()
            await asyncio.sleep(min(left, 0.01))
        if spec.get("render"):
            def stopped() -> None:
                if control is not None:
                    control.renders_stopped.append(ctx.job.id)

            await ctx.run_blocking(_render, float(spec["render"]), ctx.should_stop, stopped)
        if spec.get("progress") is not None:
            ctx.progress(float(spec["progress"]))
        if spec.get("file"):
            path = ctx.workdir / str(spec["file"])
            path.write_text(name)
            ctx.result["file"] = str(path)
        if spec.get("probe"):
            await ctx.emit(EventSpec(EventType.STAGE_COMPLETED, stage=f"{name}-probe", data={"pid": os.getpid()}))
        failing = spec.get("fail")
        if failing and ctx.job.attempt <= int(spec.get("fail_attempts", 1_000)):
            if failing == "transient":
                raise TransientError(f"{name} failed for now", code="flaky")
            raise PermanentError(f"{name} failed for good", code=str(spec.get("code", "bad_thing")))
        ctx.result |= dict(spec.get("result", {})) | {"last": name, "pid": os.getpid()}
        ctx.artefacts["_event_data"] = {"step": name}

    return run


def script_plan(control: Control | None) -> Callable[[str | None, dict[str, Any]], list[Stage]]:
    def plan(mode: str | None, input: dict[str, Any]) -> list[Stage]:
        return [Stage(str(s.get("name", f"s{i}")), step(s, control), kind=s.get("kind", "stage"))
                for i, s in enumerate(input.get("stages", []))]

    return plan


async def replicate_wait(ctx: StageContext) -> None:
    """Submit, then poll the prediction until it ends; checkpoints between polls."""
    pred = await ctx.submit("replicate", MODEL, {"prompt": ctx.input.get("prompt", "x")})
    if ctx.input.get("fail_after_submit") and ctx.job.attempt <= int(ctx.input.get("fail_attempts", 1_000)):
        raise TransientError("lost the connection after submitting", code="flaky")
    provider = ctx.services.predictions["replicate"]
    while not pred.terminal:
        await ctx.checkpoint()
        await asyncio.sleep(0.02)
        pred = await provider.get(pred.id)
    if pred.status != "succeeded":
        raise PermanentError(pred.error or "prediction failed", code="provider_failed")
    ctx.result = {"output": pred.output, "prediction": pred.id}


def replicate_park(control: Control | None) -> StageFn:
    async def run(ctx: StageContext) -> None:
        await ctx.submit("replicate", MODEL, {"prompt": ctx.input.get("prompt", "x")})
        if ctx.input.get("gate_before_park"):
            assert control is not None, "gates work in-process only"
            await control.gate(str(ctx.input["gate_before_park"])).wait()
        deadline = ctx.input.get("deadline")
        await ctx.park(None if deadline is None else float(deadline))

    return run


def make_registry(control: Control | None = None) -> Registry:
    reg = Registry()
    plan = script_plan(control)
    reg.job_type("script", price=1)(plan)
    reg.job_type("sync_script", run="sync", price=1)(plan)
    reg.job_type("replicate_wait", price=3)(lambda mode, input: [Stage("predict", replicate_wait)])
    park = replicate_park(control)
    reg.job_type("replicate_park", run="async", price=3)(lambda mode, input: [Stage("submit", park)])
    return reg

"""``genloom demo``: the embedded default end to end, in one process, with no server to start.

Opens the SQLite store and local storage in the data dir, runs the worker in-process, submits a
motion job for the photo the package ships, shows live progress per stage, and prints the mp4's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Annotated

import av
import typer

from genloom.app import open_app
from genloom.cli.output import EXIT_JOB_ENDED, StageProgress, console, err
from genloom.cli.settings import load
from genloom.config import Settings
from genloom.jobs import JobSpec
from genloom.observability import configure_logging


def demo(
    mode: Annotated[str, typer.Option(help="single or loop")] = "loop",
    motion: Annotated[str, typer.Option(help="auto or a named camera move")] = "auto",
    dur: Annotated[float, typer.Option(help="Seconds of video.")] = 4.0,
    aspect: Annotated[str, typer.Option(help="9:16, 16:9, 1:1 or 4:5")] = "9:16",
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Where the SQLite file and outputs go.")] = None,
) -> None:
    """Render a motion clip from the bundled photo on the embedded default and print its path."""
    settings = load(data_dir=data_dir)
    configure_logging("warning", settings.log_json)
    path = asyncio.run(_demo(settings, mode, motion, dur, aspect))
    if path is None:
        raise typer.Exit(EXIT_JOB_ENDED)
    with av.open(str(path)) as box:
        stream = box.streams.video[0]
        seconds = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0
        console.print(f"[green]rendered[/] {stream.codec_context.name} {stream.width}x{stream.height}, "
                      f"{stream.frames} frames, {seconds:.1f} s")
    typer.echo(str(path.resolve()))  # plain: a script takes the last line as the path


async def _demo(settings: Settings, mode: str, motion: str, dur: float, aspect: str) -> Path | None:
    app = await open_app(settings)
    stop = asyncio.Event()
    try:
        app.start_background(stop)
        project = await app.core.projects.ensure_default(billing=settings.default_project_billing)
        spec = JobSpec(type="motion", mode=mode, input={"src": "sample", "motion": motion, "dur": dur,
                                                        "aspect": aspect, "seed": int(time.time())})
        job, _ = await app.core.jobs.create(project, spec)
        err.print(f"job {job.id}: motion/{mode} from the bundled photo (data in {settings.data_dir})")
        cursor = 0
        woken = asyncio.Event()
        unsubscribe = app.core.notifier.subscribe(job.id, lambda _id: woken.set())
        with StageProgress() as bars:
            while True:
                woken.clear()
                for event in await app.core.events.after(job.id, cursor):
                    cursor = event.id
                    bars.event(event.type.value, {"stage": event.stage, "latency_ms": event.latency_ms,
                                                  "error_code": event.error_code, "attempt": event.attempt})
                job = await app.core.jobs.get(job.id)
                bars.job_progress(job.progress)
                if job.terminal:
                    break
                with contextlib.suppress(TimeoutError):  # progress is written about once a second
                    await asyncio.wait_for(woken.wait(), 0.5)
        unsubscribe()
        if job.status.value != "completed" or job.result_key is None:
            err.print(f"[red]{job.status.value}[/]: {job.error_message or job.error_code}")
            return None
        local = app.services.storage.local_path(job.result_key)
        return Path(local) if local is not None else None
    finally:
        stop.set()
        await app.wait_background()
        await app.close()

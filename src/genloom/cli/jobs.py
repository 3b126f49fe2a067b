"""Commands that talk to a running server over HTTP: submit and the ``jobs`` group."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from genloom.cli.output import (
    EXIT_INTERRUPTED,
    EXIT_JOB_ENDED,
    EXIT_TIMEOUT,
    StageProgress,
    console,
    emit_json,
    err,
    fail,
    job_panel,
    jobs_table,
)
from genloom.client import ApiError, Client

UrlOpt = Annotated[str, typer.Option("--url", envvar="GENLOOM_URL", help="The server's base URL.")]
KeyOpt = Annotated[str | None, typer.Option("--key", envvar="GENLOOM_API_KEY", help="A secret key (sk_…).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
DEFAULT_URL = "http://127.0.0.1:8080"

jobs_app = typer.Typer(help="List, inspect, watch, cancel and retry jobs on a running server.", no_args_is_help=True)


@contextmanager
def client(url: str, key: str | None) -> Iterator[Client]:
    """A client whose failures become one line with a hint and a documented exit code."""
    try:
        with Client(url, key) as c:
            yield c
    except ApiError as exc:
        hints = {"unauthorized": "pass --key sk_… or set GENLOOM_API_KEY",
                 "not_found": "check the id with `genloom jobs ls`",
                 "insufficient_credits": "grant some: `genloom credits grant PROJECT AMOUNT`",
                 "invalid_transition": "see the job's state with `genloom jobs show ID`"}
        fail(f"{exc.message} ({exc.code}, HTTP {exc.status})", hints.get(exc.code, ""),
             code=2 if exc.status < 500 else 3)
    except httpx.TransportError as exc:
        fail(f"cannot reach {url}: {exc}", "start one with `genloom serve`, or pass --url")


def follow(c: Client, job: dict[str, Any], *, quiet: bool = False) -> dict[str, Any]:
    """Watch the job's events with a progress bar per stage until it ends; Ctrl-C offers to cancel."""
    try:
        with StageProgress() as bars:
            for event in c.events(job["id"]):
                bars.event(event.type, event.data)
                if event.type.endswith("_completed"):
                    bars.job_progress(float(c.get(job["id"]).get("progress") or 0.0))
        return c.get(job["id"])
    except KeyboardInterrupt:
        if typer.confirm(f"\nCancel job {job['id']}?", default=False, err=True):
            c.cancel(job["id"])
            err.print(f"cancel requested for {job['id']}")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def finish(job: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(job)
    elif job["status"] == "completed":
        console.print(f"[green]completed[/] {job['id']}")
        if job.get("result_path"):
            typer.echo(job["result_path"])
        elif job.get("result_url"):
            typer.echo(job["result_url"])
        elif job.get("result"):
            emit_json(job["result"])
    else:
        err.print(f"[red]{job['status']}[/] {job['id']}: {job.get('error_message') or job.get('error_code')}")
    if job["status"] != "completed" and job.get("terminal"):
        raise typer.Exit(EXIT_JOB_ENDED)


def submit(
    source: Annotated[str, typer.Argument(help="A local image file, an http(s) URL, or 'sample'.")],
    motion: Annotated[str, typer.Option(help="auto, zoom-in, zoom-out, pan-left, pan-right, pan-up, "
                                             "pan-down, ken-burns")] = "auto",
    mode: Annotated[str, typer.Option(help="single or loop")] = "single",
    dur: Annotated[float, typer.Option(help="Seconds of video.")] = 4.0,
    aspect: Annotated[str, typer.Option(help="9:16, 16:9, 1:1 or 4:5")] = "9:16",
    prompt: Annotated[str, typer.Option(help="A motion prompt (kept with the asset).")] = "",
    seed: int = 0,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job live until it ends.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 600.0,
    url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, as_json: JsonOpt = False,
) -> None:
    """Submit a motion job for an image (uploaded if it is a local file)."""
    with client(url, key) as c:
        src = source
        if not source.startswith(("http://", "https://")) and source != "sample":
            path = Path(source)
            if not path.is_file():
                fail(f"no such file: {source}", "pass an image file, an http(s) URL or 'sample'", code=2)
            src = c.upload(path)
        job = c.submit("motion", {"src": src, "motion": motion, "dur": dur, "aspect": aspect, "prompt": prompt,
                                  "seed": seed}, mode=mode)
        if not wait:
            emit_json(job) if as_json else console.print(f"submitted {job['id']} ({job['status']})")
            return
        if not as_json:
            err.print(f"submitted {job['id']}")
            job = follow(c, job)
        else:
            try:
                job = c.wait(job["id"], timeout=timeout)
            except Exception:
                job = c.get(job["id"])
            if not job["terminal"]:
                emit_json(job)
                raise typer.Exit(EXIT_TIMEOUT)
        finish(job, as_json)


@jobs_app.command("ls")
def jobs_ls(
    status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
    type_: Annotated[str | None, typer.Option("--type", help="Only this job type.")] = None,
    user: Annotated[str | None, typer.Option(help="Only this end user.")] = None,
    limit: int = 20, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, as_json: JsonOpt = False,
) -> None:
    """The newest jobs first."""
    with client(url, key) as c:
        page = c.list(status=status, type=type_, user=user, limit=limit)
    if as_json:
        emit_json(page)
    else:
        console.print(jobs_table(page["data"]))


@jobs_app.command("show")
def jobs_show(job_id: str, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """One job's state, progress, result and error."""
    with client(url, key) as c:
        job = c.get(job_id)
    emit_json(job) if as_json else console.print(job_panel(job))


@jobs_app.command("watch")
def jobs_watch(job_id: str, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """The job's event timeline, live, until it ends (resumes across dropped connections)."""
    with client(url, key) as c:
        for event in c.events(job_id):
            if as_json:
                emit_json({"id": event.id, "type": event.type, "data": event.data})
            else:
                data = event.data
                detail = " ".join(f"{k}={data[k]}" for k in ("stage", "latency_ms", "error_code", "attempt")
                                  if data.get(k) is not None)
                console.print(f"{event.id:>8}  {event.type:<24} {detail}", highlight=False)
        job = c.get(job_id)
    if job["status"] != "completed":
        raise typer.Exit(EXIT_JOB_ENDED)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel now (pending, queued) or at the worker's next checkpoint (running)."""
    with client(url, key) as c:
        job = c.cancel(job_id)
    emit_json(job) if as_json else console.print(
        f"{job['id']} {job['status']}" + (" (cancel requested)" if job.get("cancel_requested") and
                                          job["status"] == "running" else ""))


@jobs_app.command("retry")
def jobs_retry(
    job_id: str, url: UrlOpt = DEFAULT_URL,
    admin_token: Annotated[str | None, typer.Option(envvar="GENLOOM_ADMIN_TOKEN", help="The admin token.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a failed or expired job again (charged again)."""
    token = admin_token or os.environ.get("GENLOOM_ADMIN_TOKEN")
    if not token:
        fail("retry is an admin action", "pass --admin-token or set GENLOOM_ADMIN_TOKEN", code=2)
    with client(url, None) as c:
        job = c.retry(job_id, token)
    emit_json(job) if as_json else console.print(f"{job['id']} {job['status']}")

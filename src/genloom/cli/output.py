"""How the CLI talks to people: one readable error line with a hint, tables, live stage progress."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()
err = Console(stderr=True)

EXIT_JOB_ENDED = 1
EXIT_UNREACHABLE = 3
EXIT_TIMEOUT = 4
EXIT_INTERRUPTED = 130


def fail(message: str, hint: str = "", code: int = EXIT_UNREACHABLE) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}" + (f"\n[dim]hint: {hint}[/]" if hint else ""))
    raise typer.Exit(code)


def emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def when(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(value).replace("T", " ")[:19]


def jobs_table(jobs: Iterable[dict[str, Any]]) -> Table:
    table = Table("id", "type", "mode", "status", "progress", "attempt", "created", "error", box=None)
    for j in jobs:
        status = j["status"]
        colour = {"completed": "green", "failed": "red", "cancelled": "yellow", "expired": "yellow"}.get(status, "cyan")
        table.add_row(j["id"], j["type"], j.get("mode") or "", f"[{colour}]{status}[/]",
                      f"{100 * float(j.get('progress') or 0):.0f}%", str(j.get("attempt", "")),
                      when(j.get("created_at")), j.get("error_code") or "")
    return table


def job_panel(job: dict[str, Any]) -> Table:
    table = Table(box=None, show_header=False)
    for key in ("id", "type", "mode", "status", "stage", "progress", "attempt", "cost", "queue_position",
                "result_url", "error_code", "error_message", "created_at", "started_at", "completed_at"):
        if job.get(key) not in (None, ""):
            table.add_row(f"[bold]{key}[/]", str(job[key]))
    return table


class StageProgress:
    """A Rich progress bar per stage, driven by job events (and the job's overall progress)."""

    def __init__(self) -> None:
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description:<14}"), BarColumn(),
                                 TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=err)
        self.tasks: dict[str, Any] = {}
        self.current: str | None = None

    def __enter__(self) -> StageProgress:
        self.progress.__enter__()
        self._task("overall")
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def _task(self, name: str) -> Any:
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=1.0, note="")
        return self.tasks[name]

    def event(self, type_: str, data: dict[str, Any]) -> None:
        stage = data.get("stage") or ("store" if type_ == "storage_write_completed" else None)
        if type_ == "queued":
            self.progress.update(self._task("queued"), completed=0.0, note="waiting for a worker")
        elif type_ == "started":
            self.progress.update(self._task("queued"), completed=1.0, note=f"attempt {data.get('attempt', 1)}")
        elif type_.endswith("_started") and stage:
            self.current = stage
            self.progress.update(self._task(stage), completed=0.0, note="running")
        elif type_.endswith("_completed") and stage:
            latency = data.get("latency_ms")
            self.progress.update(self._task(stage), completed=1.0, note=f"{latency} ms" if latency else "done")
        elif type_.endswith("_failed") and stage:
            self.progress.update(self._task(stage), note=f"[red]{data.get('error_code') or 'failed'}[/]")
        elif type_ == "retry_scheduled":
            self.progress.update(self._task("queued"), completed=0.0, note="[yellow]retry scheduled[/]")
        elif type_ in ("completed", "failed", "cancelled", "expired"):
            colour = "green" if type_ == "completed" else "red"
            self.progress.console.print(f"[{colour}]job {type_}[/]")

    def job_progress(self, fraction: float) -> None:
        """The worker's overall progress (it reports inside long stages too)."""
        self.progress.update(self._task("overall"), completed=fraction, note=f"{100 * fraction:.0f}%")

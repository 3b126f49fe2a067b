"""The ``genloom`` command tree."""

from __future__ import annotations

import typer

from genloom.cli import demo as demo_mod
from genloom.cli import jobs, ops
from genloom.observability import configure_logging

app = typer.Typer(
    name="genloom",
    help="A self-hosted job engine for AI media generation: queue, credits, live events, webhooks, "
    "and a local renderer that makes real mp4s.\n\nStart with `genloom demo`, then `genloom serve`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _quiet_logs() -> None:
    """Every command logs warnings and worse to stderr, so stdout is only its output (``--json``
    stays parseable); serve, worker and demo set their own level."""
    configure_logging("warning", json=False)


app.command()(demo_mod.demo)
app.command()(ops.serve)
app.command()(ops.worker)
app.command()(jobs.submit)
app.add_typer(jobs.jobs_app, name="jobs")
app.add_typer(ops.db_app, name="db")
app.add_typer(ops.projects_app, name="projects")
app.add_typer(ops.keys_app, name="keys")
app.add_typer(ops.credits_app, name="credits")
app.add_typer(ops.config_app, name="config")


def main() -> None:
    app()

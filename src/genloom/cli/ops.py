"""Operator commands that work on the database directly: serve, worker, db, projects, keys, credits, config."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from genloom.app import open_app
from genloom.cli.output import console, emit_json, fail
from genloom.cli.settings import load
from genloom.config import Settings
from genloom.errors import GenloomError
from genloom.observability import configure_logging
from genloom.store.migrate import current, head, upgrade

T = TypeVar("T")
DbOpt = Annotated[str | None, typer.Option("--db", help="Database URL (default: SQLite in the data dir).")]
DataOpt = Annotated[Path | None, typer.Option("--data-dir", help="Where the SQLite file and local storage live.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def run(coro: Awaitable[T]) -> T:
    """Run a coroutine; turn genloom's own errors into one readable line."""
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except GenloomError as exc:
        fail(f"{exc} ({exc.code})", code=2 if exc.status < 500 else 3)


def _settings(db: str | None, data_dir: Path | None, **more: Any) -> Settings:
    return load(database_url=db, data_dir=data_dir, **more)


def serve(
    db: DbOpt = None, data_dir: DataOpt = None,
    storage: Annotated[str | None, typer.Option(help="local or s3")] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8080).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Jobs run at once by the embedded worker.")] = None,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="API only; run `genloom worker` elsewhere.")] = False,
) -> None:
    """Start the API with the worker, reconciler and webhook dispatcher in one process."""
    from genloom.api import run_server

    settings = _settings(db, data_dir, storage=storage, host=host, port=port, concurrency=workers)
    console.print(f"genloom serving on http://{settings.host}:{settings.port}  (database: "
                  f"{settings.masked()['database_url'] or 'SQLite in ' + str(settings.data_dir)})", highlight=False)
    run_server(settings, background=not no_worker)


def worker(
    db: DbOpt = None, data_dir: DataOpt = None,
    concurrency: Annotated[int | None, typer.Option(help="Jobs run at once.")] = None,
) -> None:
    """Claim and run jobs (plus the reconciler) until SIGTERM or Ctrl-C; add as many as you like."""
    settings = _settings(db, data_dir, concurrency=concurrency)
    configure_logging(settings.log_level, settings.log_json)
    run(run_worker(settings))


async def run_worker(settings: Settings) -> None:
    app = await open_app(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        app.start_background(stop)
        await app.wait_background()
    finally:
        await app.close()


db_app = typer.Typer(help="Database schema.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(db: DbOpt = None, data_dir: DataOpt = None) -> None:
    """Apply migrations up to head (safe to run from several hosts at once)."""
    settings = _settings(db, data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    console.print(f"database at revision {current(settings.db_url)} (head {head()})")


@db_app.command("current")
def db_current(db: DbOpt = None, data_dir: DataOpt = None) -> None:
    """Print the applied revision and the code's head."""
    settings = _settings(db, data_dir)
    console.print(f"current {current(settings.db_url)}  head {head()}")


async def _with_core(settings: Settings, fn: Callable[[Any], Awaitable[T]]) -> T:
    app = await open_app(settings)
    try:
        return await fn(app.core)
    finally:
        await app.close()


projects_app = typer.Typer(help="Projects and their keys.", no_args_is_help=True)


@projects_app.command("create")
def projects_create(
    name: str, db: DbOpt = None, data_dir: DataOpt = None,
    billing: Annotated[bool, typer.Option(help="Meter jobs against credits.")] = True,
    credits: Annotated[int, typer.Option(help="Credits to grant the default user.")] = 0,
    allow_origin: Annotated[list[str] | None, typer.Option(
        "--allow-origin", help="A source origin the public key may use (Motioness proxy URL); repeatable.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a project and print its keys once (only a hash of the secret key is kept)."""
    origins = [o.rstrip("/") for o in allow_origin or []]
    for origin in origins:
        if not origin.startswith(("https://", "http://")) or origin.count("/") != 2:
            fail(f"not an origin: {origin}", "an origin is scheme://host[:port], e.g. https://cdn.example.com", code=2)

    async def go(core: Any) -> dict[str, Any]:
        issued = await core.projects.create(name, billing=billing, allowed_origins=origins)
        if credits:
            await core.credits.grant(issued.project.id, "", credits)
        return {"project_id": issued.project.id, "public_key": issued.public_key, "secret_key": issued.secret_key}

    out = run(_with_core(_settings(db, data_dir), go))
    if as_json:
        emit_json(out)
        return
    console.print(f"project  {out['project_id']}\npublic   {out['public_key']}\nsecret   {out['secret_key']}\n"
                  "[yellow]The secret key is shown once; store it now.[/]", highlight=False)


keys_app = typer.Typer(help="API keys.", no_args_is_help=True)


@keys_app.command("rotate")
def keys_rotate(project_id: str, db: DbOpt = None, data_dir: DataOpt = None, as_json: JsonOpt = False) -> None:
    """Revoke the project's secret keys and print a new one (shown once)."""
    secret = run(_with_core(_settings(db, data_dir), lambda core: core.projects.rotate(project_id)))
    if as_json:
        emit_json({"project_id": project_id, "secret_key": secret})
    else:
        console.print(f"secret   {secret}\n[yellow]The old keys stop working now.[/]", highlight=False)


credits_app = typer.Typer(help="The credits ledger.", no_args_is_help=True)


@credits_app.command("grant")
def credits_grant(
    project_id: str, amount: int, user: Annotated[str, typer.Option(help="End user within the project.")] = "",
    db: DbOpt = None, data_dir: DataOpt = None, as_json: JsonOpt = False,
) -> None:
    """Add credits to a (project, user) account; prints the new balance."""
    balance = run(_with_core(_settings(db, data_dir), lambda core: core.credits.grant(project_id, user, amount)))
    if as_json:
        emit_json({"project_id": project_id, "user": user, "balance": balance})
    else:
        console.print(f"balance {balance}")


@credits_app.command("balance")
def credits_balance(project_id: str, user: str = "", db: DbOpt = None, data_dir: DataOpt = None,
                    as_json: JsonOpt = False) -> None:
    """Print a (project, user) balance."""
    balance = run(_with_core(_settings(db, data_dir), lambda core: core.credits.balance(project_id, user)))
    if as_json:
        emit_json({"project_id": project_id, "user": user, "balance": balance})
    else:
        console.print(f"balance {balance}")


config_app = typer.Typer(help="Configuration.", no_args_is_help=True)


@config_app.command("show")
def config_show(as_json: JsonOpt = False) -> None:
    """The effective configuration (flags > GENLOOM_* > genloom.toml > defaults), secrets masked."""
    masked = load().masked()
    if as_json:
        emit_json(masked)
        return
    for key, value in masked.items():
        console.print(f"[bold]{key}[/] = {value}", highlight=False)


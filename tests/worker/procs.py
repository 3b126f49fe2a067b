"""Worker subprocesses (tests/worker/runner.py) for the SIGTERM, zombie and fault tests, plus a
probe telling whether a frozen process still holds a database lock."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from genloom.config import Settings
from tests.dbs import libpq

ROOT = Path(__file__).resolve().parents[2]
_SETTINGS = ("database_url", "data_dir", "lease_seconds", "heartbeat_seconds", "poll_seconds", "shutdown_grace_seconds",
             "max_attempts", "backoff_base_seconds", "backoff_cap_seconds", "concurrency")


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENLOOM_")}
    for name in _SETTINGS:
        env[f"GENLOOM_{name.upper()}"] = str(getattr(settings, name))
    env["GENLOOM_CONFIG"] = str(ROOT / "no-such-genloom.toml")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env | extra


@dataclass
class WorkerProc:
    proc: asyncio.subprocess.Process
    log: Path
    worker_id: str = ""
    lines: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def line(self, within: float = 20.0) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), within)
        if not raw:
            raise AssertionError(f"worker process {self.pid} ended: {self.log.read_text()[-3000:]}")
        text = raw.decode().strip()
        self.lines.append(text)
        return text

    async def go(self) -> None:
        """Let a process started with ``wait_go`` begin working."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()
        assert await self.line() == "working"

    def signal(self, sig: int) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    async def wait(self, within: float = 20.0) -> int:
        """The exit code, once the process ended (what it printed meanwhile is in ``lines``)."""
        assert self.proc.stdout is not None
        rest = await asyncio.wait_for(self.proc.stdout.read(), within)
        self.lines += rest.decode().split()
        return await asyncio.wait_for(self.proc.wait(), within)

    async def kill(self) -> None:
        self.signal(signal.SIGKILL)
        await self.wait()

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def logs(self) -> str:
        return self.log.read_text()


async def spawn(settings: Settings, log: Path, *, concurrency: int = 2, wait_go: bool = False) -> WorkerProc:
    """Start a worker process; returns once it printed ``ready`` (and ``working`` unless ``wait_go``)."""
    env = worker_env(settings, RUNNER_CONCURRENCY=str(concurrency))
    if wait_go:
        env["RUNNER_WAIT_GO"] = "1"
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.worker.runner", cwd=ROOT, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
        )
    worker = WorkerProc(proc, log)
    try:
        ready = await worker.line()
        assert ready.startswith("ready "), ready
        worker.worker_id = ready.split()[1]
        if not wait_go:
            assert await worker.line() == "working"
    except BaseException:
        await worker.kill()
        raise
    return worker


_forkserver: BaseContext | None = None


def forkserver() -> BaseContext:
    """The forkserver context, preloading the runner (genloom.app and all it imports) once."""
    global _forkserver
    if _forkserver is None:
        _forkserver = multiprocessing.get_context("forkserver")
        _forkserver.set_forkserver_preload(["tests.worker.runner"])
    return _forkserver


@dataclass
class ForkedWorker:
    """A worker process forked from the forkserver: the same program as ``spawn``'s."""

    process: BaseProcess
    conn: Connection
    log: Path
    worker_id: str = ""

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.exitcode is None

    async def announcement(self, within: float = 20.0) -> str:
        if not await asyncio.to_thread(self.conn.poll, within):
            raise AssertionError(f"worker process {self.pid} is silent: {self.logs()[-3000:]}")
        try:
            return str(self.conn.recv())
        except EOFError:
            raise AssertionError(f"worker process {self.pid} ended: {self.logs()[-3000:]}") from None

    def signal(self, sig: int) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    async def wait(self, within: float = 20.0) -> int:
        deadline = time.monotonic() + within
        while self.process.exitcode is None:
            if time.monotonic() > deadline:
                raise TimeoutError
            await asyncio.sleep(0.01)
        self.conn.close()
        return self.process.exitcode

    async def kill(self) -> None:
        self.signal(signal.SIGKILL)
        await self.wait()

    def logs(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


async def fork_worker(settings: Settings, log: Path, *, concurrency: int = 2) -> ForkedWorker:
    """Start a worker from the forkserver; returns once it is working."""
    from tests.worker import runner

    ctx = forkserver()
    receiver, sender = ctx.Pipe(duplex=False)
    env = worker_env(settings, RUNNER_CONCURRENCY=str(concurrency))
    process = ctx.Process(target=runner.child, args=(env, str(log), sender))  # type: ignore[attr-defined]
    process.start()
    sender.close()
    worker = ForkedWorker(process, receiver, log)
    try:
        ready = await worker.announcement()
        assert ready.startswith("ready "), ready
        worker.worker_id = ready.split()[1]
        assert await worker.announcement() == "working"
    except BaseException:
        await worker.kill()
        raise
    return worker


def holds_no_lock(url: str, job_id: str) -> bool:
    """Whether the database is free of locks a frozen process could hold: SQLite's write lock, or on
    PostgreSQL the job's row lock."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        conn = sqlite3.connect(str(u.database), timeout=0.2, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            conn.close()
    with psycopg.connect(libpq(url)) as pg:
        try:
            pg.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE NOWAIT", (job_id,))
            return True
        except psycopg.errors.LockNotAvailable:
            return False
        finally:
            pg.rollback()


async def freeze(worker: WorkerProc, url: str, job_id: str, tries: int = 50) -> None:
    """SIGSTOP ``worker`` at a moment it holds no database lock (else nobody could write meanwhile)."""
    for _ in range(tries):
        worker.signal(signal.SIGSTOP)
        await asyncio.sleep(0.01)
        if await asyncio.to_thread(holds_no_lock, url, job_id):
            return
        worker.signal(signal.SIGCONT)
        await asyncio.sleep(0.03)
    raise AssertionError("could not freeze the worker outside a transaction")


async def stop_all(workers: list[WorkerProc] | list[ForkedWorker], within: float = 15.0) -> list[int]:
    """SIGTERM every live worker and collect exit codes (SIGKILL past ``within``)."""
    for w in workers:
        w.signal(signal.SIGCONT)
        w.signal(signal.SIGTERM)
    codes = []
    deadline = time.monotonic() + within
    for w in workers:
        try:
            codes.append(await w.wait(max(0.1, deadline - time.monotonic())))
        except TimeoutError:
            await w.kill()
            codes.append(-9)
    return codes


def log_lines_about(text: str, job_id: str, *needles: str) -> list[str]:
    return [ln for ln in text.splitlines() if job_id in ln and any(n in ln for n in needles)]


def settings_for_procs(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update=changes)

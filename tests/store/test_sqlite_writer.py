"""SQLite's write connection runs on the event loop (store/sqlite_writer.py): another writer's lock
must be waited for without stalling the loop, given up on cleanly, and WAL checkpoints must
still happen. SQLite only: PostgreSQL has no file lock, WAL file or loop-thread connection."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from genloom.config import Settings
from genloom.errors import Unavailable
from genloom.jobs import JobSpec
from genloom.runtime import open_core
from genloom.store import engine
from genloom.store.sqlite_writer import Checkpointer, is_busy
from tests.store.helpers import count_jobs, ledger_rows, make_project
from tests.support import TestCatalog

pytestmark = pytest.mark.anyio


@pytest.fixture
def path(sqlite_template: Any, tmp_path: Path) -> Path:
    return Path(sqlite_template.clone(tmp_path).removeprefix("sqlite:///"))


@pytest.fixture
async def core(path: Path, tmp_path: Path) -> AsyncIterator[Any]:
    settings = Settings(database_url=f"sqlite:///{path}", data_dir=tmp_path / "data", _env_file=None)
    c = await open_core(settings, TestCatalog())
    yield c
    await c.close()


@pytest.fixture
def other(path: Path) -> Iterator[sqlite3.Connection]:
    """Another writer of the same file (what another genloom process is to this one)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    yield conn
    conn.close()


async def _ticks(stop: asyncio.Event) -> float:
    """The longest the loop went without running this coroutine, in seconds."""
    worst, last = 0.0, time.monotonic()
    while not stop.is_set():
        await asyncio.sleep(0.005)
        now = time.monotonic()
        worst, last = max(worst, now - last), now
    return worst


async def test_a_write_waits_for_another_writers_lock_without_stalling_the_loop(
    core: Any, other: sqlite3.Connection
) -> None:
    project = await make_project(core, credits=10)
    other.execute("BEGIN IMMEDIATE")
    asyncio.get_running_loop().call_later(0.4, other.commit)  # only runs if the loop is free
    stop = asyncio.Event()
    ticker = asyncio.ensure_future(_ticks(stop))
    started = time.monotonic()
    job, _ = await core.jobs.create(project, JobSpec(type="motion", input={}))
    waited = time.monotonic() - started
    stop.set()
    assert job.status == "queued"
    assert waited >= 0.35, "the write did not wait for the other writer's lock"
    assert await ticker < 0.15, "the loop stalled while the write waited"


async def test_a_write_gives_up_after_the_busy_wait_and_leaves_nothing(
    core: Any, other: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holding the write lock past the busy wait makes the write Unavailable (a
    503 with Retry-After, a worker's hand-back; shared by a whole group commit), not a failure."""
    project = await make_project(core, credits=10)
    monkeypatch.setattr(engine, "SQLITE_BUSY_WAIT", 0.3)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(Unavailable, match="locked") as info:
            await core.jobs.create(project, JobSpec(type="motion", input={}))
        assert isinstance(info.value.__cause__, OperationalError) and engine.db_wide(info.value)
    finally:
        other.rollback()
    assert await count_jobs(core) == 0
    assert [r["reason"] for r in await ledger_rows(core)] == ["grant"]
    job, _ = await core.jobs.create(project, JobSpec(type="motion", input={}))  # the connection is usable
    assert job.status == "queued"


async def test_checkpoints_keep_the_wal_from_growing(core: Any, path: Path) -> None:
    project = await make_project(core, billing=False)
    wal = Path(f"{path}-wal")
    for i in range(1500):
        await core.jobs.create(project, JobSpec(type="motion", input={"i": i}))
        if i % 100 == 0:
            await asyncio.sleep(0)  # let a finished checkpoint's thread report back
    # Back-to-back writes never let a passive checkpoint finish; without the catch-up under the
    # write lock the WAL held every page written (76 MB here), and without checkpoints as much.
    with sqlite3.connect(path) as conn:
        page = conn.execute("PRAGMA page_size").fetchone()[0]
    size = await asyncio.to_thread(os.path.getsize, wal)
    assert size < 3 * Checkpointer.MAX_FRAMES * page, (size, page)


async def test_a_catch_up_copies_most_of_the_wal_before_it_holds_the_write_lock(
    path: Path, other: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A WAL past MAX_FRAMES is caught up by a checkpoint without the write lock, then one that
    copies what came meanwhile with it: holding the lock for the whole copy and fsync stalled this
    process's writes for a full checkpoint (~18 ms here)."""
    other.execute("PRAGMA journal_mode=WAL")
    other.execute("PRAGMA wal_autocheckpoint=0")
    other.execute("CREATE TABLE filler (b BLOB)")
    page = other.execute("PRAGMA page_size").fetchone()[0]
    for _ in range(Checkpointer.MAX_FRAMES // 50 + 2):  # 50 pages a commit
        other.execute("INSERT INTO filler VALUES (?)", (os.urandom(50 * page),))
    lock = asyncio.Lock()
    checkpointer = Checkpointer((str(path),), {}, lock)
    held: list[tuple[bool, int]] = []
    real = checkpointer._checkpoint

    def checkpoint() -> int:
        frames = real()
        held.append((lock.locked(), frames))
        return frames

    monkeypatch.setattr(checkpointer, "_checkpoint", checkpoint)
    for _ in range(Checkpointer.EVERY_COMMITS):
        checkpointer.committed()
    await checkpointer.close()
    assert [locked for locked, _ in held] == [False, True], held
    assert held[0][1] > Checkpointer.MAX_FRAMES
    other.execute("INSERT INTO filler VALUES (x'00')")  # every frame was copied: the WAL starts over
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1] < 10


async def test_a_relative_url_names_one_file_for_writes_and_reads(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write connection opens lazily: it must not resolve the path against a later cwd."""
    monkeypatch.chdir(path.parent)
    settings = Settings(database_url=f"sqlite:///{path.name}", data_dir=tmp_path / "data", _env_file=None)
    c = await open_core(settings, TestCatalog())
    try:
        monkeypatch.chdir(tmp_path.parent)
        project = await make_project(c, billing=False)
        job, _ = await c.jobs.create(project, JobSpec(type="motion", input={}))
        assert (await c.jobs.get(job.id)).id == job.id
    finally:
        await c.close()


@pytest.mark.parametrize("code", [sqlite3.SQLITE_BUSY, 261, 517])  # BUSY, BUSY_RECOVERY, BUSY_SNAPSHOT
def test_every_busy_code_is_waited_on(code: int) -> None:
    exc = sqlite3.OperationalError("database is locked")
    exc.sqlite_errorcode = code
    assert is_busy(exc)
    exc.sqlite_errorcode = 1555  # SQLITE_CONSTRAINT_PRIMARYKEY
    assert not is_busy(exc)

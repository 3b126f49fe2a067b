"""The SQLite write connection: sqlite3 called on the event loop's own thread, shaped like
aiosqlite so SQLAlchemy's aiosqlite dialect drives it unchanged.

Why not aiosqlite here: it runs every call on its own thread, and SQLAlchemy's adapter makes
three or four calls per statement (cursor, execute, fetchall, close), so a job's create was about
seventeen thread hops, each a queue put, a GIL handoff and a loop wake-up, costing more than
SQLite's own work on these one-row statements (tens of microseconds). One process writes through
one connection behind ``Database``'s write lock, so the loop never waits on another coroutine's
transaction. What could block it is another *process* holding the database's write lock: the
connection therefore has no busy timeout, and ``Database.tx`` retries a busy ``BEGIN IMMEDIATE``
with asyncio sleeps (once it holds the lock, WAL never makes a statement or COMMIT wait). WAL
checkpoints (an fsync) are taken off the loop too: the connection does not checkpoint on commit,
and ``Checkpointer`` runs them on a thread. Reads stay on aiosqlite's threads: a
long listing must not stall the loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from genloom.observability import get_logger

log = get_logger(__name__)


class Cursor:
    """An sqlite3 cursor behind aiosqlite's awaitable cursor methods."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    async def __aenter__(self) -> Cursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._cursor.close()

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Cursor:
        self._cursor.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Cursor:
        self._cursor.executemany(sql, rows)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(self._cursor.arraysize if size is None else size)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value


class Connection:
    """An sqlite3 connection behind aiosqlite's connection methods (those SQLAlchemy calls)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.closed = False

    @property
    def raw(self) -> sqlite3.Connection:
        """The sqlite3 connection itself (store.writes runs prepared statements on it)."""
        return self._conn

    @property
    def _connection(self) -> sqlite3.Connection | None:  # SQLAlchemy checks it before commit/rollback
        return self._conn

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    def cursor(self) -> Cursor:
        return Cursor(self._conn.cursor())

    async def commit(self) -> None:
        self._conn.commit()

    async def rollback(self) -> None:
        self._conn.rollback()

    async def close(self) -> None:
        self.closed = True
        self._conn.close()

    async def create_function(self, *args: Any, **kw: Any) -> None:
        self._conn.create_function(*args, **kw)

    def stop(self) -> None:
        self.closed = True
        self._conn.close()


def connector(args: Sequence[Any], kwargs: dict[str, Any], busy_wait: float) -> Callable[[], Awaitable[Connection]]:
    """An ``async_creator`` for ``create_async_engine``, opening what SQLAlchemy's own
    ``create_connect_args`` names (absolute path, URI options): in autocommit (genloom issues
    BEGIN IMMEDIATE itself), WAL, no checkpoint on commit. It is opened on a thread, where it may
    wait up to ``busy_wait`` seconds for the switch to WAL; on the loop it never waits."""

    def open_() -> Connection:
        conn = _open(args, kwargs, timeout=busy_wait)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "wal_autocheckpoint=0", "busy_timeout=0"):
            conn.execute(f"PRAGMA {pragma}")
        return Connection(conn)

    async def connect() -> Connection:
        return await asyncio.to_thread(open_)

    return connect


def _open(args: Sequence[Any], kwargs: dict[str, Any], **extra: Any) -> sqlite3.Connection:
    """An sqlite3 connection to the engine's database, in autocommit, usable from any thread."""
    conn: sqlite3.Connection = sqlite3.connect(
        *args, **(kwargs | {"isolation_level": None, "check_same_thread": False} | extra))
    return conn


def is_busy(exc: BaseException) -> bool:
    """SQLITE_BUSY or one of its extended codes (recovery, snapshot, timeout): another connection
    holds the lock, or is recovering the WAL after a crash."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.OperationalError) and code is not None and code & 0xFF == sqlite3.SQLITE_BUSY


class Checkpointer:
    """WAL checkpoints on a thread, after every ``EVERY_COMMITS`` commits or a second after the
    last one, so commits on the loop stay free of the checkpoint's copying and fsync.

    A passive checkpoint never waits for anyone, and writes go on meanwhile. The WAL is rewound
    from its start only when a write finds every frame copied, which writes that never pause
    prevent: the WAL then grows without end (76 MB after 1,500 back-to-back creates). So when a
    checkpoint leaves more than ``MAX_FRAMES`` frames in the WAL, a second one copies what was
    written meanwhile while holding this process's write lock (the loop runs on; only this
    process's writes wait). That one has a few milliseconds' writes to copy: holding the lock for
    the whole catch-up instead stalled writes for a full checkpoint, ~18 ms here, about every
    1,000 frames, and that was the worker bench's wake-up p99 on SQLite."""

    EVERY_COMMITS = 100  # a create writes ~12 pages: about SQLite's own 1,000-page interval
    MAX_FRAMES = 2000  # ~8 MB of 4 KiB pages

    def __init__(self, args: Sequence[Any], kwargs: dict[str, Any], write_lock: asyncio.Lock) -> None:
        self.args, self.kwargs = args, kwargs
        self.write_lock = write_lock
        self._conn: sqlite3.Connection | None = None
        self._running: asyncio.Task[None] | None = None
        self._commits = 0
        self._last = time.monotonic()
        self._closed = False

    def committed(self) -> None:
        """Count a commit; start a checkpoint when one is due and none is running."""
        self._commits += 1
        if self._closed or (self._running is not None and not self._running.done()):
            return
        if self._commits >= self.EVERY_COMMITS or time.monotonic() - self._last > 1.0:
            self._commits, self._last = 0, time.monotonic()
            self._running = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            if await asyncio.to_thread(self._checkpoint) > self.MAX_FRAMES:
                async with self.write_lock:
                    await asyncio.to_thread(self._checkpoint)
        except sqlite3.Error as exc:  # the next commit tries again
            log.warning("sqlite.checkpoint_failed", error=str(exc))

    def _checkpoint(self) -> int:
        """One passive checkpoint; the frames in the WAL when it ran."""
        if self._conn is None:
            self._conn = _open(self.args, self.kwargs)
        _busy, frames, _copied = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(frames)

    async def close(self) -> None:
        self._closed = True
        if self._running is not None:
            await asyncio.gather(self._running, return_exceptions=True)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

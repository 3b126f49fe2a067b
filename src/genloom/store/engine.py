"""Per-dialect engines and the transaction helper: SQLite WAL + BEGIN IMMEDIATE, a PostgreSQL pool."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal

from sqlalchemy import event
from sqlalchemy.engine import Dialect as SaDialect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.base import Executable

from genloom.errors import TransactionConflict, Unavailable
from genloom.store import prepared, sqlite_writer
from genloom.store.writes import WriteConnection

Dialect = Literal["sqlite", "postgresql"]
SQLITE_BUSY_WAIT = 30.0  # seconds a write waits for another process's SQLite write lock
KEPT_IDLE = 60.0  # seconds a kept connection may sit unused and still be trusted (Database.kept)


def async_url(url: str) -> str:
    """Accept plain URLs (sqlite:///x.db, postgresql://…) and pick genloom's async drivers."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        return str(u.set(drivername="sqlite+aiosqlite"))
    if u.get_backend_name() == "postgresql":
        return u.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise ValueError(f"unsupported database {u.get_backend_name()!r}: use sqlite or postgresql")


def sync_url(url: str) -> str:
    """The same database through a sync driver, for Alembic."""
    u = make_url(async_url(url))
    driver = "sqlite" if u.get_backend_name() == "sqlite" else "postgresql+psycopg"
    return u.set(drivername=driver).render_as_string(hide_password=False)


def libpq_url(url: str, database: str | None = None) -> str:
    """The same PostgreSQL database (or ``database`` on its server) as a plain libpq URL, for
    psycopg outside SQLAlchemy (the LISTEN connection, admin statements)."""
    u = make_url(url).set(drivername="postgresql")
    if database is not None:
        u = u.set(database=database)
    return u.render_as_string(hide_password=False)


def _sqlite_reader(engine: AsyncEngine) -> None:
    """aiosqlite read connections: WAL, and a BEGIN per checkout so its reads share a snapshot."""

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_conn: Any, _: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_WAIT * 1000)}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")



def _json_dumps(value: Any) -> str:
    """``json.dumps``, but the empty object (the data of most events) is not encoded each time."""
    return "{}" if type(value) is dict and not value else json.dumps(value)


def _json_loads(text: str | bytes) -> Any:
    """``json.loads``, but the empty object is a new dict without a parse."""
    return {} if text == "{}" else json.loads(text)


#: The JSON columns' (de)serialisers on every engine (a prepared statement compiles with them).
_JSON: dict[str, Any] = {"json_serializer": _json_dumps, "json_deserializer": _json_loads}


class Database:
    """Engines for one database: ``tx()`` for writes, ``read()`` for reads."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = async_url(url)
        #: how many connections a use whose callers run concurrently (the creates) may keep: half
        #: the autocommit pool, so reads keep the rest of it
        self.kept_width = max(1, pool_size // 2)
        backend = make_url(self.url).get_backend_name()
        self.dialect: Dialect = "sqlite" if backend == "sqlite" else "postgresql"
        self._write_lock = asyncio.Lock()  # SQLite: this process's writes, one at a time
        self._checkpointer: sqlite_writer.Checkpointer | None = None
        self._writer: sqlite_writer.Connection | None = None
        # per use, its idle kept connections, most recently used last: (conn, opened, last used)
        self._kept: dict[str, list[tuple[AsyncConnection, float, float]]] = {}
        self._kept_busy: dict[str, int] = {}  # per use, its kept connections in use
        self._disposed = False
        if self.dialect == "sqlite":
            # One write connection per process, on the loop's thread (see sqlite_writer); reads
            # on aiosqlite's threads.
            self.reader = create_async_engine(self.url, pool_size=8, max_overflow=8, **_JSON)
            _sqlite_reader(self.reader)
            args, opts = self.reader.dialect.create_connect_args(make_url(self.url))
            kwargs = dict(opts)
            self.engine = create_async_engine(self.url, pool_size=1, max_overflow=0, async_creator=(
                sqlite_writer.connector(args, kwargs, SQLITE_BUSY_WAIT)), **_JSON)
            self._checkpointer = sqlite_writer.Checkpointer(args, kwargs, self._write_lock)
        else:
            # No pre-ping (a round trip per checkout): a connection the server dropped fails its
            # first statement as a disconnect, SQLAlchemy then discards the whole pool, and the
            # caller sees Unavailable (a 503 with Retry-After, or a worker's retry).
            # Two pools (transactions; autocommit reads and one-statement writes), each keeping up to
            # ``pool_size`` connections once opened and opening as many again for a burst (those are
            # closed when returned). Kept any smaller, a steadily busy process opened and closed a
            # connection (a PostgreSQL backend) per statement above the kept number.
            kept, extra = pool_size, pool_size
            self.engine = create_async_engine(self.url, pool_size=kept, max_overflow=extra, **_JSON)
            # Each statement its own transaction, for reads and for the writes that are one
            # statement (data-modifying CTEs): one round trip where BEGIN, it and COMMIT (or the
            # pool's ROLLBACK) were three. Reads lose nothing: under READ COMMITTED every statement
            # of a transaction takes its own snapshot anyway. A pool of its own, so connections are
            # switched to autocommit once, not on every checkout, and hold no transaction to roll
            # back when returned.
            self.reader = create_async_engine(self.url, pool_size=kept, max_overflow=extra, **_JSON,
                                              isolation_level="AUTOCOMMIT", pool_reset_on_return=None)

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[WriteConnection]:
        """One write transaction; committed on exit, rolled back on error."""
        try:
            if self.dialect == "sqlite":
                async with self._sqlite_tx() as conn:
                    yield conn
            else:
                async with self.engine.begin() as sa:
                    yield WriteConnection(self.engine, sa=sa)
        except OperationalError as exc:
            if (mapped := _mapped(exc)) is not exc:
                raise mapped from exc
            raise

    @asynccontextmanager
    async def _sqlite_tx(self) -> AsyncIterator[WriteConnection]:
        """This process's writes one at a time on its one write connection; the database's write
        lock taken up front (BEGIN IMMEDIATE), so a write never fails on a lock upgrade."""
        assert self._checkpointer is not None
        async with self._write_lock:
            writer = await self._sqlite_writer()
            await _begin_immediate(writer.raw, self.engine.dialect)
            conn = WriteConnection(self.engine, writer=writer)
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(Exception):  # the error that ended it is the one to see
                    await conn.end(commit=False)
                raise
            await conn.end(commit=True)
            self._checkpointer.committed()

    async def _sqlite_writer(self) -> sqlite_writer.Connection:
        """The pool's one write connection (opened, or reopened after the pool discarded it)."""
        if self._writer is None or self._writer.closed:
            async with self.engine.connect() as sa:
                writer = (await sa.get_raw_connection()).driver_connection
            assert isinstance(writer, sqlite_writer.Connection)
            self._writer = writer
        return self._writer

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A connection whose every statement commits on its own (PostgreSQL single-statement
        writes): the read pool's, which runs in autocommit there."""
        assert self.dialect == "postgresql", "SQLite has no single-statement writes to run this way"
        async with self.read() as conn:
            yield conn

    @asynccontextmanager
    async def kept(self, use: str, width: int = 1) -> AsyncIterator[AsyncConnection]:
        """``autocommit()``, on a connection kept checked out for ``use`` between its statements:
        for statements that follow one another on a hot path (a worker's claims, its completions,
        its due-time reads, the creates), where the pool's checkout and return cost 0.1 ms each
        time, and 0.4 ms after an idle spell, on a path whose round trip is about 1 ms. Up to
        ``width`` callers at a time each get one of ``use``'s kept connections (that many are
        kept); one more gets a pooled connection. A database error or a cancellation discards the
        kept one (it may be mid-statement), and so does a disconnect either pool saw on any other
        connection or an idle spell past KEPT_IDLE (a firewall or the server may have dropped it),
        found when the use next takes or returns one."""
        assert self.dialect == "postgresql", "SQLite writes go through tx()"
        idle = self._kept.setdefault(use, [])
        busy = self._kept_busy.get(use, 0)
        if self._disposed or (not idle and busy >= width):
            async with self.autocommit() as pooled:
                yield pooled
            return
        self._kept_busy[use] = busy + 1
        try:
            conn, taken = await self._take(idle)
            try:
                yield conn
            except BaseException as exc:
                if isinstance(exc, DBAPIError) or not isinstance(exc, Exception):
                    await _discard(conn)
                else:  # the caller's own error: the connection is as good as before
                    await self._keep(idle, conn, taken)
                raise
            await self._keep(idle, conn, taken)
        except OperationalError as exc:
            if (mapped := _mapped(exc)) is not exc:
                raise mapped from exc
            raise
        finally:
            self._kept_busy[use] -= 1

    async def _take(self, idle: list[tuple[AsyncConnection, float, float]]) -> tuple[AsyncConnection, float]:
        """The most recently used of these kept connections and when it was opened, or a fresh one."""
        while idle:
            conn, taken, last = idle.pop()
            # a disconnect seen on either pool: a restart drops every connection of both
            invalidated_at = max(getattr(e.sync_engine.pool, "_invalidate_time", 0)
                                 for e in (self.reader, self.engine))
            if not (conn.invalidated or conn.closed) and taken > invalidated_at and (
                    time.monotonic() - last < KEPT_IDLE):
                return conn, taken
            await _discard(conn)
        return await self.reader.connect(), time.time()

    async def _keep(self, idle: list[tuple[AsyncConnection, float, float]], conn: AsyncConnection,
                    taken: float) -> None:
        now = time.monotonic()
        if self._disposed or conn.invalidated or conn.closed:
            await _discard(conn)
        else:
            idle.append((conn, taken, now))
        while idle and now - idle[0][2] >= KEPT_IDLE:  # what a past burst left unused goes
            await _discard(idle.pop(0)[0])

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.reader.connect() as conn:
                yield conn
        except OperationalError as exc:
            if (mapped := _mapped(exc)) is not exc:
                raise mapped from exc
            raise

    async def fetch(self, statement: Executable, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """A small read on a hot path (a prepared, indexed lookup), as dicts. On SQLite it runs on
        the write connection between write transactions, on the loop's thread: through the read
        pool it cost a checkout, a BEGIN and three thread hops around a microsecond query. On
        PostgreSQL it is an autocommit read on a kept connection, run on psycopg directly. Not for
        use inside ``tx``: the write lock is not reentrant."""
        try:
            if self.dialect == "sqlite":
                async with self._write_lock:
                    conn = WriteConnection(self.engine, writer=await self._sqlite_writer())
                    try:
                        return await conn.fetch(statement, params)
                    finally:
                        await conn.end(commit=False)
            async with self.kept("fetch") as kept:
                return await prepared.fetch_pg(kept, statement, params)
        except OperationalError as exc:
            if (mapped := _mapped(exc)) is not exc:
                raise mapped from exc
            raise

    async def dispose(self) -> None:
        self._disposed = True
        kept = [entry for idle in self._kept.values() for entry in idle]
        for idle in self._kept.values():
            idle.clear()  # a caller already in kept() holds its use's list: it must find none there
        self._kept = {}
        for conn, _, _ in kept:
            with contextlib.suppress(Exception):
                await conn.close()
        if self._checkpointer is not None:
            await self._checkpointer.close()
        await self.engine.dispose()
        if self.reader is not self.engine:
            await self.reader.dispose()


async def _discard(conn: AsyncConnection) -> None:
    """Close a connection without returning it to the pool, whatever state it is in."""
    with contextlib.suppress(Exception):
        await asyncio.shield(conn.invalidate())
    with contextlib.suppress(Exception):
        await asyncio.shield(conn.close())


async def _begin_immediate(raw: sqlite3.Connection, dialect: SaDialect) -> None:
    """BEGIN IMMEDIATE, waiting with asyncio sleeps (not SQLite's busy handler, which would block
    the loop) while another process holds the write lock, for up to SQLITE_BUSY_WAIT seconds."""
    deadline = time.monotonic() + SQLITE_BUSY_WAIT
    pause = 0.001
    while True:
        try:
            raw.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.Error as exc:
            if not sqlite_writer.is_busy(exc) or time.monotonic() + pause > deadline:
                raise prepared.wrapped("BEGIN IMMEDIATE", None, exc, dialect) from exc
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.05)


def db_wide(exc: Exception) -> bool:
    """A failure of the database, not of one write's data or one transaction's luck (unreachable,
    locked by another process for the whole busy wait): a group commit answers every write of the
    batch with it instead of trying each alone."""
    return isinstance(exc, Unavailable) and not isinstance(exc, TransactionConflict)


# SQLSTATEs of a transaction the server turned away, which the same write retried gets past:
# serialization_failure, deadlock_detected, lock_not_available.
_CONFLICTS = frozenset({"40001", "40P01", "55P03"})


def _mapped(exc: OperationalError) -> Exception:
    """What a caller should see of a database error: ``Unavailable`` when the database cannot be
    reached or (SQLite) stayed locked by another process, ``TransactionConflict`` when the server
    turned this one transaction away, else the error itself."""
    if _is_unreachable(exc):
        return Unavailable("the database is unreachable")
    if exc.orig is not None and sqlite_writer.is_busy(exc.orig):
        return Unavailable(f"the database stayed locked by another process for {SQLITE_BUSY_WAIT:.0f} s")
    if getattr(exc.orig, "sqlstate", None) in _CONFLICTS:
        return TransactionConflict(f"the database turned the transaction away ({exc.orig}); try again")
    return exc


def _is_unreachable(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return exc.connection_invalidated or any(
        s in text for s in ("connection", "server closed", "terminating", "could not connect", "the database system")
    )

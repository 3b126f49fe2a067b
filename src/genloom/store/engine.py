"""Per-dialect engines and the transaction helper: SQLite WAL + BEGIN IMMEDIATE, a PostgreSQL pool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from genloom.errors import Unavailable

Dialect = Literal["sqlite", "postgresql"]


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


def _sqlite_pragmas(engine: AsyncEngine, *, immediate: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_conn: Any, _: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        # Writers take the write lock up front, so concurrent writers queue on busy_timeout
        # instead of failing with "database is locked" when a read lock is upgraded.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Database:
    """Engines for one database: ``tx()`` for writes, ``read()`` for reads."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = async_url(url)
        backend = make_url(self.url).get_backend_name()
        self.dialect: Dialect = "sqlite" if backend == "sqlite" else "postgresql"
        self._write_lock: asyncio.Lock | None = None
        if self.dialect == "sqlite":
            self.engine = create_async_engine(self.url, pool_size=1, max_overflow=0)
            self.reader = create_async_engine(self.url, pool_size=8, max_overflow=8)
            _sqlite_pragmas(self.engine, immediate=True)
            _sqlite_pragmas(self.reader, immediate=False)
        else:
            # No pre-ping (a round trip per checkout): a connection the server dropped fails its
            # first statement as a disconnect, SQLAlchemy then discards the whole pool, and the
            # caller sees Unavailable (a 503 with Retry-After, or a worker's retry).
            # Two pools (transactions; autocommit reads and one-statement writes), each keeping half
            # of ``pool_size`` open: a process holds as many idle connections as with one pool.
            kept, extra = max(1, pool_size // 2), pool_size
            self.engine = create_async_engine(self.url, pool_size=kept, max_overflow=extra)
            # Each statement its own transaction, for reads and for the writes that are one
            # statement (data-modifying CTEs): one round trip where BEGIN, it and COMMIT (or the
            # pool's ROLLBACK) were three. Reads lose nothing: under READ COMMITTED every statement
            # of a transaction takes its own snapshot anyway. A pool of its own, so connections are
            # switched to autocommit once, not on every checkout, and hold no transaction to roll
            # back when returned.
            self.reader = create_async_engine(self.url, pool_size=kept, max_overflow=extra,
                                              isolation_level="AUTOCOMMIT", pool_reset_on_return=None)

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction; committed on exit, rolled back on error."""
        try:
            if self._write_lock is None and self.dialect == "sqlite":
                self._write_lock = asyncio.Lock()
            if self._write_lock is not None:
                async with self._write_lock, self.engine.begin() as conn:
                    yield conn
            else:
                async with self.engine.begin() as conn:
                    yield conn
        except OperationalError as exc:
            if _is_unreachable(exc):
                raise Unavailable("the database is unreachable") from exc
            raise

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A connection whose every statement commits on its own (PostgreSQL single-statement
        writes): the read pool's, which runs in autocommit there."""
        assert self.dialect == "postgresql", "SQLite has no single-statement writes to run this way"
        async with self.read() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.reader.connect() as conn:
                yield conn
        except OperationalError as exc:
            if _is_unreachable(exc):
                raise Unavailable("the database is unreachable") from exc
            raise

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self.reader is not self.engine:
            await self.reader.dispose()


def _is_unreachable(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return exc.connection_invalidated or any(
        s in text for s in ("connection", "server closed", "terminating", "could not connect", "the database system")
    )

"""One write transaction's connection (what ``Database.tx`` yields).

On SQLite the transaction is begun and ended on the write connection's sqlite3 object itself,
prepared statements run there directly (``fetch``, ``run``; see store.prepared), and SQLAlchemy's
connection is checked out only when a statement needs it (``execute``): a transaction of prepared
statements never enters SQLAlchemy's pool or execution layer. On PostgreSQL the transaction is
SQLAlchemy's; its prepared statements run on that connection's psycopg connection.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVarTuple, overload

from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.selectable import TypedReturnsRows

from genloom.errors import Unavailable
from genloom.store import prepared, sqlite_writer

Params = Mapping[str, Any]
_Ts = TypeVarTuple("_Ts")


class WriteConnection:
    """``execute`` is SQLAlchemy's; ``fetch`` (rows as dicts) and ``run`` (the row count; one set
    of parameters or many) take a prepared statement straight to the driver."""

    def __init__(self, engine: AsyncEngine, *, sa: AsyncConnection | None = None,
                 writer: sqlite_writer.Connection | None = None) -> None:
        self.engine = engine
        self._sa = sa
        self._writer = writer  # SQLite: the pool's one write connection, in BEGIN IMMEDIATE

    async def connection(self) -> AsyncConnection:
        """SQLAlchemy's connection for this transaction, checked out on first use (SQLite)."""
        if self._sa is None:
            assert self._writer is not None
            sa = await self.engine.connect()
            if (await sa.get_raw_connection()).driver_connection is not self._writer:
                await sa.close()  # the pool replaced the connection this transaction began on
                raise Unavailable("the SQLite write connection was replaced mid-transaction; try again")
            self._sa = sa
        return self._sa

    @overload
    async def execute(self, statement: TypedReturnsRows[*_Ts],
                      parameters: Params | Sequence[Params] | None = None) -> CursorResult[*_Ts]: ...

    @overload
    async def execute(self, statement: Executable,
                      parameters: Params | Sequence[Params] | None = None) -> CursorResult[*tuple[Any, ...]]: ...

    async def execute(self, statement: Executable, parameters: Params | Sequence[Params] | None = None,
                      ) -> CursorResult[*tuple[Any, ...]]:
        return await (await self.connection()).execute(statement, parameters)

    async def fetch(self, statement: Executable, parameters: Params) -> list[dict[str, Any]]:
        """The rows a (prepared) statement returns, as dicts."""
        if self._writer is not None and (p := self._plan(statement, parameters, many=False)) is not None:
            try:
                return p.rows(self._writer.raw.execute(p.sql, p.args(parameters)))
            except sqlite3.Error as exc:
                raise prepared.wrapped(p.sql, parameters, exc, self.engine.dialect) from exc
        if self._writer is None:
            return await prepared.fetch_pg(await self.connection(), statement, parameters)
        return [dict(r) for r in (await self.execute(statement, parameters)).mappings()]

    async def run(self, statement: Executable, parameters: Params | Sequence[Params]) -> int:
        """Run a (prepared) statement once, or once per set of parameters; the rows an UPDATE or
        DELETE changed (SQLAlchemy's psycopg inserts count none: -1)."""
        many = [parameters] if isinstance(parameters, Mapping) else list(parameters)
        if not many:
            return 0
        if self._writer is not None and (p := self._plan(statement, many[0], many=len(many) > 1)) is not None:
            raw = self._writer.raw
            try:
                if len(many) > 1:
                    return raw.executemany(p.sql, [p.args(one) for one in many]).rowcount
                return raw.execute(p.sql, p.args(many[0])).rowcount
            except sqlite3.Error as exc:
                raise prepared.wrapped(p.sql, parameters, exc, self.engine.dialect) from exc
        if self._writer is None and len(many) == 1:
            return await prepared.run_pg(await self.connection(), statement, many[0])
        return (await self.execute(statement, parameters)).rowcount

    def _plan(self, statement: Executable, params: Params, many: bool) -> prepared.Plan | None:
        return prepared.plan(statement, self.engine.dialect, sorted(params), many)

    @asynccontextmanager
    async def begin_nested(self) -> AsyncIterator[AsyncTransaction]:
        """A savepoint (SQLAlchemy's)."""
        async with (await self.connection()).begin_nested() as savepoint:
            yield savepoint

    async def end(self, commit: bool) -> None:
        """SQLite: commit or roll back the transaction, and return SQLAlchemy's connection if it
        was checked out (after the end: its return to the pool rolls back). However the end goes,
        the sqlite3 connection is left outside any transaction: a COMMIT that failed must not
        keep the database's write lock."""
        writer = self._writer
        assert writer is not None
        sa, self._sa = self._sa, None
        try:
            if writer.closed:  # the pool discarded it mid-transaction (dispose, invalidation)
                if commit:
                    raise Unavailable("the SQLite write connection closed before the transaction "
                                      "committed; nothing was written, try again")
                return
            if sa is not None and sa.in_transaction():
                await (sa.commit() if commit else sa.rollback())
            raw = writer.raw
            if raw.in_transaction:
                try:
                    raw.commit() if commit else raw.rollback()
                except sqlite3.Error as exc:
                    raise prepared.wrapped("COMMIT" if commit else "ROLLBACK", None, exc,
                                           self.engine.dialect) from exc
        finally:
            if not writer.closed and writer.raw.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    writer.raw.rollback()
            if sa is not None:
                await sa.close()

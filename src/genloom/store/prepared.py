"""Prepared statements: built once with bind parameters, compiled once, and run straight on the
driver: SQLite's write connection's sqlite3 cursor, or PostgreSQL's psycopg connection
(``fetch_pg``, ``run_pg``).

Why: through SQLAlchemy's async layer a statement costs several times the driver's own work on
it (greenlet hops, an execution context, a result object): ~0.45 ms of CPU for a one-row insert
on SQLite, where sqlite3 takes ~0.15 ms; 0.5 ms for ``SELECT 1`` on PostgreSQL, where psycopg
takes 0.2 ms, and 0.25 ms more to describe a claim's 37 returned columns. A create, a claim and a
completion are a few statements each. A prepared statement is compiled here once per set of
parameter names with SQLAlchemy's own compiler and its bind and result processors (JSON,
booleans), so what it writes and reads back is what SQLAlchemy would write and read. A statement
that needs more than that at execution time (a Python-side column default, an expanding IN list,
renamed bind names) is left to SQLAlchemy: ``plan`` answers None for it.
"""

from __future__ import annotations

import copy
import functools
import re
import sqlite3
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar, cast

from psycopg import AsyncConnection as AsyncPg
from psycopg import AsyncCursor
from psycopg.rows import TupleRow, tuple_row
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, InvalidRequestError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.types import ARRAY, TypeEngine

F = TypeVar("F", bound=Callable[..., Executable])

_PREPARED: dict[int, Executable] = {}  # by id; holding the statement keeps its id unique
_PLANS: dict[tuple[str, int, tuple[str, ...], bool], Plan | None] = {}
_POSITIONAL: weakref.WeakKeyDictionary[Dialect, Dialect] = weakref.WeakKeyDictionary()
_PLACEHOLDERS = re.compile(r"(%%|%s)")  # a literal percent sign first: "%%s" is one and an "s"


def prepared(factory: F) -> F:
    """``functools.cache`` for a statement factory, registering what it builds as prepared."""

    @functools.cache
    def build(*args: Any, **kwargs: Any) -> Executable:
        stmt = factory(*args, **kwargs)
        _PREPARED[id(stmt)] = stmt
        return stmt

    return cast(F, functools.wraps(factory)(build))


def is_prepared(stmt: Executable) -> bool:
    return _PREPARED.get(id(stmt)) is stmt


@dataclass(frozen=True, slots=True)
class Plan:
    """A statement as the driver runs it. Its positional parameters are ``names``, each the
    caller's parameter of that name or else the value ``fixed`` in the statement (``required``
    ones have none); its result ``columns``, of SQLAlchemy ``types``. Only a few of either pass
    through a processor (JSON, booleans): ``binds`` and ``reads`` list those alone, and the rest
    is copied by C code. On PostgreSQL ``reads`` is None until a run has described the result:
    psycopg's processors depend on the types the server sent (a float8 or a numeric)."""

    sql: str
    names: tuple[str, ...]
    fixed: tuple[Any, ...]
    required: frozenset[str]
    binds: tuple[tuple[int, Callable[[Any], Any]], ...]  # (position, bind processor)
    columns: tuple[str, ...]
    types: tuple[TypeEngine[Any], ...]
    reads: tuple[tuple[str, Callable[[Any], Any]], ...] | None  # (column, result processor)

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        if not params.keys() >= self.required:
            missing = sorted(self.required - params.keys())
            cause = InvalidRequestError(f"A value is required for bind parameter {missing[0]!r}")
            raise StatementError(str(cause), self.sql, dict(params), cause)  # as SQLAlchemy wraps it
        out = list(map(params.get, self.names, self.fixed))
        for i, process in self.binds:
            out[i] = process(out[i])
        return out

    def rows(self, cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
        return self.dicts(cursor.fetchall())

    def dicts(self, rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
        cols, reads = self.columns, self.reads
        assert reads is not None, "described by a run first"
        out = [dict(zip(cols, row, strict=True)) for row in rows]
        for row in out:
            for col, process in reads:
                row[col] = process(row[col])
        return out


def plan(stmt: Executable, dialect: Dialect, keys: Sequence[str], many: bool) -> Plan | None:
    """The plan of a prepared ``stmt`` for parameters named ``keys`` (None: SQLAlchemy runs it)."""
    cache_key = _key(stmt, dialect, keys, many)
    try:
        return _PLANS[cache_key]
    except KeyError:
        pass
    if not is_prepared(stmt):
        return None  # not cached: an ad-hoc statement's id may be reused by a later prepared one
    found = _compile(stmt, _positional(dialect), keys, many)
    _PLANS[cache_key] = found
    return found


def _key(stmt: Executable, dialect: Dialect, keys: Sequence[str], many: bool) -> tuple[str, int, tuple[str, ...], bool]:
    return dialect.name, id(stmt), tuple(keys), many


def _described(p: Plan, stmt: Executable, dialect: Dialect, keys: Sequence[str], type_codes: Sequence[Any]) -> Plan:
    """``p`` with the result processors of the types a run returned (kept for later runs)."""
    described = _PLANS[_key(stmt, dialect, keys, False)] = replace(
        p, reads=_reads(dialect, p.columns, p.types, type_codes))
    return described


def _reads(dialect: Dialect, columns: Sequence[str], types: Sequence[TypeEngine[Any]],
           type_codes: Sequence[Any]) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
    return tuple((column, process) for column, type_, code in zip(columns, types, type_codes, strict=True)
                 if (process := type_._cached_result_processor(dialect, code)) is not None)


def _positional(dialect: Dialect) -> Dialect:
    """``dialect`` compiling positional binds: psycopg's named ``%(x)s`` become ``%s``, so a plan's
    arguments are a list on both databases (its percent signs are doubled either way)."""
    if dialect.positional:
        return dialect
    found = _POSITIONAL.get(dialect)
    if found is None:
        found = copy.copy(dialect)
        found.positional, found.paramstyle = True, "format"
        _POSITIONAL[dialect] = found
    return found


def _compile(stmt: Executable, dialect: Dialect, keys: Sequence[str], many: bool) -> Plan | None:
    # the arguments SQLAlchemy compiles an executed statement with (Connection._execute_clauseelement)
    compiled = cast(SQLCompiler, cast(ClauseElement, stmt).compile(
        dialect=dialect, column_keys=list(keys), for_executemany=many))
    if (compiled.positiontup is None or compiled.insert_prefetch or compiled.update_prefetch
            or compiled.post_compile_params or compiled.literal_execute_params or compiled.escaped_bind_names):
        return None
    processors = compiled._bind_processors
    names = tuple(compiled.positiontup)
    params = [compiled.binds[name] for name in names]
    if any(bind.callable is not None or bind.expanding for bind in params):
        return None
    binds = tuple((i, cast(Callable[[Any], Any], process)) for i, name in enumerate(names)
                  if (process := processors.get(name)) is not None)
    columns = tuple(c.keyname for c in compiled._result_columns)
    types = tuple(c.type for c in compiled._result_columns)
    described = dialect.name == "sqlite"  # else by the first run (``_described``)
    sql = compiled.string if described else _binary_arrays(compiled.string, [bind.type for bind in params])
    return Plan(sql, names, tuple(bind.value for bind in params),
                frozenset(name for name, bind in zip(names, params, strict=True) if bind.required), binds,
                columns, types, _reads(dialect, columns, types, [None] * len(columns)) if described else None)


def _binary_arrays(sql: str, types: Sequence[TypeEngine[Any]]) -> str:
    """PostgreSQL: ``sql`` (its placeholders ``%s`` in order of ``types``, literal percent signs
    doubled) with the array parameters sent in psycopg's binary format (``%b``). As text each
    element is checked for quoting: a list of 16 job ids took 31 us to dump, 16 ``{}`` 82 us; in
    binary 13 and 17. A batch's completion sends eleven such lists."""
    if not any(isinstance(t, ARRAY) for t in types):
        return sql
    parts = _PLACEHOLDERS.split(sql)
    at = iter(types)
    return "".join(("%b" if isinstance(next(at), ARRAY) else part) if part == "%s" else part for part in parts)


def wrapped(sql: str, params: Any, exc: Exception, dialect: Dialect, invalidated: bool = False) -> DBAPIError:
    """The driver's error as SQLAlchemy raises it (IntegrityError, OperationalError, ...), so
    callers handle both paths' errors alike."""
    return cast(DBAPIError, DBAPIError.instance(sql, params, exc, type(exc), dialect=dialect,
                                                connection_invalidated=invalidated))


# -- PostgreSQL --------------------------------------------------------------------------------------

async def fetch_pg(conn: AsyncConnection, stmt: Executable, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows a (prepared) statement returns, as dicts, run on ``conn``'s psycopg connection
    (in its transaction, or autocommitted if it is in autocommit)."""
    keys = sorted(params)
    p = plan(stmt, conn.dialect, keys, False)
    if p is None:
        return [dict(r) for r in (await conn.execute(stmt, params)).mappings()]
    cursor = await _execute_pg(conn, p, params)
    if not p.columns:
        return []
    if p.reads is None:
        assert cursor.description is not None
        p = _described(p, stmt, conn.dialect, keys, [c.type_code for c in cursor.description])
    return p.dicts(await cursor.fetchall())


async def run_pg(conn: AsyncConnection, stmt: Executable, params: Mapping[str, Any]) -> int:
    """Run a (prepared) statement once as ``fetch_pg`` does; the rows it changed."""
    p = plan(stmt, conn.dialect, sorted(params), False)
    if p is None:
        return (await conn.execute(stmt, params)).rowcount
    return (await _execute_pg(conn, p, params)).rowcount


async def _driver(conn: AsyncConnection) -> AsyncPg:
    """``conn``'s psycopg connection, read straight off a connection that holds one: through
    ``get_raw_connection`` each statement paid a greenlet hop (17 us idle, more on a busy loop).
    An invalidated or closed one takes SQLAlchemy's path, which reconnects or refuses."""
    sync = conn.sync_connection
    if sync is not None and not sync.invalidated and not sync.closed:
        return cast(AsyncPg, sync.connection.driver_connection)
    return cast(AsyncPg, (await conn.get_raw_connection()).driver_connection)


async def _execute_pg(conn: AsyncConnection, p: Plan, params: Mapping[str, Any]) -> AsyncCursor[TupleRow]:
    raw = await _driver(conn)
    cursor = raw.cursor(row_factory=tuple_row)
    try:
        await cursor.execute(p.sql, p.args(params))
    except raw.Error as exc:
        lost = raw.closed or raw.broken
        if lost:  # as SQLAlchemy does on a disconnect: the server likely dropped every connection
            # of the pool made before this one, so they are all retired on their next checkout.
            # Only the pool's mark here: closing this one needs SQLAlchemy's greenlet, which
            # ``conn.invalidate`` provides.
            sync = conn.sync_connection
            if sync is not None and not sync.invalidated:
                conn.sync_engine.pool._invalidate(sync.connection, exc, _checkin=False)
            await conn.invalidate(exc)
        raise wrapped(p.sql, params, exc, conn.dialect, lost) from exc
    return cursor

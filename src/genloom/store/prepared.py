"""Prepared statements: built once with bind parameters, compiled once, and on SQLite run straight
on the write connection's sqlite3 cursor.

Why: through SQLAlchemy's async layer a statement on SQLite's write connection costs several
times SQLite's own work on it (greenlet hops, an execution context, a result object: ~0.45 ms
of CPU for a one-row insert here, where sqlite3 takes ~0.15 ms), and a create, a claim and a
completion are a few statements each. A prepared statement is compiled here once per set of
parameter names with SQLAlchemy's own compiler and its bind and result processors (JSON,
booleans), so what it writes and reads back is what SQLAlchemy would write and read. A statement
that needs more than that at execution time (a Python-side column default, an expanding IN list,
renamed bind names) is left to SQLAlchemy: ``plan`` answers None for it.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, InvalidRequestError, StatementError
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

F = TypeVar("F", bound=Callable[..., Executable])

_PREPARED: dict[int, Executable] = {}  # by id; holding the statement keeps its id unique
_PLANS: dict[tuple[int, tuple[str, ...], bool], Plan | None] = {}


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
    """A statement as sqlite3 runs it. Its positional parameters are ``names``, each the caller's
    parameter of that name or else the value ``fixed`` in the statement (``required`` ones have
    none); its result ``columns``. Only a few of either pass through a processor (JSON,
    booleans): ``binds`` and ``reads`` list those alone, and the rest is copied by C code."""

    sql: str
    names: tuple[str, ...]
    fixed: tuple[Any, ...]
    required: frozenset[str]
    binds: tuple[tuple[int, Callable[[Any], Any]], ...]  # (position, bind processor)
    columns: tuple[str, ...]
    reads: tuple[tuple[str, Callable[[Any], Any]], ...]  # (column, result processor)

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
        cols, reads = self.columns, self.reads
        out = [dict(zip(cols, row, strict=True)) for row in cursor.fetchall()]
        for row in out:
            for col, process in reads:
                row[col] = process(row[col])
        return out


def plan(stmt: Executable, dialect: Dialect, keys: Sequence[str], many: bool) -> Plan | None:
    """The plan of a prepared ``stmt`` for parameters named ``keys`` (None: SQLAlchemy runs it)."""
    cache_key = (id(stmt), tuple(keys), many)
    try:
        return _PLANS[cache_key]
    except KeyError:
        pass
    if not is_prepared(stmt):
        return None  # not cached: an ad-hoc statement's id may be reused by a later prepared one
    found = _compile(stmt, dialect, keys, many)
    _PLANS[cache_key] = found
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
    result_columns = compiled._result_columns
    reads = tuple((c.keyname, process) for c in result_columns
                  if (process := c.type._cached_result_processor(dialect, None)) is not None)
    return Plan(compiled.string, names, tuple(bind.value for bind in params),
                frozenset(name for name, bind in zip(names, params, strict=True) if bind.required), binds,
                tuple(c.keyname for c in result_columns), reads)


def wrapped(sql: str, params: Any, exc: sqlite3.Error, dialect: Dialect) -> DBAPIError:
    """sqlite3's error as SQLAlchemy raises it (IntegrityError, OperationalError, ...), so callers
    handle both paths' errors alike."""
    return cast(DBAPIError, DBAPIError.instance(sql, params, exc, sqlite3.Error, dialect=dialect))

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
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, InvalidRequestError, StatementError
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

F = TypeVar("F", bound=Callable[..., Executable])

_PREPARED: dict[int, Executable] = {}  # by id; holding the statement keeps its id unique
_PLANS: dict[tuple[int, tuple[str, ...], bool], Plan | None] = {}
_REQUIRED = object()  # a bind parameter the caller must supply


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
    """A statement as sqlite3 runs it: its SQL, where each positional parameter comes from (the
    caller's parameters, or a value fixed in the statement) with its bind processor, and the
    result columns' names and processors."""

    sql: str
    binds: tuple[tuple[str, Any, Callable[[Any], Any] | None], ...]
    columns: tuple[str, ...]
    results: tuple[Callable[[Any], Any] | None, ...]
    # derived from the above: the hot loops below run on these (see __post_init__)
    _names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _fixed: tuple[Any, ...] = field(init=False, repr=False, compare=False)
    _required: frozenset[str] = field(init=False, repr=False, compare=False)
    _binds: tuple[tuple[int, Callable[[Any], Any]], ...] = field(init=False, repr=False, compare=False)
    _reads: tuple[tuple[str, Callable[[Any], Any]], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Only a few parameters and columns have a processor (JSON, booleans): the loops visit
        those alone, and the rest is copied by C code (map, zip, dict)."""
        set_ = functools.partial(object.__setattr__, self)
        set_("_names", tuple(name for name, _, _ in self.binds))
        set_("_fixed", tuple(fixed for _, fixed, _ in self.binds))
        set_("_required", frozenset(name for name, fixed, _ in self.binds if fixed is _REQUIRED))
        set_("_binds", tuple((i, p) for i, (_, _, p) in enumerate(self.binds) if p is not None))
        set_("_reads", tuple((c, p) for c, p in zip(self.columns, self.results, strict=True) if p is not None))

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        if not params.keys() >= self._required:
            missing = sorted(self._required - params.keys())
            cause = InvalidRequestError(f"A value is required for bind parameter {missing[0]!r}")
            raise StatementError(str(cause), self.sql, dict(params), cause)  # as SQLAlchemy wraps it
        out = list(map(params.get, self._names, self._fixed))
        for i, process in self._binds:
            out[i] = process(out[i])
        return out

    def rows(self, cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
        cols, reads = self.columns, self._reads
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
    binds: list[tuple[str, Any, Callable[[Any], Any] | None]] = []
    for name in compiled.positiontup:
        bind = compiled.binds[name]
        if bind.callable is not None or bind.expanding:
            return None
        process = cast(Callable[[Any], Any] | None, processors.get(name))
        binds.append((name, _REQUIRED if bind.required else bind.value, process))
    columns = tuple(c.keyname for c in compiled._result_columns)
    results = tuple(c.type._cached_result_processor(dialect, None) for c in compiled._result_columns)
    return Plan(compiled.string, tuple(binds), columns, results)


def wrapped(sql: str, params: Any, exc: sqlite3.Error, dialect: Dialect) -> DBAPIError:
    """sqlite3's error as SQLAlchemy raises it (IntegrityError, OperationalError, ...), so callers
    handle both paths' errors alike."""
    return cast(DBAPIError, DBAPIError.instance(sql, params, exc, sqlite3.Error, dialect=dialect))

"""Prepared statements run straight on the driver (store/prepared.py, store/writes.py): SQLite's
write connection, PostgreSQL's psycopg connection. What they write and read back must be exactly
what SQLAlchemy writes and reads, in the same transaction as SQLAlchemy's statements, with
SQLAlchemy's errors; the same assertions hold on both databases."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import (
    ARRAY,
    Column,
    Float,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    bindparam,
    cast,
    event,
    func,
    insert,
    literal_column,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError

from genloom.errors import Unavailable
from genloom.store import prepared
from genloom.store import statements as q
from genloom.store.engine import Database
from genloom.store.schema import jobs

pytestmark = pytest.mark.anyio


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    yield database
    await database.dispose()


def new_job(job_id: str, **changes: Any) -> dict[str, Any]:
    return {
        "id": job_id, "project_id": "default", "user_id": "u1", "type": "probe", "mode": None,
        "input": {"prompt": "a cat", "n": [1, 2.5, None], "nested": {"ok": True}, "text": "é \"quoted\""},
        "params_hash": "h", "status": "queued", "attempt": 0, "max_attempts": 3, "round": 0, "priority": 2,
        "idempotency_key": None, "cost": 5, "charged": True, "run_after": 1000, "webhook_url": None,
        "request_id": "req_1", "created_at": 1000, "queued_at": 1000, "updated_at": 1000, "progress": 0.0,
    } | changes


async def stored(db: Database, job_id: str) -> dict[str, Any]:
    """The row as SQLAlchemy reads it, and how its JSON columns are stored (NULL or not, and the text)."""
    async with db.read() as conn:
        row = dict((await conn.execute(select(jobs).where(jobs.c.id == job_id))).mappings().one())
        raw = (await conn.execute(text("SELECT input, result IS NULL FROM jobs WHERE id = :id"),
                                  {"id": job_id})).one()
    return row | {"raw_input": str(raw[0]), "result_is_null": bool(raw[1])}


async def test_a_prepared_insert_writes_what_sqlalchemy_writes(db: Database) -> None:
    async with db.tx() as conn:
        await conn.run(q.insert_job(), new_job("job_direct"))
        await conn.execute(q.insert_job(), new_job("job_sa"))
    direct, through_sa = await stored(db, "job_direct"), await stored(db, "job_sa")
    assert direct | {"id": "x"} == through_sa | {"id": "x"}
    assert direct["input"]["text"] == "é \"quoted\"" and direct["charged"] is True


async def test_many_rows_run_as_one_executemany_that_counts_them(db: Database) -> None:
    rows = [new_job(f"job_{i}", priority=i) for i in range(5)]
    async with db.tx() as conn:
        await conn.run(q.insert_job(), rows)
        assert await conn.run(q.insert_job(), []) == 0
    stages = [{"s_id": f"job_{i}", "s_token": "t", "s_stage": f"stage{i}"} for i in (1, 3, 9)]  # job_9: none
    async with db.tx() as conn:
        await conn.execute(jobs.update().values(lease_token="t"))
        assert await conn.run(q.set_first_stage(), stages) == 2
        assert await conn.run(q.set_first_stage(), stages[0]) == 1
    async with db.read() as conn:
        found = (await conn.execute(select(jobs.c.id, jobs.c.priority, jobs.c.stage).order_by(jobs.c.id))).all()
    assert [tuple(r) for r in found] == [(f"job_{i}", i, f"stage{i}" if i in (1, 3) else None) for i in range(5)]


async def test_a_prepared_returning_reads_back_what_sqlalchemy_reads(db: Database) -> None:
    async with db.tx() as conn:
        await conn.run(q.insert_job(), new_job("job_1"))
    params = q.claim_params(worker_id="w1", token="t" * 24, now=2000, lease_until=9000, limit=4, types=None)
    async with db.tx() as conn:
        claimed = await conn.fetch(q.claim_prepared(db.is_postgres, False), params)
    assert len(claimed) == 1
    row = claimed[0]
    as_read = await stored(db, "job_1")
    assert row == {k: v for k, v in as_read.items() if k in row}
    assert set(row) == set(jobs.c.keys())
    assert row["status"] == "running" and row["lease_token"] == "t" * 24 and row["attempt"] == 1
    assert row["input"] == new_job("x")["input"] and row["charged"] is True and row["cancel_requested"] is False
    async with db.tx() as conn:  # nothing runnable is left: no rows, not an error
        assert await conn.fetch(q.claim_prepared(db.is_postgres, False), params) == []


async def test_a_transaction_of_prepared_statements_stays_out_of_sqlalchemys_pool(db: Database) -> None:
    """On SQLite the transaction begins and ends on the sqlite3 connection, and SQLAlchemy's
    connection is checked out only for a statement that needs it; on PostgreSQL the transaction
    is SQLAlchemy's from the start."""
    checkouts: list[object] = []
    event.listen(db.engine.sync_engine, "checkout", lambda *args: checkouts.append(args))
    async with db.tx() as conn:  # opens the write connection the first time
        pass
    checkouts.clear()
    async with db.tx() as conn:
        await conn.run(q.insert_job(), new_job("job_1"))
        await conn.run(q.insert_events(db.is_postgres), [{"job_id": "job_1", "project_id": "default",
                                                          "type": "queued", "ts": 1, "attempt": 0, "data": {}}])
    assert len(checkouts) == (0 if db.dialect == "sqlite" else 1)
    async with db.tx() as conn:
        await conn.run(q.insert_job(), new_job("job_2"))
        await conn.execute(select(jobs.c.id))  # not prepared: SQLAlchemy's connection
        await conn.execute(select(jobs.c.id))
    assert len(checkouts) == (1 if db.dialect == "sqlite" else 2)
    async with db.read() as reader:
        assert (await reader.execute(text("SELECT count(*) FROM jobs"))).scalar_one() == 2


@pytest.mark.parametrize("prepared_first", [True, False])
async def test_prepared_and_sqlalchemy_statements_commit_and_roll_back_together(
    db: Database, prepared_first: bool,
) -> None:
    async def write(conn: Any, n: int) -> None:
        first, second = new_job(f"job_{n}a"), new_job(f"job_{n}b")
        if prepared_first:
            await conn.run(q.insert_job(), first)
            await conn.execute(q.insert_job(), second)
        else:
            await conn.execute(q.insert_job(), first)
            await conn.run(q.insert_job(), second)

    with pytest.raises(RuntimeError):
        async with db.tx() as conn:
            await write(conn, 1)
            raise RuntimeError("the caller fails after both statements")
    async with db.tx() as conn:
        await write(conn, 2)
    async with db.read() as reader:
        ids = (await reader.execute(select(jobs.c.id).order_by(jobs.c.id))).scalars().all()
    assert ids == ["job_2a", "job_2b"]


async def test_a_prepared_statements_error_is_sqlalchemys_and_rolls_back(db: Database) -> None:
    async with db.tx() as conn:
        await conn.run(q.insert_job(), new_job("job_1"))
    with pytest.raises(IntegrityError):
        async with db.tx() as conn:
            await conn.run(q.insert_job(), new_job("job_2"))
            await conn.run(q.insert_job(), new_job("job_1"))  # a duplicate id
    with pytest.raises(IntegrityError):  # a savepoint keeps what came before it
        async with db.tx() as conn:
            await conn.run(q.insert_job(), new_job("job_3"))
            async with conn.begin_nested():
                await conn.run(q.insert_job(), new_job("job_4"))
            with pytest.raises(IntegrityError):
                async with conn.begin_nested():
                    await conn.execute(q.insert_job(), new_job("job_1"))
            await conn.run(q.insert_job(), new_job("job_1"))
    async with db.tx() as conn:
        await conn.run(q.insert_job(), new_job("job_5"))
        async with conn.begin_nested():
            await conn.run(q.insert_job(), new_job("job_6"))
        with pytest.raises(IntegrityError):
            async with conn.begin_nested():
                await conn.execute(q.insert_job(), new_job("job_1"))
    async with db.read() as reader:
        ids = (await reader.execute(select(jobs.c.id).order_by(jobs.c.id))).scalars().all()
    assert ids == ["job_1", "job_5", "job_6"]


def test_only_what_sqlite_can_run_as_compiled_is_planned() -> None:
    """Statements that need SQLAlchemy at execution time (an expanding IN list, a Python-side
    column default) or were never registered as prepared get no plan: SQLAlchemy runs them."""
    from sqlalchemy.dialects import sqlite

    dialect = sqlite.dialect(paramstyle="qmark")
    claim = q.claim_prepared(False, False)
    keys = sorted(q.claim_params(worker_id="w", token="t", now=1, lease_until=2, limit=1, types=None))
    found = prepared.plan(claim, dialect, keys, False)
    assert found is not None and found.sql.count("?") == len(found.names)
    typed_keys = sorted(q.claim_params(worker_id="w", token="t", now=1, lease_until=2, limit=1, types=["a"]))
    assert prepared.plan(q.claim_prepared(False, True), dialect, typed_keys, False) is None  # IN (...) expands
    table = Table("defaults_probe", MetaData(), Column("id", String, primary_key=True), Column("n", Integer, default=5))
    with_default = prepared.prepared(lambda: insert(table))()
    assert prepared.plan(with_default, dialect, ["id"], False) is None  # n's default is computed in Python
    plans = len(prepared._PLANS)
    assert prepared.plan(insert(table), dialect, ["id", "n"], False) is None  # never registered
    assert len(prepared._PLANS) == plans  # and not remembered: its id may later be a prepared one's
    assert prepared.plan(with_default, dialect, ["id", "n"], False) is not None  # every column given


def test_postgresql_plans_bind_by_position_and_leave_the_engines_dialect_named() -> None:
    from sqlalchemy.dialects.postgresql import psycopg

    dialect = psycopg.dialect()
    keys = sorted(q.claim_params(worker_id="w", token="t", now=1, lease_until=2, limit=1, types=None))
    found = prepared.plan(q.claim_prepared(True, False), dialect, keys, False)
    assert found is not None and found.sql.count("%s") == len(found.names) and "%(" not in found.sql
    assert dialect.paramstyle == "pyformat" and not dialect.positional
    assert "%(c_now)s" in str(q.claim_prepared(True, False).compile(dialect=dialect))


async def test_a_hot_path_read_sees_only_committed_writes(db: Database) -> None:
    """``Database.fetch`` runs on SQLite's write connection: it must wait for a write transaction
    in progress there, never read into it (here the write rolls back)."""
    inside, release = asyncio.Event(), asyncio.Event()

    async def write() -> None:
        async with db.tx() as conn:
            await conn.run(q.insert_job(), new_job("job_1", run_after=5000))
            inside.set()
            await release.wait()
            raise RuntimeError("rolled back")

    writing = asyncio.create_task(write())
    await inside.wait()
    reading = asyncio.create_task(db.fetch(q.next_run_after(), {"n_now": 0}))
    await asyncio.sleep(0.05)
    release.set()
    with pytest.raises(RuntimeError):
        await writing
    assert await reading == [{"at": None}]
    async with db.tx() as conn:
        await conn.run(q.insert_job(), new_job("job_2", run_after=7000))
    assert await db.fetch(q.next_run_after(), {"n_now": 0}) == [{"at": 7000}]
    assert await db.fetch(q.next_run_after(), {"n_now": 7000}) == [{"at": None}]


_ORPHAN = prepared.prepared(lambda: text("INSERT INTO probe_child (id, parent) VALUES (:id, :parent)"))


@pytest.mark.parametrize("through_sqlalchemy", [False, True])
async def test_a_commit_that_fails_keeps_no_lock(db: Database, db_url: str, through_sqlalchemy: bool) -> None:
    """A COMMIT can itself fail (here a deferred foreign key). The caller sees the error, nothing
    of the transaction is kept, and the database's write lock is not held afterwards: the next
    transaction of this process, and another connection's, go ahead."""
    async with db.tx() as conn:
        await conn.execute(text("CREATE TABLE probe_parent (id INTEGER PRIMARY KEY)"))
        await conn.execute(text("CREATE TABLE probe_child (id INTEGER PRIMARY KEY, parent INTEGER "
                                "REFERENCES probe_parent (id) DEFERRABLE INITIALLY DEFERRED)"))
    if db.dialect == "sqlite":  # the schema's SQLite connections leave foreign keys off
        async with db.engine.connect() as sa:
            (await sa.get_raw_connection()).driver_connection.raw.execute("PRAGMA foreign_keys=ON")
    with pytest.raises(IntegrityError):
        async with db.tx() as conn:
            await conn.run(q.insert_job(), new_job("job_1"))
            if through_sqlalchemy:
                await conn.execute(text("INSERT INTO probe_child (id, parent) VALUES (1, 99)"))
            else:
                assert prepared.plan(_ORPHAN(), db.engine.dialect, ["id", "parent"], False) or db.is_postgres
                await conn.run(_ORPHAN(), {"id": 1, "parent": 99})
    other = Database(db_url)
    try:
        async with asyncio.timeout(5):
            async with other.tx() as conn:
                await conn.run(q.insert_job(), new_job("job_2"))
    finally:
        await other.dispose()
    async with db.tx() as conn:
        await conn.run(q.insert_job(), new_job("job_3"))
    async with db.read() as reader:
        assert (await reader.execute(select(jobs.c.id).order_by(jobs.c.id))).scalars().all() == ["job_2", "job_3"]
        assert (await reader.execute(text("SELECT count(*) FROM probe_child"))).scalar_one() == 0


async def test_a_transaction_whose_connection_closes_under_it_commits_nothing(db: Database) -> None:
    """SQLite: the pool closing the write connection mid-transaction (a dispose) loses the
    transaction, and the caller is told to try again instead of seeing it committed. PostgreSQL's
    transaction holds its connection checked out, which a dispose leaves alone: it commits."""
    async with db.tx() as conn:
        pass
    with pytest.raises(Unavailable) if db.dialect == "sqlite" else contextlib.nullcontext():
        async with db.tx() as conn:
            await conn.run(q.insert_job(), new_job("job_1"))
            await db.engine.dispose()
    async with db.tx() as conn:
        await conn.run(q.insert_job(), new_job("job_2"))
    async with db.read() as reader:
        ids = (await reader.execute(select(jobs.c.id).order_by(jobs.c.id))).scalars().all()
    assert ids == (["job_2"] if db.dialect == "sqlite" else ["job_1", "job_2"])


async def test_a_missing_parameter_is_refused_as_sqlalchemy_refuses_it(db: Database) -> None:
    """A required bind parameter left out writes nothing, on either path, with SQLAlchemy's error."""
    params = {"f_id": "job_1", "f_token": "t", "f_result_key": None, "f_result": None}  # no f_now
    with pytest.raises(StatementError, match="f_now"):
        async with db.tx() as conn:
            await conn.run(q.finish_prepared(), params)


async def test_an_empty_object_is_stored_as_json_and_read_back_as_a_new_dict(db: Database) -> None:
    """The engines' JSON fast path for ``{}``: the same text as json.dumps, and each read its own dict."""
    async with db.tx() as conn:
        await conn.run(q.insert_job(), [new_job("job_a", input={}), new_job("job_b", input={})])
    a, b = await stored(db, "job_a"), await stored(db, "job_b")
    assert a["raw_input"] == b["raw_input"] == "{}"
    assert a["input"] == b["input"] == {}
    a["input"]["changed"] = True
    assert b["input"] == {}


_PERCENT = prepared.prepared(lambda: select(
    literal_column("'100%'").label("pct"),
    cast(bindparam("ratio", type_=Float), Numeric(4, 2, asdecimal=False)).label("ratio"),  # a numeric read as float
))


@pytest.mark.postgresql_only
async def test_postgresql_runs_prepared_statements_on_psycopg_as_sqlalchemy_would(db: Database) -> None:
    """``fetch_pg``/``run_pg``: the compiled statement on the psycopg connection, outside SQLAlchemy's
    execution (no cursor event), reading back what SQLAlchemy reads: JSON, booleans, floats (whose
    processor depends on the type the server sent, a float8 or a numeric) and a literal '%'."""
    executed: list[str] = []
    for engine in (db.engine, db.reader):  # writes' pool and the autocommitted one
        event.listen(engine.sync_engine, "before_cursor_execute", lambda *args: executed.append(args[2]))
    params = q.claim_params(worker_id="w1", token="t" * 24, now=2000, lease_until=9000, limit=4, types=None)
    async with db.kept("claim") as conn:
        assert await prepared.run_pg(conn, q.insert_job(), new_job("job_1")) == 1
        claimed = await prepared.fetch_pg(conn, q.claim_started_pg(False), params | {"c_started": {"worker": "w1"}})
        again = await prepared.fetch_pg(conn, _PERCENT(), {"ratio": 0.5})
        assert await prepared.fetch_pg(conn, _PERCENT(), {"ratio": 1.25}) == [{"pct": "100%", "ratio": 1.25}]
    assert executed == []
    row = claimed[0]
    assert row == {k: v for k, v in (await stored(db, "job_1")).items() if k in row}
    assert row["input"] == new_job("x")["input"] and row["charged"] is True and row["cancel_requested"] is False
    assert isinstance(row["progress"], float) and row["progress"] == 0.0
    assert again == [{"pct": "100%", "ratio": 0.5}] and isinstance(again[0]["ratio"], float)
    executed.clear()
    async with db.autocommit() as conn:  # through SQLAlchemy: the same answer
        assert (await conn.execute(_PERCENT(), {"ratio": 0.5})).mappings().all() == again
    assert len(executed) == 1


_ARRAYS = prepared.prepared(lambda: select(
    literal_column("'50%s'").label("pct"),  # a literal percent sign before an "s": not a placeholder
    func.array_length(bindparam("texts", type_=ARRAY(String)), 1).label("n"),
    bindparam("texts", type_=ARRAY(String)).label("texts"),
    bindparam("nothing", type_=ARRAY(Integer)).label("nothing"),
    bindparam("none", type_=ARRAY(String)).label("none"),
    bindparam("label", type_=String).label("label"),
))


@pytest.mark.postgresql_only
async def test_postgresql_array_parameters_go_in_binary_and_arrive_as_sent(db: Database) -> None:
    """Array parameters are sent in psycopg's binary format (``%b``; as text each element is
    checked for quoting): strings that text would quote, the string 'NULL', NULLs, an all-NULL
    array and an empty one arrive as sent, and the other parameters and a literal '%s' are as
    they were."""
    p = prepared.plan(_ARRAYS(), db.reader.dialect, ["label", "none", "nothing", "texts"], False)
    assert p is not None and p.sql.count("%b") == 4 and "'50%%s'" in p.sql and "%s::VARCHAR AS label" in p.sql
    texts = ["{}", 'a "quoted", {braced} \\ value', "NULL", None, "", "ünïcode"]
    params = {"texts": texts, "nothing": [], "none": [None, None], "label": "plain"}
    async with db.kept("probe") as conn:
        found = await prepared.fetch_pg(conn, _ARRAYS(), params)
        assert found == [{"pct": "50%s", "n": len(texts), "texts": texts, "nothing": [], "none": [None, None],
                          "label": "plain"}]
        assert (await conn.execute(_ARRAYS(), params)).mappings().all() == found  # as SQLAlchemy sends them


@pytest.mark.postgresql_only
async def test_postgresql_prepared_errors_are_sqlalchemys_and_a_lost_connection_is_invalidated(db: Database) -> None:
    async with db.kept("probe") as conn:
        await prepared.run_pg(conn, q.insert_job(), new_job("job_1"))
        with pytest.raises(IntegrityError):
            await prepared.run_pg(conn, q.insert_job(), new_job("job_1"))
    async with db.autocommit() as conn:
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        async with db.autocommit() as other:
            await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(DBAPIError) as lost:
            await prepared.fetch_pg(conn, q.claim_started_pg(False), q.claim_params(
                worker_id="w1", token="t", now=2000, lease_until=9000, limit=4, types=None) | {"c_started": {}})
        assert lost.value.connection_invalidated and conn.invalidated
    async with db.kept("probe") as conn:  # the pool hands out a live connection again
        assert await prepared.run_pg(conn, q.insert_job(), new_job("job_2")) == 1


@pytest.mark.postgresql_only
async def test_a_lost_postgresql_connection_retires_the_pools_older_ones(
        db: Database, caplog: pytest.LogCaptureFixture) -> None:
    """A server restart drops every connection: as on SQLAlchemy's own path, the first statement
    that finds its connection lost retires the pool's older ones, so the next checkout connects
    afresh instead of failing on another dead connection; and the lost one is closed without the
    pool logging an error (closing it outside SQLAlchemy's greenlet did)."""
    caplog.set_level(logging.WARNING, logger="sqlalchemy")
    async with db.autocommit() as first, db.autocommit() as second:
        pids = [(await c.execute(text("SELECT pg_backend_pid()"))).scalar_one() for c in (first, second)]
    async with db.engine.connect() as other:  # another pool's connection ends them both
        for pid in pids:
            await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    await asyncio.sleep(0.2)
    with pytest.raises(Unavailable):  # the lost connection, as callers see it
        async with db.autocommit() as conn:
            await prepared.run_pg(conn, q.insert_job(), new_job("job_1"))
    async with db.autocommit() as conn:
        assert await prepared.run_pg(conn, q.insert_job(), new_job("job_2")) == 1
    assert [r.getMessage() for r in caplog.records if r.name.startswith("sqlalchemy")] == []

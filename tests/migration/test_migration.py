"""Migration parity (Alembic head equals schema.metadata on both databases) and an EXPLAIN
guard on PostgreSQL that the claim is served by ix_jobs_claim, not a scan of the jobs table."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, insert, pool, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError

from genloom.events import EventLog
from genloom.store import statements as q
from genloom.store.engine import Database, sync_url
from genloom.store.migrate import alembic_config, current, head, is_current, upgrade
from genloom.store.schema import jobs, metadata, on_dialect
from tests.dbs import PgTemplates, libpq, pg_admin


def diffs(url: str) -> list[Any]:
    engine = create_engine(sync_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            # Server defaults are compared on PostgreSQL only: Alembic's SQLite comparison reports
            # DEFAULT '' against server_default="" as a change even when they are the same.
            name = engine.dialect.name
            opts = {"compare_type": True, "compare_server_default": name == "postgresql",
                    "include_object": lambda obj, *_: on_dialect(obj, name)}
            ctx = MigrationContext.configure(conn, opts=opts)
            return list(compare_metadata(ctx, metadata))
    finally:
        engine.dispose()


def test_head_is_applied(db_url: str) -> None:
    assert head()
    assert current(db_url) == head()
    assert is_current(db_url)


def test_alembic_head_equals_the_schema(db_url: str) -> None:
    assert diffs(db_url) == []


def test_upgrade_is_idempotent(db_url: str) -> None:
    upgrade(db_url)
    assert current(db_url) == head()
    assert diffs(db_url) == []


def test_a_fresh_sqlite_file_migrates_to_the_schema(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'nested' / 'fresh.db'}"
    upgrade(url)
    assert is_current(url)
    assert diffs(url) == []


# --- the EXPLAIN guard ----------------------------------------------------------------------

ROWS = 5000


@pytest.fixture
def pg_url(pg_templates: PgTemplates) -> Iterator[str]:
    url = pg_templates.clone()
    yield url
    pg_templates.drop(url)


def seed_history(url: str, runnable: int) -> None:
    """A table like a running service's: ``runnable`` queued or pending jobs among finished ones."""
    rows = []
    for i in range(ROWS):
        if i % (ROWS // runnable) == 0:
            status = ("queued", "pending")[i % 2]
        else:
            status = ("completed", "failed", "cancelled", "running")[i % 4]
        rows.append({
            "id": f"job_{i:06d}", "project_id": "prj", "user_id": "", "type": "noop", "input": {},
            "params_hash": "x" * 64, "status": status, "priority": i % 3, "run_after": 1_000_000 + i,
            "created_at": 1_000_000 + i, "updated_at": 1_000_000 + i,
        })
    engine = create_engine(sync_url(url), poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(insert(jobs), rows)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE jobs"))
    finally:
        engine.dispose()


def explain(url: str, stmt: Any) -> Any:
    """The plan PostgreSQL picks for ``stmt`` with its values inlined."""
    compiled = stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    engine = create_engine(sync_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            plan = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + str(compiled).replace("%", "%%")).scalar_one()
    finally:
        engine.dispose()
    return json.loads(plan) if isinstance(plan, str) else plan


def scans(plan: Any) -> list[tuple[str, str]]:
    """(node type, index or relation) for every scan in a plan, outermost first."""
    out: list[tuple[str, str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "Scan" in str(node.get("Node Type", "")):
                out.append((node["Node Type"], node.get("Index Name") or node.get("Relation Name") or ""))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(plan)
    return out


#: A quiet service (a few runnable among thousands of finished jobs) and one with a backlog.
BACKLOGS = [40, 4000]


@pytest.mark.parametrize("runnable", BACKLOGS, ids=[f"{n}-runnable" for n in BACKLOGS])
@pytest.mark.parametrize("types", [None, ["noop", "motion"]], ids=["any-type", "by-type"])
def test_claim_uses_the_claim_index(pg_url: str, runnable: int, types: list[str] | None) -> None:
    seed_history(pg_url, runnable)
    stmt = q.claim_batch(postgres=True, worker_id="w", token="t" * 24, now=2_000_000, lease_until=2_030_000,
                         limit=16, types=types)
    found = scans(explain(pg_url, stmt))
    assert ("Seq Scan", "jobs") not in found, found
    assert any(name == "ix_jobs_claim" for _, name in found), found


def explain_generic(url: str, stmt: Any) -> Any:
    """The generic plan PostgreSQL makes for ``stmt`` as a prepared statement (psycopg prepares a
    statement it has run five times, and PostgreSQL may then plan it once for any parameters)."""
    compiled = stmt.compile(dialect=postgresql.dialect(paramstyle="numeric_dollar"))
    values = [compiled.params[name] for name in compiled.positiontup]
    engine = create_engine(sync_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
            conn.exec_driver_sql(f"PREPARE generic AS {compiled}".replace("%", "%%"))
            args = ", ".join(str(int(v)) for v in values)
            plan = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) EXECUTE generic({args})").scalar_one()
    finally:
        engine.dispose()
    return json.loads(plan) if isinstance(plan, str) else plan


def test_the_reconcilers_lease_query_uses_the_partial_lease_index(pg_url: str) -> None:
    """ix_jobs_lease holds running jobs only; a query must name the state as a literal for a
    generic plan to use it (a bound state would be a scan of every job, each minute)."""
    seed_history(pg_url, 40)
    found = scans(explain_generic(pg_url, q.expired_leases(now=2_000_000, limit=100)))
    assert ("Seq Scan", "jobs") not in found, found
    assert any(name == "ix_jobs_lease" for _, name in found), found


# --- 0002: events written before the tx column stay in the feed --------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    templates: PgTemplates = request.getfixturevalue("pg_templates")
    name = f"genloom_m_{uuid.uuid4().hex[:12]}"
    pg_admin(templates.server_url, f'CREATE DATABASE "{name}"')
    yield libpq(templates.server_url, name)
    pg_admin(templates.server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.anyio
async def test_events_from_before_0002_are_still_in_the_feed(empty_url: str) -> None:
    upgrade(empty_url, "0001")
    engine = create_engine(sync_url(empty_url), poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            for i in range(3):
                conn.execute(text("INSERT INTO job_events (job_id, project_id, type, ts, data) "
                                  "VALUES (:j, 'prj_old', 'queued', :ts, '{}')"), {"j": f"job_{i}", "ts": i})
    finally:
        engine.dispose()
    upgrade(empty_url)
    assert diffs(empty_url) == []
    db = Database(empty_url)
    try:
        log = EventLog(db)
        events, head = await log.feed("prj_old")
        assert [e.job_id for e in events] == ["job_0", "job_1", "job_2"]
        assert head == await log.feed_head("prj_old")
    finally:
        await db.dispose()


# --- 0003: partial job indexes -------------------------------------------------------------------

def _job(job_id: str, key: str | None) -> dict[str, Any]:
    return {"id": job_id, "project_id": "prj", "user_id": "u", "type": "noop", "input": {"n": 1},
            "params_hash": "x" * 64, "status": "running", "idempotency_key": key, "run_after": 1,
            "lease_expires_at": 5, "created_at": 1, "updated_at": 1}


def test_0003_keeps_the_jobs_and_an_idempotency_key_stays_unique(empty_url: str) -> None:
    upgrade(empty_url, "0002")
    engine = create_engine(sync_url(empty_url), poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(insert(jobs), [_job("job_a", "key-1"), _job("job_b", None)])
        upgrade(empty_url)
        assert diffs(empty_url) == []
        with engine.begin() as conn:
            kept = conn.execute(text("SELECT id, idempotency_key, input FROM jobs ORDER BY id")).all()
            assert [(r[0], r[1]) for r in kept] == [("job_a", "key-1"), ("job_b", None)]
            conn.execute(insert(jobs), [_job("job_c", None), _job("job_d", None)])  # no key: no conflict
            expired = conn.execute(q.expired_leases(now=10, limit=10)).scalars().all()
            assert sorted(expired) == ["job_a", "job_b", "job_c", "job_d"]
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(insert(jobs), [_job("job_e", "key-1")])
        command.downgrade(alembic_config(empty_url), "0002")  # and back: the jobs stay
        with engine.begin() as conn:
            assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 4
        upgrade(empty_url)
        assert diffs(empty_url) == []
    finally:
        engine.dispose()

"""Every statement that touches the jobs, events and ledger tables, each named for its purpose.

The dialect branches here are the claim (SKIP LOCKED vs a single UPDATE … RETURNING), the
transaction-id stamp and order of the event feed, wake-up NOTIFYs, and PostgreSQL's hot writes
as single statements (the ``*_pg`` builders; SQLite runs the same writes as a transaction of
portable statements). Everything else is portable Core.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import (
    ARRAY,
    CTE,
    JSON,
    BigInteger,
    ColumnElement,
    Delete,
    Insert,
    Integer,
    Select,
    String,
    Text,
    TextClause,
    Update,
    and_,
    bindparam,
    case,
    cast,
    delete,
    exists,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.sql.elements import BindParameter

from genloom.lifecycle import EventType, Status
from genloom.store.prepared import prepared
from genloom.store.schema import (
    RUNNABLE,
    api_keys,
    credit_accounts,
    credit_ledger,
    job_events,
    jobs,
    locks,
    projects,
    webhook_endpoints,
)

JOBS_CHANNEL = "genloom_jobs"
EVENTS_CHANNEL = "genloom_events"
CLAIMABLE = (Status.QUEUED.value, Status.PENDING.value)


# --- jobs: single rows -----------------------------------------------------------------------

@prepared
def insert_job() -> Insert:
    """Executed with the row as parameters: one compiled statement for every create."""
    return insert(jobs)


def select_job(job_id: str, project_id: str | None = None) -> Select[Any]:
    stmt = select(jobs).where(jobs.c.id == job_id)
    if project_id is not None:
        stmt = stmt.where(jobs.c.project_id == project_id)
    return stmt


def select_by_provider_ref(provider: str, ref: str) -> Select[Any]:
    return select(jobs).where(jobs.c.provider_ref == ref, jobs.c.provider == provider)


@prepared
def job_in_project() -> Select[Any]:
    """``select_job`` with bound parameters (``j_id``, ``j_project``), for the writes that look first."""
    return select(jobs).where(jobs.c.id == bindparam("j_id"), jobs.c.project_id == bindparam("j_project"))


@prepared
def lock_job(postgres: bool) -> Select[Any]:
    """Read a job (``l_id``) and hold its row until commit (SQLite's BEGIN IMMEDIATE already
    serialises)."""
    stmt = select(jobs).where(jobs.c.id == bindparam("l_id"))
    return stmt.with_for_update() if postgres else stmt


@prepared
def select_by_idempotency() -> Select[Any]:
    """The job an idempotency key names (``k_project``, ``k_user``, ``k_key``)."""
    return select(jobs).where(jobs.c.project_id == bindparam("k_project"), jobs.c.user_id == bindparam("k_user"),
                              jobs.c.idempotency_key == bindparam("k_key"))


def guarded_transition(
    job_id: str, sources: Collection[str], values: dict[str, Any], lease_token: str | None = None
) -> Update:
    """The write that enforces the graph again: it only matches a row in an allowed source state
    (and, for a worker, only while its lease token is current)."""
    where = [jobs.c.id == job_id, jobs.c.status.in_(list(sources))]
    if lease_token is not None:
        where.append(jobs.c.lease_token == lease_token)
    return update(jobs).where(*where).values(**values).returning(*jobs.c)


def fenced_touch(job_id: str, lease_token: str, values: dict[str, Any]) -> Update:
    """A worker's non-transition write (stage, progress, provider ref): refused once its lease is gone."""
    return (
        update(jobs)
        .where(jobs.c.id == job_id, jobs.c.lease_token == lease_token, jobs.c.status == Status.RUNNING.value)
        .values(**values)
        .returning(*jobs.c)
    )


@prepared
def set_first_stage() -> Update:
    """The stage a claim starts its jobs on (executemany: s_id, s_token, s_stage), in the claim's
    own transaction; fenced like every worker write."""
    return (update(jobs)
            .where(jobs.c.id == bindparam("s_id"), jobs.c.lease_token == bindparam("s_token"))
            .values(stage=bindparam("s_stage")))


def touch_job(job_id: str, now: int) -> Update:
    """Take a job's row lock for an event that changes nothing else (webhook outcomes)."""
    return update(jobs).where(jobs.c.id == job_id).values(updated_at=now).returning(*jobs.c)


# --- the queue --------------------------------------------------------------------------------

def claim_batch(
    *, postgres: bool, worker_id: str, token: str, now: int, lease_until: int, limit: int,
    types: Collection[str] | None,
) -> Update:
    """Take the highest-priority, oldest runnable jobs and lease them to one worker."""
    return _claim(postgres, worker_id, token, now, lease_until, limit, None if types is None else list(types))


@prepared
def claim_prepared(postgres: bool, typed: bool) -> Update:
    """``claim_batch`` built once with bind parameters, for ``claim_params``: the queue's hot path
    then pays no statement construction and no cache-key walk (SQLAlchemy memoises it per object)."""
    return _claim(postgres, bindparam("c_worker"), bindparam("c_token"), bindparam("c_now"),
                  bindparam("c_until"), bindparam("c_limit"), bindparam("c_types", expanding=True) if typed else None)


def claim_params(
    *, worker_id: str, token: str, now: int, lease_until: int, limit: int, types: Collection[str] | None
) -> dict[str, Any]:
    params = {"c_worker": worker_id, "c_token": token, "c_now": now, "c_until": lease_until, "c_limit": limit}
    return params if types is None else params | {"c_types": list(types)}


def _claimable() -> ColumnElement[bool]:
    """``status IN ('queued', 'pending')`` with the states as SQL literals, not bind parameters: the
    predicate of the partial claim index, which the planner can then prove for a prepared
    statement (PostgreSQL's generic plan; psycopg prepares a statement on its fifth use) and for
    SQLite. With parameters the generic plan cannot use the index: two sequential scans."""
    return jobs.c.status.in_([literal_column(f"'{s}'") for s in CLAIMABLE])


def _claim(postgres: bool, worker_id: Any, token: Any, now: Any, lease_until: Any, limit: Any, types: Any) -> Update:
    if postgres:
        pick = (
            select(jobs.c.id)
            .where(_claimable(), jobs.c.run_after <= now)
            .order_by(jobs.c.priority.desc(), jobs.c.run_after, jobs.c.created_at)
            .limit(limit)
        )
        if types is not None:
            pick = pick.where(jobs.c.type.in_(types))
        # A MATERIALIZED CTE locks and picks exactly ``limit`` rows once: with ``IN (subquery)`` the
        # planner may re-run the subquery per outer row and lease more jobs than asked for.
        # PostgreSQL re-checks the state of the rows it locked.
        picked = pick.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
        target = update(jobs).where(jobs.c.id == picked.c.id, _claimable())
    else:
        # SQLite runs the statement under its one write lock; a second status test there makes it
        # walk the rows by status instead of taking the ones the subquery picked by primary key.
        target = update(jobs).where(jobs.c.id.in_(_sqlite_pick(now, limit, types)))
    return (
        target
        .values(
            status=Status.RUNNING.value,
            attempt=jobs.c.attempt + 1,
            lease_owner=worker_id,
            lease_token=token,
            lease_expires_at=lease_until,
            started_at=func.coalesce(jobs.c.started_at, now),
            updated_at=now,
            stage=None,
            progress=0.0,
        )
        .returning(*jobs.c)
    )


def _sqlite_pick(now: Any, limit: Any, types: Any) -> Any:
    """SQLite's pick of the jobs to claim, through the claim index by name (``INDEXED BY``, which
    SQLAlchemy does not render). SQLite's planner otherwise took the status index and sorted every
    runnable job on each claim: 166 us of SQLite a claimed job with 2,000 queued, 334 with 10,000;
    through the claim index it stops after ``limit`` rows (79 and 88). It is an error, not a slow
    claim, if the index ever stops matching this query."""
    where = f"{RUNNABLE} AND run_after <= :c_now" + (" AND type IN :c_types" if types is not None else "")
    pick = text(f"SELECT id FROM jobs INDEXED BY ix_jobs_claim WHERE {where} "
                "ORDER BY priority DESC, run_after, created_at LIMIT :c_limit")
    binds = [_bound("c_now", now, BigInteger), _bound("c_limit", limit, Integer)]
    if types is not None:
        binds.append(types if isinstance(types, BindParameter) else bindparam("c_types", types, expanding=True))
    return pick.bindparams(*binds).columns(jobs.c.id).scalar_subquery()


def _bound(name: str, value: Any, type_: Any) -> BindParameter[Any]:
    return value if isinstance(value, BindParameter) else bindparam(name, value, type_=type_)


# --- PostgreSQL: a write and its events in one statement -----------------------------------
# Data-modifying CTEs run once and to completion, referenced or not, inside the statement's own
# transaction: executed in autocommit mode each of these is one round trip and one commit where
# BEGIN, the writes, the event insert and COMMIT were five. The event rows are stamped and
# NOTIFY their job as ``insert_events`` does; they are only written for rows the write matched,
# and the row locks the write takes order them per job as a transaction would.

NOTIFY_PAYLOAD = 7000  # bytes; PostgreSQL refuses a NOTIFY payload of 8000 or more
_EVENT_COLUMNS = ["job_id", "project_id", "type", "ts", "attempt", "stage", "request_id", "data", "tx"]


def _event_insert(source: Select[Any], ids: ColumnElement[str], *, jobs_ready: bool = False,
                  cols: Sequence[str] = _EVENT_COLUMNS) -> Insert:
    """Insert ``source`` as events and wake their followers with one NOTIFY naming the jobs
    ``ids`` (a column of the CTE the events are for): every row notifies the same payload, which
    PostgreSQL folds into one. Every listening process reads each notification, and one per job
    was every worker parsing the wake-ups of the whole cluster's jobs. More jobs than one payload
    holds: a NOTIFY per job."""
    together = select(func.string_agg(ids.distinct(), literal_column("','"))).scalar_subquery()
    payload = case((func.octet_length(together) <= NOTIFY_PAYLOAD, together), else_=job_events.c.job_id)
    wakes = [func.pg_notify(EVENTS_CHANNEL, payload)]
    if jobs_ready:
        wakes.append(func.pg_notify(JOBS_CHANNEL, literal_column("''")))
    return insert(job_events).from_select(list(cols), source).returning(*wakes)


def _one_event_each(written: CTE, type_: EventType, ts: ColumnElement[int], data: ColumnElement[Any] | None = None,
                    *, jobs_ready: bool = False) -> CTE:
    """The same event (no stage) for every row ``written`` returned (id, project, attempt, request id)."""
    rows = select(
        written.c.id, written.c.project_id, literal(type_.value), ts, written.c.attempt, literal(None, String),
        written.c.request_id, literal({}, JSON) if data is None else data, _CURRENT_TX,
    )
    return _event_insert(rows, written.c.id, jobs_ready=jobs_ready).cte(f"{type_.value}_events")


@prepared
def claim_started_pg(typed: bool) -> Select[Any]:
    """``claim_prepared`` plus each claimed job's ``started`` event (data: ``c_started``)."""
    claimed = claim_prepared(True, typed).cte("claimed")
    started = _one_event_each(claimed, EventType.STARTED, bindparam("c_now", type_=BigInteger),
                              bindparam("c_started", type_=JSON))
    return select(claimed).add_cte(started)


@prepared
def start_stages_pg() -> Select[Any]:
    """Record the stage each of a claim's jobs starts on (arrays ``s_ids``, ``s_stages``, and
    ``s_events``: the start event's type or NULL), fenced by the claim's token ``s_token``.
    Returns the ids written."""
    plan = select(
        func.unnest(bindparam("s_ids", type_=ARRAY(String))).label("id"),
        func.unnest(bindparam("s_stages", type_=ARRAY(String))).label("stage"),
        func.unnest(bindparam("s_events", type_=ARRAY(String))).label("event"),
    ).cte("plan")
    set_stage = (
        update(jobs)
        .where(jobs.c.id == plan.c.id, jobs.c.lease_token == bindparam("s_token"),
               jobs.c.status == Status.RUNNING.value)
        .values(stage=plan.c.stage)
        .returning(jobs.c.id, jobs.c.project_id, jobs.c.attempt, jobs.c.request_id,
                   plan.c.stage.label("p_stage"), plan.c.event.label("p_event"))
        .cte("set_stage")
    )
    starts = select(
        set_stage.c.id, set_stage.c.project_id, set_stage.c.p_event, bindparam("s_now", type_=BigInteger),
        set_stage.c.attempt, set_stage.c.p_stage, set_stage.c.request_id, literal({}, JSON), _CURRENT_TX,
    ).where(set_stage.c.p_event.is_not(None))
    return select(set_stage.c.id).add_cte(_event_insert(starts, set_stage.c.id).cte("stage_events"))


@prepared
def create_pg(columns: tuple[str, ...], billed: bool) -> Select[Any]:
    """Insert a job and its ``queued`` event, waking claimers. Parameters: ``j_<column>`` for each
    of ``columns`` (prefixed: an UPDATE in the statement would set any column its parameters are
    named for). ``billed``: only if the balance of (``j_project_id``, ``j_user_id``) covers
    ``j_cost``, debited with its ledger entry in the same statement; no row returned then means
    insufficient credits, and nothing was written."""
    row = [bindparam(f"j_{c}", type_=jobs.c[c].type) for c in columns]
    cost, at = bindparam("j_cost", type_=BigInteger), bindparam("j_created_at", type_=BigInteger)
    if billed:
        a = credit_accounts.c
        debit = (
            update(credit_accounts)
            .where(a.project_id == bindparam("j_project_id"), a.user_id == bindparam("j_user_id"), a.balance >= cost)
            .values(balance=a.balance - cost)
            .returning(a.project_id)
            .cte("debit")
        )
        job = insert(jobs).from_select(list(columns), select(*row).select_from(debit))
    else:
        job = insert(jobs).values(dict(zip(columns, row, strict=True)))
    created = job.returning(jobs.c.id, jobs.c.project_id, jobs.c.user_id, jobs.c.attempt, jobs.c.round,
                            jobs.c.request_id).cte("created")
    stmt = select(created.c.id).add_cte(_one_event_each(created, EventType.QUEUED, at, jobs_ready=True))
    if billed:
        entry = select(created.c.project_id, created.c.user_id, created.c.id, literal("charge"), created.c.round,
                       -cost, at)
        ledger_cols = ["project_id", "user_id", "job_id", "reason", "round", "amount", "created_at"]
        stmt = stmt.add_cte(insert(credit_ledger).from_select(ledger_cols, entry).cte("charge"))
    return stmt


def _quiet() -> ColumnElement[bool]:
    """The job owes no webhook delivery: no ``webhook_url`` and no enabled endpoint in its project."""
    endpoint = exists().where(webhook_endpoints.c.project_id == jobs.c.project_id, webhook_endpoints.c.enabled)
    return and_(jobs.c.webhook_url.is_(None), ~endpoint)


def finished(now: Any, result_key: Any, result: Any) -> dict[str, Any]:
    """What completing a job sets (``Jobs.apply`` for ``completed``, written out), as SQL
    expressions or, given plain values, as the values a completed row then holds."""
    return {"status": Status.COMPLETED.value, "completed_at": now, "updated_at": now, "progress": 1.0,
            "stage": None, "lease_owner": None, "lease_token": None, "lease_expires_at": None,
            "error_code": None, "error_message": None, "result_key": result_key, "result": result}


@prepared
def finish_prepared(returning: bool = True) -> Update:
    """A worker's completion of one job (``f_id``, fenced by ``f_token``; ``f_result_key``,
    ``f_result``, ``f_now``) inside the caller's transaction, which writes its events. Built
    once. It matches nothing for a job with a cancel request or a lost lease. ``returning``:
    the completed row comes back (else only the count of rows it matched)."""
    now = bindparam("f_now", type_=BigInteger)
    stmt = (
        update(jobs)
        .where(jobs.c.id == bindparam("f_id"), jobs.c.lease_token == bindparam("f_token"),
               jobs.c.status == Status.RUNNING.value, jobs.c.cancel_requested.is_(False))
        .values(finished(now, bindparam("f_result_key", type_=String),
                         bindparam("f_result", type_=jobs.c.result.type)))
    )
    return stmt.returning(*jobs.c) if returning else stmt


@functools.cache
def sqlite_has_json() -> bool:
    """Whether this process's SQLite has its JSON functions (built in since 3.38, and compiled in
    by the usual builds before that): ``finish_batch_sqlite`` needs them."""
    with contextlib.closing(sqlite3.connect(":memory:")) as conn:
        try:
            conn.execute("SELECT json_extract(value, '$[0]') FROM json_each('[[1]]')").fetchall()
        except sqlite3.OperationalError:
            return False
    return True


@prepared
def finish_batch_sqlite() -> Update:
    """SQLite: ``finish_prepared(returning=False)`` for many jobs in one statement, where each
    was a statement of its own. ``f_batch`` is a JSON array of [job id, lease token, result key,
    result as the column stores it (text, or null)]; ``f_now`` stamps them. It returns the ids it
    completed: a job with a cancel request or a lost lease matches nothing, as there."""
    item = func.json_each(bindparam("f_batch", type_=String)).table_valued("value")
    field = [func.json_extract(item.c.value, f"$[{i}]") for i in range(4)]
    plan = select(field[0].label("id"), field[1].label("token"), field[2].label("result_key"),
                  field[3].label("result")).select_from(item).subquery("plan")
    now = bindparam("f_now", type_=BigInteger)
    return (
        update(jobs)
        .where(jobs.c.id == plan.c.id, jobs.c.lease_token == plan.c.token, jobs.c.status == Status.RUNNING.value,
               jobs.c.cancel_requested.is_(False))
        .values(finished(now, plan.c.result_key, plan.c.result))
        .returning(jobs.c.id)
    )


@prepared
def finish_quiet_pg(rows: bool = True) -> Select[Any]:
    """Workers' completions of many jobs, each with its events (the stage's pending ones, then
    ``completed``), in one statement. The jobs as arrays ``f_ids``, ``f_tokens`` (each job fenced
    by its lease token), ``f_result_keys``, ``f_results`` (JSON text); ``f_now`` stamps them. The
    events as arrays ``e_ids`` (the job each is for), ``e_types``, ``e_stages``, ``e_latency``,
    ``e_codes``, ``e_msgs``, ``e_data`` (JSON text), written in array order. A job with a cancel
    request, one owed a webhook delivery, or one whose lease is gone matches nothing and gets no
    events: the caller's transaction handles each of those. It returns the completed rows, or
    with ``rows=False`` only their ids."""
    plan = select(
        func.unnest(bindparam("f_ids", type_=ARRAY(String))).label("id"),
        func.unnest(bindparam("f_tokens", type_=ARRAY(String))).label("token"),
        func.unnest(bindparam("f_result_keys", type_=ARRAY(String))).label("result_key"),
        func.unnest(bindparam("f_results", type_=ARRAY(Text))).label("result"),
    ).cte("plan")
    now = bindparam("f_now", type_=BigInteger)
    done = (
        update(jobs)
        .where(jobs.c.id == plan.c.id, jobs.c.lease_token == plan.c.token, jobs.c.status == Status.RUNNING.value,
               jobs.c.cancel_requested.is_(False), _quiet())
        .values(finished(now, plan.c.result_key, cast(plan.c.result, jobs.c.result.type)))
        .returning(*jobs.c)
        .cte("done")
    )
    specs = func.unnest(
        bindparam("e_ids", type_=ARRAY(String)),
        bindparam("e_types", type_=ARRAY(String)), bindparam("e_stages", type_=ARRAY(String)),
        bindparam("e_latency", type_=ARRAY(Integer)), bindparam("e_codes", type_=ARRAY(String)),
        bindparam("e_msgs", type_=ARRAY(Text)), bindparam("e_data", type_=ARRAY(Text)),
    ).table_valued("job_id", "type", "stage", "latency_ms", "error_code", "error_msg", "data", with_ordinality="n"
                   ).render_derived(name="spec")
    events = (
        select(done.c.id, done.c.project_id, specs.c.type, now, done.c.attempt, specs.c.stage, specs.c.latency_ms,
               specs.c.error_code, specs.c.error_msg, done.c.request_id, cast(specs.c.data, JSON), _CURRENT_TX)
        .select_from(done).join(specs, specs.c.job_id == done.c.id)
        .order_by(specs.c.n)
    )
    cols = ["job_id", "project_id", "type", "ts", "attempt", "stage", "latency_ms", "error_code", "error_msg",
            "request_id", "data", "tx"]
    out = select(done) if rows else select(done.c.id)
    return out.add_cte(_event_insert(events, done.c.id, cols=cols).cte("finish_events"))


def heartbeat_batch(worker_id: str, leases: Sequence[tuple[str, str]], until: int, now: int) -> Update:
    return (
        update(jobs)
        .where(
            tuple_(jobs.c.id, jobs.c.lease_token).in_(list(leases)),
            jobs.c.lease_owner == worker_id,
            jobs.c.status == Status.RUNNING.value,
        )
        .values(lease_expires_at=until, updated_at=now)
        .returning(jobs.c.id)
    )


def _running() -> ColumnElement[bool]:
    """``status = 'running'`` with the state as an SQL literal, as the lease index's predicate
    has it, so the planners can use that partial index (PostgreSQL's generic plan included)."""
    return jobs.c.status == literal_column(f"'{Status.RUNNING.value}'")


def expired_leases(now: int, limit: int) -> Select[Any]:
    return (
        select(jobs.c.id)
        .where(_running(), jobs.c.lease_expires_at < now)
        .order_by(jobs.c.lease_expires_at)
        .limit(limit)
    )


def waiting_on_provider(now: int, older_than: int, limit: int) -> Select[Any]:
    """Parked async jobs (no lease, a provider reference) waiting since before ``older_than``."""
    return (
        select(jobs)
        .where(
            _running(),
            jobs.c.lease_token.is_(None),
            jobs.c.provider_ref.is_not(None),
            jobs.c.provider_since < older_than,
        )
        .order_by(jobs.c.provider_since)
        .limit(limit)
    )


def past_deadline(now: int, limit: int) -> Select[Any]:
    return (
        select(jobs.c.id)
        .where(_running(), jobs.c.lease_token.is_(None), jobs.c.deadline < now)
        .limit(limit)
    )


@prepared
def next_run_after() -> Select[Any]:
    """When the earliest delayed job (``run_after`` > ``n_now``) becomes runnable, to sleep exactly
    that long: read from the claim index (the states as literals, as the claim has them)."""
    return select(func.min(jobs.c.run_after).label("at")).where(_claimable(), jobs.c.run_after > bindparam("n_now"))


def queue_position(job: dict[str, Any]) -> Select[Any]:
    """How many runnable jobs would be claimed before this one."""
    return select(func.count()).where(
        jobs.c.status.in_(CLAIMABLE),
        or_(
            jobs.c.priority > job["priority"],
            and_(jobs.c.priority == job["priority"], jobs.c.run_after < job["run_after"]),
            and_(
                jobs.c.priority == job["priority"],
                jobs.c.run_after == job["run_after"],
                jobs.c.created_at < job["created_at"],
            ),
        ),
    )


def queue_depth(now: int) -> Select[Any]:
    return select(func.count()).where(jobs.c.status.in_(CLAIMABLE), jobs.c.run_after <= now)


def count_by_status_type() -> Select[Any]:
    return select(jobs.c.status, jobs.c.type, func.count()).group_by(jobs.c.status, jobs.c.type)


def list_jobs(
    project_id: str, *, status: str | None, type_: str | None, user: str | None,
    before: tuple[int, str] | None, limit: int,
) -> Select[Any]:
    """Newest first, keyset-paginated on (created_at, id)."""
    stmt = select(jobs).where(jobs.c.project_id == project_id)
    if status:
        stmt = stmt.where(jobs.c.status == status)
    if type_:
        stmt = stmt.where(jobs.c.type == type_)
    if user is not None:
        stmt = stmt.where(jobs.c.user_id == user)
    if before is not None:
        stmt = stmt.where(tuple_(jobs.c.created_at, jobs.c.id) < before)
    return stmt.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)


def notify(*messages: tuple[str, str]) -> TextClause:
    """PostgreSQL NOTIFYs (channel, payload), delivered when the surrounding transaction commits;
    all of a write's wake-ups in one round trip."""
    calls = ", ".join(f"pg_notify(:c{i}, :p{i})" for i in range(len(messages)))
    params = {f"{k}{i}": v for i, m in enumerate(messages) for k, v in zip("cp", m, strict=True)}
    return text(f"SELECT {calls}").bindparams(**params)


# --- events -----------------------------------------------------------------------------------

# The inserting transaction's id, as a bigint (xid8 is 64-bit and never wraps).
_CURRENT_TX: ColumnElement[int] = literal_column("pg_current_xact_id()::text::bigint")
# Every transaction with a smaller id has ended: nothing it wrote can still appear.
_OLDEST_OPEN_TX: ColumnElement[int] = literal_column("pg_snapshot_xmin(pg_current_snapshot())::text::bigint")


@prepared
def insert_events(postgres: bool, jobs_ready: bool = False) -> Insert:
    """Events stamped, on PostgreSQL, with their transaction's id (for ``feed_after``), and their
    wake-ups sent by the same statement: a NOTIFY per row with its job id (PostgreSQL folds
    repeats within a transaction) and, for a write that made jobs runnable, one to claimers."""
    stmt = insert(job_events)
    if not postgres:
        return stmt
    wakes = [func.pg_notify(EVENTS_CHANNEL, job_events.c.job_id)]
    if jobs_ready:
        wakes.append(func.pg_notify(JOBS_CHANNEL, literal_column("''")))
    return stmt.values(tx=_CURRENT_TX).returning(*wakes)


def events_after(job_id: str, after: int, limit: int) -> Select[Any]:
    """One job's events after an id. Safe to resume from: every writer of a job's events holds
    its row until commit, so the job's ids commit in increasing order."""
    return (
        select(job_events)
        .where(job_events.c.job_id == job_id, job_events.c.id > after)
        .order_by(job_events.c.id)
        .limit(limit)
    )


def feed_after(project_id: str | None, after: tuple[int, int], limit: int, postgres: bool) -> Select[Any]:
    """A cross-job feed after a (tx, id) position. On PostgreSQL concurrent transactions commit
    out of id order, so the feed orders by (tx, id) and shows only rows of transactions older than
    the oldest still open: nothing can later appear behind a position a reader has passed. SQLite
    has one writer at a time, so ids alone are commit-ordered (tx stays 0)."""
    if postgres:
        stmt = select(job_events).where(
            tuple_(job_events.c.tx, job_events.c.id) > tuple_(literal(after[0]), literal(after[1])),
            job_events.c.tx < _OLDEST_OPEN_TX,
        )
        order: tuple[Any, ...] = (job_events.c.tx, job_events.c.id)
    else:
        stmt = select(job_events).where(job_events.c.id > after[1])
        order = (job_events.c.id,)
    if project_id is not None:
        stmt = stmt.where(job_events.c.project_id == project_id)
    return stmt.order_by(*order).limit(limit)


def feed_head(project_id: str, postgres: bool) -> Select[Any]:
    """The project feed's current end: a position after which a reader sees only what is new."""
    if postgres:
        return (select(job_events.c.tx, job_events.c.id)
                .where(job_events.c.project_id == project_id, job_events.c.tx < _OLDEST_OPEN_TX)
                .order_by(job_events.c.tx.desc(), job_events.c.id.desc()).limit(1))
    zero: ColumnElement[Any] = literal(0)
    return select(zero, func.max(job_events.c.id)).where(job_events.c.project_id == project_id)


def latest_event_ids(job_ids: Sequence[str]) -> Select[Any]:
    """Each job's latest event id (jobs without events left out): an index range end per job."""
    return (select(job_events.c.job_id, func.max(job_events.c.id))
            .where(job_events.c.job_id.in_(job_ids)).group_by(job_events.c.job_id))


# --- credits ----------------------------------------------------------------------------------

def debit_account(project_id: str, user_id: str, amount: int) -> Update:
    """Take ``amount`` only if the balance covers it; rowcount 0 means insufficient credits."""
    return (
        update(credit_accounts)
        .where(
            credit_accounts.c.project_id == project_id,
            credit_accounts.c.user_id == user_id,
            credit_accounts.c.balance >= amount,
        )
        .values(balance=credit_accounts.c.balance - amount)
    )


def credit_account(project_id: str, user_id: str, amount: int) -> Update:
    return (
        update(credit_accounts)
        .where(credit_accounts.c.project_id == project_id, credit_accounts.c.user_id == user_id)
        .values(balance=credit_accounts.c.balance + amount)
    )


def create_account(project_id: str, user_id: str) -> Insert:
    return insert(credit_accounts).values(project_id=project_id, user_id=user_id, balance=0)


def select_balance(project_id: str, user_id: str) -> Select[Any]:
    return select(credit_accounts.c.balance).where(
        credit_accounts.c.project_id == project_id, credit_accounts.c.user_id == user_id
    )


def select_balances(accounts: Collection[tuple[str, str]]) -> Select[Any]:
    """(project_id, user_id, balance) of each of these accounts that exists, locked until commit
    (on SQLite the write transaction's lock already holds them)."""
    c = credit_accounts.c
    return (select(c.project_id, c.user_id, c.balance)
            .where(tuple_(c.project_id, c.user_id).in_(sorted(accounts)))
            .order_by(c.project_id, c.user_id).with_for_update())


@prepared
def balance_prepared() -> Select[Any]:
    """``select_balance`` with bound parameters (b_project_id, b_user_id): SQLite's batched charges."""
    return select_balance(bindparam("b_project_id"), bindparam("b_user_id"))  # type: ignore[arg-type]


def ledger_sum(project_id: str, user_id: str) -> Select[Any]:
    return select(func.coalesce(func.sum(credit_ledger.c.amount), 0)).where(
        credit_ledger.c.project_id == project_id, credit_ledger.c.user_id == user_id
    )


@prepared
def insert_ledger() -> Insert:
    """Executed with the entry as parameters."""
    return insert(credit_ledger)


@prepared
def debit_prepared() -> Update:
    """``debit_account`` with bound parameters (b_project_id, b_user_id, b_amount): SQLite's charge."""
    return debit_account(bindparam("b_project_id"), bindparam("b_user_id"), bindparam("b_amount"))  # type: ignore[arg-type]


@prepared
def charge_prepared() -> Insert:
    """PostgreSQL: debit and ledger entry in one statement (one round trip). It inserts the entry
    only when the debit took, so no row returned means insufficient credits and nothing was written.
    Parameters: b_project_id, b_user_id, b_amount, b_job_id, b_round, b_created_at."""
    c = credit_accounts.c
    amount = bindparam("b_amount", type_=BigInteger)
    debit = (
        update(credit_accounts)
        .where(c.project_id == bindparam("b_project_id"), c.user_id == bindparam("b_user_id"), c.balance >= amount)
        .values(balance=c.balance - amount)
        .returning(c.project_id, c.user_id)
        .cte("debit")
    )
    entry = select(
        debit.c.project_id, debit.c.user_id, bindparam("b_job_id", type_=String), literal("charge"),
        bindparam("b_round", type_=Integer), -amount, bindparam("b_created_at", type_=BigInteger),
    )
    cols = ["project_id", "user_id", "job_id", "reason", "round", "amount", "created_at"]
    return insert(credit_ledger).from_select(cols, entry).add_cte(debit).returning(credit_ledger.c.id)


def ledger_for_job(job_id: str) -> Select[Any]:
    return select(credit_ledger).where(credit_ledger.c.job_id == job_id).order_by(credit_ledger.c.id)


def ledger_entry_exists(job_id: str, reason: str, round_: int) -> Select[Any]:
    return select(credit_ledger.c.id).where(
        credit_ledger.c.job_id == job_id, credit_ledger.c.reason == reason, credit_ledger.c.round == round_
    )


# --- projects and keys ------------------------------------------------------------------------

def insert_project(values: dict[str, Any]) -> Insert:
    return insert(projects).values(**values)


def select_project(project_id: str) -> Select[Any]:
    return select(projects).where(projects.c.id == project_id)


def project_by_public_key(public_key: str) -> Select[Any]:
    return select(projects).where(projects.c.public_key == public_key)


def project_by_key_hash(key_hash: str) -> Select[Any]:
    return (
        select(projects, api_keys.c.key_hash)
        .join(api_keys, api_keys.c.project_id == projects.c.id)
        .where(api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None))
    )


def insert_api_key(values: dict[str, Any]) -> Insert:
    return insert(api_keys).values(**values)


def revoke_keys(project_id: str, now: int) -> Update:
    return (
        update(api_keys)
        .where(api_keys.c.project_id == project_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )


def count_keys() -> Select[Any]:
    return select(func.count()).select_from(api_keys).where(api_keys.c.revoked_at.is_(None))


# --- cluster singletons -----------------------------------------------------------------------

def take_lock(name: str, owner: str, now: int, until: int) -> Update:
    return (
        update(locks)
        .where(locks.c.name == name, or_(locks.c.owner == owner, locks.c.expires_at < now))
        .values(owner=owner, expires_at=until)
    )


def create_lock(name: str, owner: str, until: int) -> Insert:
    return insert(locks).values(name=name, owner=owner, expires_at=until)


def release_lock(name: str, owner: str) -> Delete:
    return delete(locks).where(locks.c.name == name, locks.c.owner == owner)



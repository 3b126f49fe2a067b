"""Every statement that touches the jobs, events and ledger tables, each named for its purpose.

The only dialect branches here are the claim (SKIP LOCKED vs a single UPDATE … RETURNING),
the transaction-id stamp and order of the event feed, and wake-up NOTIFYs; everything else is portable Core.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Delete,
    Insert,
    Integer,
    Select,
    String,
    TextClause,
    Update,
    and_,
    bindparam,
    delete,
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

from genloom.lifecycle import Status
from genloom.store.schema import (
    api_keys,
    credit_accounts,
    credit_ledger,
    job_events,
    jobs,
    locks,
    projects,
)

JOBS_CHANNEL = "genloom_jobs"
EVENTS_CHANNEL = "genloom_events"
CLAIMABLE = (Status.QUEUED.value, Status.PENDING.value)


# --- jobs: single rows -----------------------------------------------------------------------

@functools.cache
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


def lock_job(job_id: str, postgres: bool) -> Select[Any]:
    """Read a job and hold its row until commit (SQLite's BEGIN IMMEDIATE already serialises)."""
    stmt = select(jobs).where(jobs.c.id == job_id)
    return stmt.with_for_update() if postgres else stmt


def select_by_idempotency(project_id: str, user_id: str, key: str) -> Select[Any]:
    return select(jobs).where(
        jobs.c.project_id == project_id, jobs.c.user_id == user_id, jobs.c.idempotency_key == key
    )


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


@functools.cache
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


@functools.cache
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
    pick = (
        select(jobs.c.id)
        .where(_claimable(), jobs.c.run_after <= now)
        .order_by(jobs.c.priority.desc(), jobs.c.run_after, jobs.c.created_at)
        .limit(limit)
    )
    if types is not None:
        pick = pick.where(jobs.c.type.in_(types))
    if postgres:
        # A MATERIALIZED CTE locks and picks exactly ``limit`` rows once: with ``IN (subquery)`` the
        # planner may re-run the subquery per outer row and lease more jobs than asked for.
        # PostgreSQL re-checks the state of the rows it locked.
        picked = pick.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
        target = update(jobs).where(jobs.c.id == picked.c.id, _claimable())
    else:
        # SQLite runs the statement under its one write lock; a second status test there makes it
        # walk the rows by status instead of taking the ones the subquery picked by primary key.
        target = update(jobs).where(jobs.c.id.in_(pick.scalar_subquery()))
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


def complete_batch(leases: Sequence[tuple[str, str]], now: int) -> Update:
    """Finish many running jobs in one statement (no-op and fast pipelines); a job whose cancel
    was requested is left for the one-by-one path, which ends it cancelled."""
    return _complete(list(leases), now)


@functools.cache
def complete_prepared() -> Update:
    """``complete_batch`` built once with bind parameters, for ``complete_params``."""
    return _complete(bindparam("b_leases", expanding=True), bindparam("b_now"))


def complete_params(leases: Sequence[tuple[str, str]], now: int) -> dict[str, Any]:
    return {"b_leases": list(leases), "b_now": now}


def _complete(leases: Any, now: Any) -> Update:
    return (
        update(jobs)
        .where(tuple_(jobs.c.id, jobs.c.lease_token).in_(leases), jobs.c.status == Status.RUNNING.value,
               jobs.c.cancel_requested.is_(False))
        .values(
            status=Status.COMPLETED.value,
            completed_at=now,
            updated_at=now,
            progress=1.0,
            stage=None,
            lease_owner=None,
            lease_token=None,
            lease_expires_at=None,
        )
        .returning(*jobs.c)
    )


def expired_leases(now: int, limit: int) -> Select[Any]:
    return (
        select(jobs.c.id)
        .where(jobs.c.status == Status.RUNNING.value, jobs.c.lease_expires_at < now)
        .order_by(jobs.c.lease_expires_at)
        .limit(limit)
    )


def waiting_on_provider(now: int, older_than: int, limit: int) -> Select[Any]:
    """Parked async jobs (no lease, a provider reference) waiting since before ``older_than``."""
    return (
        select(jobs)
        .where(
            jobs.c.status == Status.RUNNING.value,
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
        .where(jobs.c.status == Status.RUNNING.value, jobs.c.lease_token.is_(None), jobs.c.deadline < now)
        .limit(limit)
    )


def next_run_after(now: int) -> Select[Any]:
    """When the earliest delayed job becomes runnable (to sleep exactly that long)."""
    return select(func.min(jobs.c.run_after)).where(jobs.c.status.in_(CLAIMABLE), jobs.c.run_after > now)


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


@functools.cache
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


def ledger_sum(project_id: str, user_id: str) -> Select[Any]:
    return select(func.coalesce(func.sum(credit_ledger.c.amount), 0)).where(
        credit_ledger.c.project_id == project_id, credit_ledger.c.user_id == user_id
    )


@functools.cache
def insert_ledger() -> Insert:
    """Executed with the entry as parameters."""
    return insert(credit_ledger)


@functools.cache
def debit_prepared() -> Update:
    """``debit_account`` with bound parameters (b_project_id, b_user_id, b_amount): SQLite's charge."""
    return debit_account(bindparam("b_project_id"), bindparam("b_user_id"), bindparam("b_amount"))  # type: ignore[arg-type]


@functools.cache
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



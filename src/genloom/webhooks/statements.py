"""Every statement on the webhook tables (and the batch job touch the dispatcher's events need).

Endpoints, the per-project secret for jobs' own webhook_url, the delivery outbox and its attempts.
Outbox rows are inserted by the event writer's transaction (webhooks.outbox); the dispatcher claims
due rows with a lease, like the queue claims jobs: SKIP LOCKED on PostgreSQL, one UPDATE …
RETURNING under SQLite's single writer. Kept beside store.statements, in its style.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import Delete, Insert, Select, Update, bindparam, delete, func, insert, select, tuple_, update

from genloom.store.prepared import prepared
from genloom.store.schema import jobs, webhook_attempts, webhook_deliveries, webhook_endpoints, webhook_project_secrets

WEBHOOKS_CHANNEL = "genloom_webhooks"
_d, _e, _s = webhook_deliveries, webhook_endpoints, webhook_project_secrets


# --- endpoints --------------------------------------------------------------------------------

def insert_endpoint(values: dict[str, Any]) -> Insert:
    return insert(_e).values(**values)


def select_endpoint(project_id: str, endpoint_id: str) -> Select[Any]:
    return select(_e).where(_e.c.id == endpoint_id, _e.c.project_id == project_id)


def list_endpoints(project_id: str) -> Select[Any]:
    return select(_e).where(_e.c.project_id == project_id).order_by(_e.c.created_at, _e.c.id)


def update_endpoint(project_id: str, endpoint_id: str, values: dict[str, Any]) -> Update:
    return update(_e).where(_e.c.id == endpoint_id, _e.c.project_id == project_id).values(**values).returning(*_e.c)


def delete_endpoint(project_id: str, endpoint_id: str) -> Delete:
    return delete(_e).where(_e.c.id == endpoint_id, _e.c.project_id == project_id)


def enabled_endpoints(project_ids: Collection[str]) -> Select[Any]:
    """The endpoints an event of these projects may go to (the outbox's one lookup per write)."""
    return select(_e.c.id, _e.c.project_id, _e.c.url, _e.c.events).where(
        _e.c.project_id.in_(sorted(project_ids)), _e.c.enabled.is_(True)
    )


@prepared
def project_endpoints() -> Select[Any]:
    """``enabled_endpoints`` of one project (``e_project``), built once: a write's events are
    nearly always one project's."""
    return select(_e.c.id, _e.c.project_id, _e.c.url, _e.c.events).where(
        _e.c.project_id == bindparam("e_project"), _e.c.enabled.is_(True)
    )


def endpoint_interest() -> Select[Any]:
    """Every enabled endpoint's filter, to learn which projects want more than terminal events."""
    return select(_e.c.project_id, _e.c.events).where(_e.c.enabled.is_(True))


def endpoints_by_id(endpoint_ids: Collection[str]) -> Select[Any]:
    return select(_e).where(_e.c.id.in_(sorted(endpoint_ids)))


def mark_endpoints_failing(endpoint_ids: Collection[str], now: int) -> Update:
    """Start the failure clock of endpoints not already failing; returns each one's start."""
    return (
        update(_e)
        .where(_e.c.id.in_(sorted(endpoint_ids)))
        .values(failing_since=func.coalesce(_e.c.failing_since, now))
        .returning(_e.c.id, _e.c.failing_since, _e.c.enabled)
    )


def clear_endpoints_failing(endpoint_ids: Collection[str]) -> Update:
    return update(_e).where(_e.c.id.in_(sorted(endpoint_ids)), _e.c.failing_since.is_not(None)).values(
        failing_since=None
    )


def disable_endpoint(endpoint_id: str, reason: str, now: int) -> Update:
    return (
        update(_e)
        .where(_e.c.id == endpoint_id, _e.c.enabled.is_(True))
        .values(enabled=False, disabled_reason=reason, updated_at=now)
    )


# --- the project's secret for jobs' own webhook_url ----------------------------------------------

def select_project_secrets(project_ids: Collection[str]) -> Select[Any]:
    return select(_s).where(_s.c.project_id.in_(sorted(project_ids)))


def insert_project_secret(values: dict[str, Any]) -> Insert:
    return insert(_s).values(**values)


def update_project_secret(project_id: str, values: dict[str, Any]) -> Update:
    return update(_s).where(_s.c.project_id == project_id).values(**values)


# --- deliveries and attempts ------------------------------------------------------------------

def insert_deliveries() -> Insert:
    return insert(_d)


def claim_deliveries(*, postgres: bool, owner: str, now: int, lease_until: int, limit: int) -> Update:
    """Lease up to ``limit`` due deliveries, earliest due first. The lease is folded into
    next_attempt_at, so a delivery whose dispatcher died comes due again when its lease ends.

    PostgreSQL picks the rows in a MATERIALIZED CTE: as ``id IN (SELECT … LIMIT n FOR UPDATE SKIP
    LOCKED)`` the planner may choose a nested-loop semi-join that re-runs the subquery for every
    outer row, each run skipping the rows the statement already updated, and lease every due row."""
    pick = select(_d.c.id).where(_d.c.status == "pending", _d.c.next_attempt_at <= now).order_by(
        _d.c.next_attempt_at
    ).limit(limit)
    stmt = update(_d)
    if postgres:
        picked = pick.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
        stmt = stmt.where(_d.c.id == picked.c.id)
    else:
        stmt = stmt.where(_d.c.id.in_(pick.scalar_subquery()))
    return (
        stmt.where(_d.c.status == "pending", _d.c.next_attempt_at <= now)
        .values(lease_owner=owner, lease_expires_at=lease_until, next_attempt_at=lease_until, updated_at=now)
        .returning(*_d.c)
    )


def next_delivery_due() -> Select[Any]:
    return select(func.min(_d.c.next_attempt_at)).where(_d.c.status == "pending")


def still_leased(leases: Collection[tuple[str, str]], postgres: bool) -> Select[Any]:
    """Which of these (delivery id, lease owner) leases are still current, rows locked until commit:
    an outcome is recorded only then (a replay, or another dispatcher that took over after the lease
    ran out, wins). SQLite's single writer holds everything already."""
    stmt = (
        select(_d.c.id)
        .where(tuple_(_d.c.id, _d.c.lease_owner).in_(sorted(leases)), _d.c.status == "pending")
        .order_by(_d.c.id)
    )
    return stmt.with_for_update() if postgres else stmt


def settle_deliveries() -> Update:
    """Record outcomes, executemany-style: one parameter set per delivery (``still_leased`` first)."""
    return (
        update(_d)
        .where(_d.c.id == bindparam("b_id"))
        .values(status=bindparam("b_status"), attempts=bindparam("b_attempts"),
                last_status_code=bindparam("b_status_code"), last_error=bindparam("b_error"),
                last_latency_ms=bindparam("b_latency_ms"), next_attempt_at=bindparam("b_next"),
                lease_owner=None, lease_expires_at=None, updated_at=bindparam("b_now"))
    )


def insert_attempts() -> Insert:
    return insert(webhook_attempts)


def select_delivery(project_id: str, delivery_id: str) -> Select[Any]:
    return select(_d).where(_d.c.id == delivery_id, _d.c.project_id == project_id)


def list_deliveries(
    project_id: str, *, endpoint_id: str | None, job_id: str | None, status: str | None,
    before: tuple[int, str] | None, limit: int,
) -> Select[Any]:
    """Newest first, keyset-paginated on (created_at, id)."""
    stmt = select(_d).where(_d.c.project_id == project_id)
    if endpoint_id is not None:
        stmt = stmt.where(_d.c.endpoint_id == endpoint_id)
    if job_id is not None:
        stmt = stmt.where(_d.c.job_id == job_id)
    if status is not None:
        stmt = stmt.where(_d.c.status == status)
    if before is not None:
        stmt = stmt.where(tuple_(_d.c.created_at, _d.c.id) < before)
    return stmt.order_by(_d.c.created_at.desc(), _d.c.id.desc()).limit(limit)


def list_attempts(delivery_id: str) -> Select[Any]:
    return select(webhook_attempts).where(webhook_attempts.c.delivery_id == delivery_id).order_by(
        webhook_attempts.c.id
    )


def replay_deliveries(
    project_id: str, now: int, *, delivery_id: str | None = None, endpoint_id: str | None = None,
    since: int | None = None, until: int | None = None, statuses: Collection[str] = (),
) -> Update:
    """A new attempt series (same ids, so the same webhook-id) for one delivery, or for an
    endpoint's deliveries created in [since, until) with one of ``statuses``."""
    where = [_d.c.project_id == project_id]
    if delivery_id is not None:
        where.append(_d.c.id == delivery_id)
    if endpoint_id is not None:
        where.append(_d.c.endpoint_id == endpoint_id)
    if since is not None:
        where.append(_d.c.created_at >= since)
    if until is not None:
        where.append(_d.c.created_at < until)
    if statuses:
        where.append(_d.c.status.in_(sorted(statuses)))
    return (
        update(_d)
        .where(*where)
        .values(status="pending", attempts=0, next_attempt_at=now, lease_owner=None, lease_expires_at=None,
                updated_at=now)
        .returning(*_d.c)
    )


# --- jobs -------------------------------------------------------------------------------------

def touch_jobs(job_ids: Collection[str], now: int, postgres: bool) -> Update:
    """store.statements.touch_job for many jobs at once (webhook events are written under their
    job's row lock); on PostgreSQL the rows are locked in id order, so two of these never deadlock."""
    ids = sorted(set(job_ids))
    target: Any = ids
    if postgres:
        target = select(jobs.c.id).where(jobs.c.id.in_(ids)).order_by(jobs.c.id).with_for_update().scalar_subquery()
    return update(jobs).where(jobs.c.id.in_(target)).values(updated_at=now).returning(*jobs.c)

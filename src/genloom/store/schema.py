"""SQLAlchemy Core tables, one schema for SQLite and PostgreSQL. Times are epoch milliseconds."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    column,
    text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
    }
)

#: An auto-incrementing 64-bit id that SQLite never reuses.
BigId = BigInteger().with_variant(Integer, "sqlite")

projects = Table(
    "projects",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("public_key", String(64), nullable=False, unique=True),
    Column("billing_enabled", Boolean, nullable=False, server_default=text("false")),
    Column("allowed_origins", JSON, nullable=False),
    Column("rate_limit_per_minute", Integer, nullable=False, server_default=text("600")),
    Column("created_at", BigInteger, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("project_id", String(40), nullable=False, index=True),
    Column("prefix", String(16), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger),
)

#: The claim index's predicate (statements spell it the same way so the planners can use the index).
RUNNABLE = "status IN ('queued', 'pending')"
#: The lease index's predicate (a query must name the state as this literal to use it).
RUNNING = "status = 'running'"


def _partial(name: str, where: str, *columns: Any, unique: bool = False) -> Index:
    """An index over the rows matching ``where`` only, on both databases."""
    return Index(name, *columns, unique=unique, postgresql_where=text(where), sqlite_where=text(where))


jobs = Table(
    "jobs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("project_id", String(40), nullable=False),
    Column("user_id", String(200), nullable=False, server_default=""),
    Column("type", String(40), nullable=False),
    Column("mode", String(40)),
    Column("input", JSON, nullable=False),
    Column("params_hash", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempt", Integer, nullable=False, server_default=text("0")),
    Column("max_attempts", Integer, nullable=False, server_default=text("3")),
    Column("round", Integer, nullable=False, server_default=text("0")),
    Column("priority", Integer, nullable=False, server_default=text("0")),
    Column("idempotency_key", String(255)),
    Column("cost", Integer, nullable=False, server_default=text("0")),
    Column("charged", Boolean, nullable=False, server_default=text("false")),
    Column("cancel_requested", Boolean, nullable=False, server_default=text("false")),
    Column("stage", String(40)),
    Column("progress", Float, nullable=False, server_default=text("0")),
    Column("result_key", String(255)),
    Column("result", JSON),
    Column("error_code", String(64)),
    Column("error_message", Text),
    Column("lease_owner", String(64)),
    Column("lease_token", String(32)),
    Column("lease_expires_at", BigInteger),
    Column("run_after", BigInteger, nullable=False),
    Column("provider", String(40)),
    Column("provider_ref", String(255)),
    Column("provider_since", BigInteger),
    Column("deadline", BigInteger),
    Column("webhook_url", Text),
    Column("request_id", String(64)),
    Column("created_at", BigInteger, nullable=False),
    Column("queued_at", BigInteger),
    Column("started_at", BigInteger),
    Column("completed_at", BigInteger),
    Column("updated_at", BigInteger, nullable=False),
    # Partial indexes hold only the rows they are searched for: a create then writes no entry
    # into them (most jobs have no key and no provider reference) and only a running job is in
    # the lease index, so claim and completion each move one entry, not two.
    _partial("uq_jobs_idempotency", "idempotency_key IS NOT NULL", "project_id", "user_id", "idempotency_key",
             unique=True),
    # The queue's only hot path: a partial index in claim order over runnable rows alone, so a
    # claim walks it from the front however many finished jobs the table holds.
    _partial("ix_jobs_claim", RUNNABLE, column("priority").desc(), "run_after", "created_at"),
    Index("ix_jobs_project_created", "project_id", "created_at", "id"),
    _partial("ix_jobs_lease", RUNNING, "lease_expires_at"),
    _partial("ix_jobs_provider_ref", "provider_ref IS NOT NULL", "provider_ref"),
)

job_events = Table(
    "job_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("job_id", String(40), nullable=False),
    Column("project_id", String(40), nullable=False),
    Column("type", String(32), nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("attempt", Integer, nullable=False, server_default=text("0")),
    Column("stage", String(40)),
    Column("latency_ms", Integer),
    Column("error_code", String(64)),
    Column("error_msg", Text),
    Column("request_id", String(64)),
    Column("data", JSON, nullable=False),
    # PostgreSQL: the inserting transaction's id (xid8), so the cross-job feed can order by
    # (tx, id) and hold back what open transactions may still add (see events.py). NULL on
    # SQLite, whose single writer commits in id order.
    Column("tx", BigInteger),
    Index("ix_job_events_job", "job_id", "id"),
    Index("ix_job_events_project", "project_id", "id").ddl_if(dialect="sqlite"),
    Index("ix_job_events_project_tx", "project_id", "tx", "id").ddl_if(dialect="postgresql"),
    sqlite_autoincrement=True,
)

credit_accounts = Table(
    "credit_accounts",
    metadata,
    Column("project_id", String(40), primary_key=True),
    Column("user_id", String(200), primary_key=True),
    # The running sum of this account's ledger rows, updated in the same transaction as each row;
    # a conditional UPDATE on it is what makes concurrent charges exact.
    Column("balance", BigInteger, nullable=False, server_default=text("0")),
)

credit_ledger = Table(
    "credit_ledger",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("project_id", String(40), nullable=False),
    Column("user_id", String(200), nullable=False),
    Column("job_id", String(40)),
    Column("reason", String(16), nullable=False),  # grant | charge | refund
    Column("round", Integer, nullable=False, server_default=text("0")),
    Column("amount", BigInteger, nullable=False),
    Column("note", Text),
    Column("created_at", BigInteger, nullable=False),
    UniqueConstraint("job_id", "reason", "round", name="uq_credit_ledger_once"),
    Index("ix_credit_ledger_account", "project_id", "user_id", "id"),
    sqlite_autoincrement=True,
)

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("project_id", String(40), nullable=False, index=True),
    Column("url", Text, nullable=False),
    Column("events", JSON, nullable=False),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("secret", String(128), nullable=False),
    Column("old_secret", String(128)),
    Column("old_secret_expires_at", BigInteger),
    Column("disabled_reason", Text),
    Column("failing_since", BigInteger),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

_PENDING = "status = 'pending'"

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(40), primary_key=True),  # the webhook-id header, stable across retries
    Column("project_id", String(40), nullable=False),
    Column("endpoint_id", String(40)),  # NULL for a job's own webhook_url
    Column("job_id", String(40), nullable=False),
    Column("url", Text, nullable=False),
    Column("event_type", String(40), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False),  # pending | delivered | dead
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", BigInteger, nullable=False),
    Column("lease_owner", String(64)),
    Column("lease_expires_at", BigInteger),
    Column("last_status_code", Integer),
    Column("last_error", Text),
    Column("last_latency_ms", Integer),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    # The dispatcher's claim walks pending rows alone in due order, however many were delivered;
    # a leased row is pending with next_attempt_at at its lease's end, so a dead dispatcher's
    # deliveries come due again by themselves.
    Index("ix_webhook_deliveries_due", "next_attempt_at",
          postgresql_where=text(_PENDING), sqlite_where=text(_PENDING)),
    Index("ix_webhook_deliveries_endpoint", "endpoint_id", "created_at"),
    Index("ix_webhook_deliveries_job", "job_id"),
)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("delivery_id", String(40), nullable=False, index=True),
    Column("attempt", Integer, nullable=False),
    Column("status_code", Integer),
    Column("latency_ms", Integer),
    Column("error", Text),
    Column("response", Text),  # the first bytes of the receiver's answer, for debugging
    Column("created_at", BigInteger, nullable=False),
    sqlite_autoincrement=True,
)

webhook_project_secrets = Table(
    "webhook_project_secrets",
    metadata,
    # Signs deliveries to a job's own webhook_url (no endpoint row to hold a secret); created on
    # first use, rotated like an endpoint's (the old one stays valid until old_secret_expires_at).
    Column("project_id", String(40), primary_key=True),
    Column("secret", String(128), nullable=False),
    Column("old_secret", String(128)),
    Column("old_secret_expires_at", BigInteger),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

provider_callbacks = Table(
    "provider_callbacks",
    metadata,
    # the provider's webhook-id: a replayed callback is refused by this key
    Column("id", String(128), primary_key=True),
    Column("job_id", String(40), nullable=False),
    Column("received_at", BigInteger, nullable=False),
)

locks = Table(
    "locks",
    metadata,
    # a leader lease for cluster singletons (the reconciler) on databases without advisory locks
    Column("name", String(64), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("expires_at", BigInteger, nullable=False),
)


def on_dialect(obj: object, dialect: str) -> bool:
    """False for an index this schema creates only on another database (``Index.ddl_if``), which
    Alembic's comparison does not know about; pass it as ``include_object``."""
    cond = getattr(obj, "_ddl_if", None)
    return cond is None or cond.dialect is None or cond.dialect == dialect

"""job_events.tx: the inserting transaction's id, for a commit-safe cross-job feed on PostgreSQL

Event ids used to be handed out in commit order by a global advisory lock held to COMMIT, which
serialised every event-writing transaction. A job's own events stay in id order through its row
lock; the cross-job feed now orders by (tx, id) and holds back what open transactions may add.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("job_events", sa.Column("tx", sa.BigInteger(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        # Rows written before this revision have no tx; order them first, by id, as they were.
        op.execute("UPDATE job_events SET tx = 0 WHERE tx IS NULL")
        op.drop_index("ix_job_events_project", table_name="job_events")
        op.create_index("ix_job_events_project_tx", "job_events", ["project_id", "tx", "id"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_job_events_project_tx", table_name="job_events")
        op.create_index("ix_job_events_project", "job_events", ["project_id", "id"])
    with op.batch_alter_table("job_events") as batch_op:
        batch_op.drop_column("tx")

"""Partial indexes so a dispatch pass costs what is due, not what the tables hold.

- `ix_messages_pending (next_attempt_at, id) WHERE status IN ('queued', 'deferred', 'sending')`: the claim
  query reads only unfinished messages, in its own ORDER BY; sent history (millions of rows after a
  few campaigns) is not in this index at all.
- `ix_enrollments_due_active (next_due_at, id) WHERE status = 'active' AND next_due_at IS NOT NULL`: the
  queue query's range scan and ORDER BY in one index, without completed or waiting-on-a-message rows.

Revision ID: 0006_issue6
Revises: 0005_issue5
"""
import sqlalchemy as sa
from alembic import op

revision = "0006_issue6"
down_revision = "0005_issue5"
branch_labels = None
depends_on = None

PENDING = sa.text("status IN ('queued', 'deferred', 'sending')")
DUE = sa.text("status = 'active' AND next_due_at IS NOT NULL")


def upgrade() -> None:
    op.create_index("ix_messages_pending", "messages", ["next_attempt_at", "id"], unique=False,
                    postgresql_where=PENDING, sqlite_where=PENDING)
    op.create_index("ix_enrollments_due_active", "enrollments", ["next_due_at", "id"], unique=False,
                    postgresql_where=DUE, sqlite_where=DUE)


def downgrade() -> None:
    op.drop_index("ix_enrollments_due_active", table_name="enrollments")
    op.drop_index("ix_messages_pending", table_name="messages")

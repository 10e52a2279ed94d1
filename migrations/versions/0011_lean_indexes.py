"""Fewer index entries per signup and per email, so each signup and each send writes less to the database.

- `ix_enrollments_due (status, next_due_at)` is dropped: every query on due enrollments also says
  `status = 'active'` and `next_due_at <= ...`, which the partial `ix_enrollments_due_active` serves;
  it cost an entry per signup and two per email (the due time changes when a step is queued and sent).
- `ix_events_message_id` and `ix_messages_provider_message_id` become partial (NOT NULL only): they are
  read by `= value` only, and a signup's event has no message, an SMTP email no provider id.

Revision ID: 0013_lean_indexes
Revises: 0012_snoozed_index
"""
import sqlalchemy as sa
from alembic import op

revision = "0013_lean_indexes"
down_revision = "0012_snoozed_index"
branch_labels = None
depends_on = None


def _partial(name: str, table: str, column: str) -> None:
    where = sa.text(f"{column} IS NOT NULL")
    op.drop_index(name, table_name=table)
    op.create_index(name, table, [column], unique=False, postgresql_where=where, sqlite_where=where)


def upgrade() -> None:
    op.drop_index("ix_enrollments_due", table_name="enrollments")
    _partial("ix_events_message_id", "events", "message_id")
    _partial("ix_messages_provider_message_id", "messages", "provider_message_id")


def downgrade() -> None:
    for name, table, column in (("ix_messages_provider_message_id", "messages", "provider_message_id"),
                                ("ix_events_message_id", "events", "message_id")):
        op.drop_index(name, table_name=table)
        op.create_index(name, table, [column], unique=False)
    op.create_index("ix_enrollments_due", "enrollments", ["status", "next_due_at"], unique=False)

"""A partial index on subscribers.snoozed_until, so a dispatch pass finds snoozed readers without a full scan.

The dispatcher leaves snoozed readers' mail waiting (a reader can snooze from the preference page).
Finding the snoozed readers scanned the whole subscribers table in every queue and claim batch (245 ms
per batch with a million readers); only the few rows with a snooze are indexed here.

Revision ID: 0012_snoozed_index
Revises: 0011_lz4_contents
"""
import sqlalchemy as sa
from alembic import op

revision = "0012_snoozed_index"
down_revision = "0011_lz4_contents"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_subscribers_snoozed", "subscribers", ["snoozed_until"], unique=False,
                    postgresql_where=sa.text("snoozed_until IS NOT NULL"),
                    sqlite_where=sa.text("snoozed_until IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_subscribers_snoozed", table_name="subscribers")

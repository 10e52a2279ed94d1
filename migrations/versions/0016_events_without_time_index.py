"""One index fewer on every event (issue 6).

`ix_events_created` (events by time) served only retention pruning, yet every event paid for it: a
page more in each signup's commit on SQLite, an index entry more for each of an email's three events
on PostgreSQL. Events are written in time order, so retention now finds the last event older than the
cutoff by bisecting the primary key (service/retention.py) and deletes by id range.

Revision ID: 0016_events_without_time_index
Revises: 0015_lean_signup_pages
"""
from alembic import op

revision = "0016_events_without_time_index"
down_revision = "0015_lean_signup_pages"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_events_created", table_name="events")


def downgrade() -> None:
    op.create_index("ix_events_created", "events", ["created_at"], unique=False)

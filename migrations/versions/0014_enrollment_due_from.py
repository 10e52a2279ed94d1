"""enrollments.due_from: the moment a pending due time counts from, so that a reader's time-zone change
recomputes it by the one schedule rule even before their first email of that campaign, or after they
came back to a campaign they had left. Existing rows count from their last send, else from when they
joined (what the preference page assumed until now).

Revision ID: 0016_enrollment_due_from
Revises: 0015_lean_signup_pages
"""
import sqlalchemy as sa
from alembic import op

revision = "0016_enrollment_due_from"
down_revision = "0015_lean_signup_pages"
branch_labels = None
depends_on = None


# Plain ALTER TABLE on both databases (SQLite has had ADD and DROP COLUMN since 3.35). A batch rebuild of
# `enrollments` on SQLite would drop the table, and its ON DELETE CASCADE would take every message with it.
def upgrade() -> None:
    op.add_column("enrollments", sa.Column("due_from", sa.DateTime(timezone=True), nullable=True))
    # A welcome still waiting (next_step 0) is due at once, not by a schedule: it keeps no due_from.
    op.execute("UPDATE enrollments SET due_from = COALESCE(last_sent_at, created_at) "
               "WHERE next_due_at IS NOT NULL AND next_step > 0")


def downgrade() -> None:
    op.execute("ALTER TABLE enrollments DROP COLUMN due_from")

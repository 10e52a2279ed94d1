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


def upgrade() -> None:
    with op.batch_alter_table("enrollments") as batch:
        batch.add_column(sa.Column("due_from", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE enrollments SET due_from = COALESCE(last_sent_at, created_at) WHERE next_due_at IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("enrollments") as batch:
        batch.drop_column("due_from")

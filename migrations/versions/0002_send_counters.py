"""send_counters: emails sent per recipient domain per hour and per day, so the dispatcher can keep to
each domain's hourly and daily send limits and ramp a new sending domain up slowly (warm-up).

Revision ID: 0008_issue8
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0008_issue8"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "send_counters",
        sa.Column("domain", sa.String(length=253), nullable=False),
        sa.Column("window", sa.String(length=4), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("domain", "window", "window_start", name=op.f("pk_send_counters")),
    )


def downgrade() -> None:
    op.drop_table("send_counters")

"""The stored forecast: what the worker last computed goes out in the next days, so the console's home page and
`drip forecast` read a few hundred rows on a large list instead of replaying every reader's schedule.

- forecast_runs: one row, when the forecast was computed and up to when it reaches, with its notes.
- forecast_counts: emails per quarter hour (UTC), campaign and step.
- enrollments (campaign, id) where origin_campaign is set: the home page's "joined from another lead magnet"
  per campaign reads only the readers a continuation brought in, not every enrollment once per campaign.
- events (created_at, id) where type is 'unsubscribed': the home page's week of unsubscribes reads those
  few rows, not the week's every event (about 660,000 at a million readers).

Revision ID: 0019_forecast_store
Revises: 0017_console_counts
"""
import sqlalchemy as sa
from alembic import op

revision = "0019_forecast_store"
down_revision = "0017_console_counts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "forecast_runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("snoozed_readers", sa.Integer(), nullable=False),
        sa.Column("held_by_cap", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_forecast_runs"),
    )
    op.create_table(
        "forecast_counts",
        sa.Column("slot_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("campaign", sa.String(64), nullable=False),
        sa.Column("step_key", sa.String(64), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("slot_at", "campaign", "step_key", name="pk_forecast_counts"),
    )
    where = sa.text("origin_campaign IS NOT NULL")
    op.create_index("ix_enrollments_continued", "enrollments", ["campaign", "id"], postgresql_where=where,
                    sqlite_where=where)
    unsubscribed = sa.text("type = 'unsubscribed'")
    op.create_index("ix_events_unsubscribed", "events", ["created_at", "id"], postgresql_where=unsubscribed,
                    sqlite_where=unsubscribed)


def downgrade() -> None:
    op.drop_index("ix_events_unsubscribed", table_name="events")
    op.drop_index("ix_enrollments_continued", table_name="enrollments")
    op.drop_table("forecast_counts")
    op.drop_table("forecast_runs")

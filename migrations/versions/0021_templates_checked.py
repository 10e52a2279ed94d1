"""campaign_states.templates_checked: the digest of the campaign files whose step templates last compiled at a
start-up of a command that sends, so a later start with the same files (a `drip tick` from cron every
minute) skips compiling them again. A template that fails never gets its digest recorded: every start
refuses until it is fixed.

Revision ID: 0021_templates_checked
Revises: 0020_engagement_counts
"""
import sqlalchemy as sa
from alembic import op

revision = "0021_templates_checked"
down_revision = "0020_engagement_counts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("campaign_states", sa.Column("templates_checked", sa.String(64), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE campaign_states DROP COLUMN templates_checked")

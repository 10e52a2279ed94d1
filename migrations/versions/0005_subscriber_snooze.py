"""subscribers.snoozed_until: a reader can snooze her emails from the preference page until this time.

Revision ID: 0009_issue9
Revises: 0004_issue4
"""
import sqlalchemy as sa
from alembic import op

revision = "0009_issue9"
down_revision = "0004_issue4"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscribers") as batch:
        batch.add_column(sa.Column("snoozed_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("subscribers") as batch:
        batch.drop_column("snoozed_until")

"""users.timezone and users.disabled_at: each operator reads the console's times in their own time zone, and
an operator can be disabled (they can no longer log in, and a session they hold stops working) without
deleting who did what.

Revision ID: 0017_operator_tz_disabled
Revises: 0016_enrollment_due_from
"""
import sqlalchemy as sa
from alembic import op

revision = "0017_operator_tz_disabled"
down_revision = "0017_campaign_versions_console"
branch_labels = None
depends_on = None


# Plain ALTER TABLE on both databases: nullable columns, no rebuild.
def upgrade() -> None:
    op.add_column("users", sa.Column("timezone", sa.String(64), nullable=True))
    op.add_column("users", sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE users DROP COLUMN disabled_at")
    op.execute("ALTER TABLE users DROP COLUMN timezone")

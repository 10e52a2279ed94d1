"""issue 5: enrollments.origin_campaign (the lead magnet a continued enrollment came from) and
enrollments.next_step_key (the key the step pointer was set to, for `drip campaigns diff`)

Revision ID: 0005_issue5
Revises: 0008_issue8 (the head on this branch; the integrator re-chains)
"""
import sqlalchemy as sa
from alembic import op

revision = "0005_issue5"
down_revision = "0008_issue8"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("enrollments") as batch:
        batch.add_column(sa.Column("origin_campaign", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("next_step_key", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("enrollments") as batch:
        batch.drop_column("next_step_key")
        batch.drop_column("origin_campaign")

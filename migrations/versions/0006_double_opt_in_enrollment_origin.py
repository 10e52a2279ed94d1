"""Double opt-in, campaign continuations and imported consents.

- enrollments.origin_campaign (the lead magnet a continued enrollment came from) and
  enrollments.next_step_key (the key the step pointer was set to, for `drip campaigns diff`).
- pending_confirmations: signups waiting for the reader to confirm her address (double opt-in).
- consents.source widened from 16 to 100 characters, to hold "import:<file name>" for imported readers.

Revision ID: 0005_issue5
Revises: 0009_issue9
"""
import sqlalchemy as sa
from alembic import op

revision = "0005_issue5"
down_revision = "0009_issue9"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pending_confirmations",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("subscriber_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("campaign", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("send_pending", sa.Boolean(), nullable=False),
        sa.Column("sending_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sends", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscribers.id"], ondelete="CASCADE",
                                name=op.f("fk_pending_confirmations_subscriber_id_subscribers")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pending_confirmations")),
        sa.UniqueConstraint("subscriber_id", "campaign", name=op.f("uq_pending_confirmations_subscriber_id_campaign")),
    )
    with op.batch_alter_table("consents") as batch:  # room for "import:<file name>"
        batch.alter_column("source", existing_type=sa.String(length=16), type_=sa.String(length=100),
                           existing_nullable=False)
    with op.batch_alter_table("enrollments") as batch:
        batch.add_column(sa.Column("origin_campaign", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("next_step_key", sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.drop_table("pending_confirmations")
    with op.batch_alter_table("enrollments") as batch:
        batch.drop_column("next_step_key")
        batch.drop_column("origin_campaign")
    with op.batch_alter_table("consents") as batch:
        batch.alter_column("source", existing_type=sa.String(length=100), type_=sa.String(length=16),
                           existing_nullable=False)

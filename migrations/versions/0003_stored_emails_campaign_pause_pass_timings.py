"""Tables behind the operator console and API: each sent email's bytes, per-campaign pause switches,
dispatch pass timings.

- `message_contents`: the exact bytes of each sent email, for the operator's "as sent" view.
- `campaign_states`: a paused campaign queues no new step and claims none of its messages.
- `dispatch_passes`: one row per dispatch pass (any worker), the source of the pass-duration metrics.

Revision ID: 0003_issue3
Revises: 0008_issue8
"""
import sqlalchemy as sa
from alembic import op

revision = "0003_issue3"
down_revision = "0008_issue8"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "message_contents",
        sa.Column("message_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"], name=op.f("fk_message_contents_message_id_messages"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_message_contents")),
    )
    op.create_table(
        "campaign_states",
        sa.Column("campaign", sa.String(length=64), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("paused_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("campaign", name=op.f("pk_campaign_states")),
    )
    op.create_table(
        "dispatch_passes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("worker", sa.String(length=80), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_seconds", sa.Float(), nullable=False),
        sa.Column("sent", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dispatch_passes")),
    )
    op.create_index("ix_dispatch_passes_started", "dispatch_passes", ["started_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_dispatch_passes_started", table_name="dispatch_passes")
    op.drop_table("dispatch_passes")
    op.drop_table("campaign_states")
    op.drop_table("message_contents")

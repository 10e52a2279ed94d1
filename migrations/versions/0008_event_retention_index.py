"""Index on events.created_at for retention pruning (DRIP_EVENT_RETENTION_DAYS).

Revision ID: 0010_event_retention
Revises: 0006_issue6
"""
from alembic import op

revision = "0010_event_retention"
down_revision = "0006_issue6"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_created", ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_created")

"""A global sending pause and the webhook token replay cache.

- `sending_state`: one row saying whether all sending is paused, e.g. after the email provider refused
  our credentials, and why.
- `webhook_tokens`: tokens of provider webhooks already accepted. Mailgun signs only timestamp + token,
  so a replayed webhook is refused by remembering each token and accepting it once.

Revision ID: 0004_issue4
Revises: 0003_issue3
"""
import sqlalchemy as sa
from alembic import op

revision = "0004_issue4"
down_revision = "0003_issue3"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sending_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sending_state")),
    )
    op.create_table(
        "webhook_tokens",
        sa.Column("token", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token", name=op.f("pk_webhook_tokens")),
    )
    with op.batch_alter_table("webhook_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_webhook_tokens_created_at"), ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("webhook_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_tokens_created_at"))
    op.drop_table("webhook_tokens")
    op.drop_table("sending_state")

"""api_tokens.scopes: what a token may do ("read", or "read write" to change subscribers), existing tokens
read-only as the documentation always said; users.session_version: a number every console session carries,
raised by logout and by a password change so that a copied session cookie stops working at once.

Revision ID: 0017_token_scopes_sessions
Revises: 0016_enrollment_due_from
"""
import sqlalchemy as sa
from alembic import op

revision = "0017_token_scopes_sessions"
down_revision = "0016_enrollment_due_from"
branch_labels = None
depends_on = None


# Plain ALTER TABLE ADD COLUMN with a default on both databases: no table rebuild on SQLite.
def upgrade() -> None:
    op.add_column("api_tokens", sa.Column("scopes", sa.String(40), nullable=False, server_default="read"))
    op.add_column("users", sa.Column("session_version", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    op.execute("ALTER TABLE users DROP COLUMN session_version")
    op.execute("ALTER TABLE api_tokens DROP COLUMN scopes")

"""Shared pieces of "as sent" copies, stored once instead of in every email's copy.

An email of a campaign step is ~29 KB, of which ~1-3 KB hold the reader's values (headers, the lines with
their name and links); the rest is the same in every email of the step. `content_chunks` holds those
fixed pieces once, by SHA-256, and a `message_contents.raw` may now be a layout referring to them
(service/as_sent.py): ~12 KB of table and WAL per email on PostgreSQL became ~2 KB. Rows written before
keep their bytes and read as before.

Revision ID: 0014_content_chunks
Revises: 0013_lean_indexes
"""
import sqlalchemy as sa
from alembic import op

revision = "0014_content_chunks"
down_revision = "0013_lean_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "content_chunks",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_content_chunks")),
    )


def downgrade() -> None:
    # Layouts refer to the chunks: every copy is written back as its bytes before they go.
    from service.compose import as_sent

    as_sent.expand_all(op.get_bind())
    op.drop_table("content_chunks")

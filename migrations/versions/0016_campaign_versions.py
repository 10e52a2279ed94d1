"""campaign_versions and campaign_drafts: campaigns edited in the console. Every publish stores the
campaign's files as a new version (who, when); the newest version of a campaign is what is sent. The
console's unpublished edits wait in one draft per campaign.

Revision ID: 0017_campaign_versions_console
Revises: 0016_enrollment_due_from
"""
import sqlalchemy as sa
from alembic import op

revision = "0017_campaign_versions_console"
down_revision = "0017_token_scopes_sessions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "campaign_versions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("campaign", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("published_by", sa.String(length=255), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_versions")),
        sa.UniqueConstraint("campaign", "version", name=op.f("uq_campaign_versions_campaign_version")),
    )
    op.create_table(
        "campaign_drafts",
        sa.Column("campaign", sa.String(length=64), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("base_version", sa.Integer(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("updated_by", sa.String(length=255), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("campaign", name=op.f("pk_campaign_drafts")),
    )


def downgrade() -> None:
    op.drop_table("campaign_drafts")
    op.drop_table("campaign_versions")

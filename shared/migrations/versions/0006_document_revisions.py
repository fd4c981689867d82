"""documents.revision and stale_revisions: a producer's revision of a document, and the
messages not applied because they were older than the stored document

``documents.revision`` is the highest revision applied (NULL: none was ever given);
``stale_revisions`` counts, per document, the messages refused as stale and keeps the last
one's revision (README "Revisions").

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 14:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("documents", sa.Column("revision", sa.BigInteger(), nullable=True))
    op.create_table(
        "stale_revisions",
        sa.Column("document_id", sa.BigInteger(), nullable=False),
        sa.Column("messages", sa.BigInteger(), nullable=False),
        sa.Column("last_revision", sa.BigInteger(), nullable=False),
        sa.Column("stored_revision", sa.BigInteger(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["documents.id"],
            name=op.f("fk_stale_revisions_document_id_documents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("document_id", name=op.f("pk_stale_revisions")),
    )


def downgrade() -> None:
    op.drop_table("stale_revisions")
    op.drop_column("documents", "revision")

"""pgvector: field embeddings as ``vector``, document vectors for top-K retrieval, indexes that
read a document's best matches

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 12:00:00
"""

from array import array

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import HALFVEC, VECTOR
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# How many stored embeddings are converted per round trip.
CONVERT_BATCH = 2000


def upgrade() -> None:
    # shared.db.upgrade checks first that the server has pgvector (a clear message if not).
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    _embeddings_to_vector()
    op.create_table(
        "document_vectors",
        sa.Column("document_id", sa.BigInteger(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("scoring_key", sa.String(length=64), nullable=False),
        sa.Column("slots", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("fields", VECTOR(), nullable=False),
        sa.Column("embedding", HALFVEC(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["documents.id"],
            name=op.f("fk_document_vectors_document_id_documents"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_document_vectors_model_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "document_id", "model_version_id", name=op.f("pk_document_vectors")
        ),
    )
    op.create_index(
        "ix_document_vectors_version_kind", "document_vectors", ["model_version_id", "kind"]
    )
    # (resume_id, job_id, model_version_id) is unique: it serves a resume's lookups; a job's
    # without a version (``ranked`` choosing one) keep ix_matches_job_id.
    op.drop_index(op.f("ix_matches_resume_id"), table_name="matches")
    op.create_index(
        "ix_matches_version_resume_score",
        "matches",
        ["model_version_id", "resume_id", sa.text("score DESC NULLS LAST")],
    )
    op.create_index(
        "ix_matches_version_job_score",
        "matches",
        ["model_version_id", "job_id", sa.text("score DESC NULLS LAST")],
    )


def _embeddings_to_vector() -> None:
    """``field_embeddings.vector``: raw float32 bytes -> pgvector ``vector``, row by row in
    batches (no numpy: ``jobfit db upgrade`` runs from a producer install too)."""
    op.add_column("field_embeddings", sa.Column("embedding", VECTOR(), nullable=True))
    conn = op.get_bind()
    rows = sa.table(
        "field_embeddings",
        sa.column("model_version_id", sa.Integer()),
        sa.column("text_hash", sa.String()),
        sa.column("vector", sa.LargeBinary()),
        sa.column("embedding", VECTOR()),
    )
    after: tuple[int, str] = (0, "")
    while True:
        # Keyset pages in primary-key order: each page one index range, never a rescan.
        batch = conn.execute(
            sa.select(rows.c.model_version_id, rows.c.text_hash, rows.c.vector)
            .where(sa.tuple_(rows.c.model_version_id, rows.c.text_hash) > sa.tuple_(*after))
            .order_by(rows.c.model_version_id, rows.c.text_hash)
            .limit(CONVERT_BATCH)
        ).all()
        if not batch:
            break
        conn.execute(
            rows.update()
            .where(
                rows.c.model_version_id == sa.bindparam("v"),
                rows.c.text_hash == sa.bindparam("h"),
            )
            .values(embedding=sa.bindparam("e")),
            [{"v": v, "h": h, "e": _floats(raw)} for v, h, raw in batch],
        )
        after = (batch[-1][0], batch[-1][1])
    op.drop_column("field_embeddings", "vector")
    op.alter_column("field_embeddings", "embedding", new_column_name="vector", nullable=False)


def _floats(raw: bytes) -> list[float]:
    values = array("f")
    values.frombytes(bytes(raw))  # float32 little endian, as workers.scoring.to_bytes wrote
    return values.tolist()


def downgrade() -> None:
    op.drop_index("ix_matches_version_job_score", table_name="matches")
    op.drop_index("ix_matches_version_resume_score", table_name="matches")
    op.create_index(op.f("ix_matches_resume_id"), "matches", ["resume_id"], unique=False)
    op.drop_table("document_vectors")
    # The embedding cache is rebuilt from the texts on demand: downgrading empties it.
    op.execute("DELETE FROM field_embeddings")
    op.drop_column("field_embeddings", "vector")
    op.add_column("field_embeddings", sa.Column("vector", sa.LargeBinary(), nullable=False))

"""Compact document vectors: ``document_vectors.fields`` becomes ``halfvec`` (was ``vector``)
and the full retrieval vector (``embedding``) is dropped (README "Matching at scale").

Among 1,000,000 resumes a row took about 14 kB (float32 field vectors 7.7 kB, the 1,934-wide
retrieval vector 3.9 kB, the projected entry and the rest): 15 GB, more than the memory that
serves it. The field vectors in float16 change a match score by about 1e-4; the retrieval
vector is the field vectors weighted and concatenated (``workers.vectors``), so a query's
candidates are now ranked by exact scoring of the field vectors they are read for anyway
(``workers.ranking``), and an index basis is fitted on retrieval vectors made from them.

Upgrading converts the stored field vectors in place and drops the column in the same
statement, so the table is rewritten once, without it, under an exclusive lock (minutes at a
million documents); no vector is stale after it. The entry indexes are dropped first: a
rewrite rebuilds every index of the table, and an IVFFlat build past a few hundred lists
needs more ``maintenance_work_mem`` than a session has by default (pgvector refuses it), an
HNSW one minutes. Bases and entries are kept: the next write to a (version, kind) builds its
index again (``workers.index_basis.fit``), and until then its queries read the entries
without an index. Downgrading cannot restore the retrieval vectors in SQL: it deletes the
stored vectors and index bases (derived data; ``jobfit rescore`` makes them again from the
embedding cache, without the model), then restores the columns.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 23:00:00
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

DROP_ENTRY_INDEXES = """
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT schemaname, indexname FROM pg_indexes
             WHERE tablename = 'document_vectors' AND schemaname = current_schema()
               AND indexname LIKE 'ix\\_document\\_vectors\\_entry\\_v%'
    LOOP
        EXECUTE format('DROP INDEX %I.%I', r.schemaname, r.indexname);
    END LOOP;
END
$$
"""


def upgrade() -> None:
    op.execute(DROP_ENTRY_INDEXES)
    op.execute(
        "ALTER TABLE document_vectors DROP COLUMN embedding,"
        " ALTER COLUMN fields TYPE halfvec USING fields::halfvec"
    )


def downgrade() -> None:
    op.execute(DROP_ENTRY_INDEXES)
    op.execute("DELETE FROM index_bases")
    op.execute("DELETE FROM document_vectors")
    op.execute("ALTER TABLE document_vectors ALTER COLUMN fields TYPE vector USING fields::vector")
    op.execute("ALTER TABLE document_vectors ADD COLUMN embedding halfvec NOT NULL")

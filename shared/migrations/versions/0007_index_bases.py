"""Projected index entries: ``index_bases`` (per model version and kind, the basis retrieval
vectors are projected on) and ``document_vectors.index_entry`` (a document's projected
entry), which the HNSW index of a (version, kind) now indexes instead of the full retrieval
vector (``workers.index_basis``; README "Matching at scale").

The full-width indexes (``ix_document_vectors_l2_v*``) are dropped: until a (version, kind)
has a basis its queries scan exactly, and a worker fits one on the next write once the kind
has ``scoring.index_fit_at`` documents. ``jobfit_ensure_hnsw_index`` (migration 0005) now
builds ``ix_document_vectors_entry_v<version>_<kind>`` on ``index_entry``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 18:00:00
"""

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import HALFVEC

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

SIGNATURE = "jobfit_ensure_hnsw_index(integer, text, integer, integer, integer)"

FUNCTION = """
CREATE OR REPLACE FUNCTION jobfit_ensure_hnsw_index(
    version_id integer, doc_kind text, dims integer, m integer, ef_construction integer
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {schemas}, pg_temp AS $$
DECLARE
    name text := format('ix_document_vectors_{prefix}_v%s_%s', version_id, doc_kind);
BEGIN
    IF doc_kind NOT IN ('resume', 'job') THEN
        RAISE EXCEPTION 'unknown document kind %', doc_kind;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM model_versions WHERE id = version_id) THEN
        RAISE EXCEPTION 'no model version %', version_id;
    END IF;
    IF dims NOT BETWEEN 1 AND 4000 OR m NOT BETWEEN 2 AND 100
        OR ef_construction NOT BETWEEN 2 * m AND 1000 THEN
        RAISE EXCEPTION 'HNSW settings out of range (dims %, m %, ef_construction %)',
            dims, m, ef_construction;
    END IF;
{check}
    PERFORM pg_advisory_xact_lock(hashtext(name));
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format(
        'CREATE INDEX %I ON document_vectors USING hnsw (({column}::halfvec(%s)) halfvec_l2_ops)'
        ' WITH (m = %s, ef_construction = %s) WHERE model_version_id = %s AND kind = %L',
        name, dims, m, ef_construction, version_id, doc_kind
    );
    RETURN true;
END
$$
"""

DROP_INDEXES = """
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT schemaname, indexname FROM pg_indexes
             WHERE tablename = 'document_vectors' AND schemaname = current_schema()
               AND indexname LIKE 'ix\\_document\\_vectors\\_{prefix}\\_v%'
    LOOP
        EXECUTE format('DROP INDEX %I.%I', r.schemaname, r.indexname);
    END LOOP;
END
$$
"""


# The entries' width is the basis's: a caller that says otherwise (a worker of the code before
# this migration, during a rolling upgrade) is refused instead of building an index no entry
# fits.
CHECK_BASIS = """
    IF NOT EXISTS (SELECT 1 FROM index_bases b
                   WHERE b.model_version_id = version_id AND b.kind = doc_kind
                     AND b.dims + 1 = jobfit_ensure_hnsw_index.dims) THEN
        RAISE EXCEPTION 'no index basis of version % for %s of % dimensions (index entries'
            ' are made by workers of migration 0007 on)', version_id, doc_kind, dims;
    END IF;"""


def _function(prefix: str, column: str, check: str = "") -> str:
    """The function for indexes named ``prefix`` on ``column``, on the search path 0005 set:
    the tables' schema and pgvector's."""
    bind = op.get_bind()
    ext = bind.execute(
        sa.text(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
            " WHERE e.extname = 'vector'"
        )
    ).scalar_one()
    tables = bind.execute(sa.text("SELECT current_schema()")).scalar_one()
    quote = bind.dialect.identifier_preparer.quote
    schemas = ", ".join(dict.fromkeys(quote(n) for n in (tables, ext)))
    return (
        FUNCTION.replace("{schemas}", schemas)
        .replace("{prefix}", prefix)
        .replace("{column}", column)
        .replace("{check}", check)
    )


def upgrade() -> None:
    op.add_column("document_vectors", sa.Column("index_entry", HALFVEC(), nullable=True))
    op.create_table(
        "index_bases",
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("source_dims", sa.Integer(), nullable=False),
        sa.Column("dims", sa.Integer(), nullable=False),
        sa.Column("basis", sa.LargeBinary(), nullable=False),
        sa.Column("fitted_on", sa.Integer(), nullable=False),
        sa.Column("energy", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_index_bases_model_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("model_version_id", "kind", name=op.f("pk_index_bases")),
    )
    op.execute(DROP_INDEXES.replace("{prefix}", "l2"))
    op.execute(_function("entry", "index_entry", CHECK_BASIS))


def downgrade() -> None:
    op.execute(DROP_INDEXES.replace("{prefix}", "entry"))
    op.execute(_function("l2", "embedding"))
    op.drop_table("index_bases")
    op.drop_column("document_vectors", "index_entry")

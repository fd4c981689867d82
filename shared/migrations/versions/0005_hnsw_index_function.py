"""jobfit_ensure_hnsw_index: the HNSW index of a (model version, kind), created on demand by a
role that does not own the tables

A new model version's partial HNSW indexes are created when its first document vectors are
written (``repository.vectors.ensure_index``), by a worker. CREATE INDEX needs the table's
owner; this function runs as its owner (SECURITY DEFINER, the role that ran the migrations)
and takes only integers and a checked kind, so a worker's role needs no more than EXECUTE on
it (least privilege: README "Deploy"). Euclidean distance over entries of one norm
(``workers.vectors``: maximum inner product search as nearest-neighbour search).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 13:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

FUNCTION = """
CREATE OR REPLACE FUNCTION jobfit_ensure_hnsw_index(
    version_id integer, doc_kind text, dims integer, m integer, ef_construction integer
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {schemas}, pg_temp AS $$
DECLARE
    name text := format('ix_document_vectors_l2_v%s_%s', version_id, doc_kind);
BEGIN
    IF doc_kind NOT IN ('resume', 'job') THEN
        RAISE EXCEPTION 'unknown document kind %', doc_kind;
    END IF;
    -- Only for a registered version, within pgvector's and sane limits.
    IF NOT EXISTS (SELECT 1 FROM model_versions WHERE id = version_id) THEN
        RAISE EXCEPTION 'no model version %', version_id;
    END IF;
    IF dims NOT BETWEEN 1 AND 4000 OR m NOT BETWEEN 2 AND 100
        OR ef_construction NOT BETWEEN 2 * m AND 1000 THEN
        RAISE EXCEPTION 'HNSW settings out of range (dims %, m %, ef_construction %)',
            dims, m, ef_construction;
    END IF;
    -- Two workers meeting a new version create it once.
    PERFORM pg_advisory_xact_lock(hashtext(name));
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format(
        'CREATE INDEX %I ON document_vectors USING hnsw ((embedding::halfvec(%s)) halfvec_l2_ops)'
        ' WITH (m = %s, ef_construction = %s) WHERE model_version_id = %s AND kind = %L',
        name, dims, m, ef_construction, version_id, doc_kind
    );
    RETURN true;
END
$$
"""


def upgrade() -> None:
    # The schema pgvector is installed in (public here; elsewhere, e.g. "extensions" on some
    # managed services) goes on the function's search path with the tables' schema.
    ext = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
                " WHERE e.extname = 'vector'"
            )
        )
        .scalar_one()
    )
    tables = op.get_bind().execute(sa.text("SELECT current_schema()")).scalar_one()
    quote = op.get_bind().dialect.identifier_preparer.quote
    schemas = ", ".join(dict.fromkeys(quote(n) for n in (tables, ext)))
    op.execute(FUNCTION.replace("{schemas}", schemas))
    op.execute(
        "REVOKE ALL ON FUNCTION jobfit_ensure_hnsw_index(integer, text, integer, integer,"
        " integer) FROM PUBLIC"
    )


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION IF EXISTS jobfit_ensure_hnsw_index(integer, text, integer, integer, integer)"
    )

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

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

FUNCTION = """
CREATE OR REPLACE FUNCTION jobfit_ensure_hnsw_index(
    version_id integer, doc_kind text, dims integer, m integer, ef_construction integer
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    name text := format('ix_document_vectors_l2_v%s_%s', version_id, doc_kind);
BEGIN
    IF doc_kind NOT IN ('resume', 'job') THEN
        RAISE EXCEPTION 'unknown document kind %', doc_kind;
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
    op.execute(FUNCTION)
    op.execute(
        "REVOKE ALL ON FUNCTION jobfit_ensure_hnsw_index(integer, text, integer, integer,"
        " integer) FROM PUBLIC"
    )


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION IF EXISTS jobfit_ensure_hnsw_index(integer, text, integer, integer, integer)"
    )

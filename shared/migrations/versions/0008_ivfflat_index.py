"""IVFFlat indexes on the projected entries (``workers.index_basis``; README "Matching at
scale"). SECURITY DEFINER as 0005's: the writer role executes them without owning the table.

``jobfit_ensure_ivfflat_index`` builds a (model version, kind)'s index as
``ix_document_vectors_entry_v<version>_<kind>_l<lists>``, unless one of more than half those
lists exists (the rule workers apply, checked again under the build lock: a worker that
counted a few more entries while another built builds nothing). It drops nothing: dropping
takes a lock that waits for every reader of the table, and a build holding its own lock
meanwhile could deadlock with a writer that read before it. ``jobfit_drop_replaced_entry_indexes``
drops, in a transaction of its own, every entry index of the (version, kind) but the IVFFlat
one of most lists (an HNSW one of migration 0005's function included).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 00:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SIGNATURES = (
    "jobfit_ensure_ivfflat_index(integer, text, integer, integer)",
    "jobfit_drop_replaced_entry_indexes(integer, text)",
)

FUNCTION = """
CREATE OR REPLACE FUNCTION jobfit_ensure_ivfflat_index(
    version_id integer, doc_kind text, dims integer, lists integer
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {schemas}, pg_temp AS $$
DECLARE
    base text := format('ix_document_vectors_entry_v%s_%s', version_id, doc_kind);
    name text := format('%s_l%s', base, lists);
BEGIN
    IF doc_kind NOT IN ('resume', 'job') THEN
        RAISE EXCEPTION 'unknown document kind %', doc_kind;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM model_versions WHERE id = version_id) THEN
        RAISE EXCEPTION 'no model version %', version_id;
    END IF;
    IF dims NOT BETWEEN 1 AND 4000 OR lists NOT BETWEEN 1 AND 32768 THEN
        RAISE EXCEPTION 'IVFFlat settings out of range (dims %, lists %)', dims, lists;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM index_bases b
                   WHERE b.model_version_id = version_id AND b.kind = doc_kind
                     AND b.dims + 1 = jobfit_ensure_ivfflat_index.dims) THEN
        RAISE EXCEPTION 'no index basis of version % for %s of % dimensions',
            version_id, doc_kind, dims;
    END IF;
    -- the lock 0007's function takes: one build of a (version, kind) at a time
    PERFORM pg_advisory_xact_lock(hashtext(base));
    IF EXISTS (SELECT 1 FROM pg_class c
               WHERE c.relkind = 'i'
                 AND c.relnamespace = (SELECT oid FROM pg_namespace
                                       WHERE nspname = current_schema())
                 AND starts_with(c.relname, base || '_l')
                 AND 2 * substring(c.relname FROM '_l([0-9]+)$')::int > lists) THEN
        RETURN false;
    END IF;
    EXECUTE format(
        'CREATE INDEX %I ON document_vectors USING ivfflat ((index_entry::halfvec(%s))'
        ' halfvec_l2_ops) WITH (lists = %s) WHERE model_version_id = %s AND kind = %L',
        name, dims, lists, version_id, doc_kind
    );
    RETURN true;
END
$$
"""


DROP_FUNCTION = """
CREATE OR REPLACE FUNCTION jobfit_drop_replaced_entry_indexes(
    version_id integer, doc_kind text
) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {schemas}, pg_temp AS $$
DECLARE
    base text := format('ix_document_vectors_entry_v%s_%s', version_id, doc_kind);
    keep text;
    r record;
    dropped integer := 0;
BEGIN
    IF doc_kind NOT IN ('resume', 'job') THEN
        RAISE EXCEPTION 'unknown document kind %', doc_kind;
    END IF;
    SELECT indexname INTO keep FROM pg_indexes
     WHERE tablename = 'document_vectors' AND schemaname = current_schema()
       AND starts_with(indexname, base || '_l')
     ORDER BY substring(indexname FROM '_l([0-9]+)$')::int DESC LIMIT 1;
    IF keep IS NULL THEN
        RETURN 0;
    END IF;
    FOR r IN SELECT indexname FROM pg_indexes
             WHERE tablename = 'document_vectors' AND schemaname = current_schema()
               AND indexname <> keep
               AND (indexname = base OR starts_with(indexname, base || '_l'))
    LOOP
        EXECUTE format('DROP INDEX %I', r.indexname);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END
$$
"""


def upgrade() -> None:
    bind = op.get_bind()
    # On the search path 0005 set: the tables' schema and pgvector's.
    ext = bind.execute(
        sa.text(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
            " WHERE e.extname = 'vector'"
        )
    ).scalar_one()
    tables = bind.execute(sa.text("SELECT current_schema()")).scalar_one()
    quote = bind.dialect.identifier_preparer.quote
    schemas = ", ".join(dict.fromkeys(quote(n) for n in (tables, ext)))
    for function in (FUNCTION, DROP_FUNCTION):
        op.execute(function.replace("{schemas}", schemas))
    for signature in SIGNATURES:
        op.execute(f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC")


def downgrade() -> None:
    for signature in SIGNATURES:
        op.execute(f"DROP FUNCTION IF EXISTS {signature}")

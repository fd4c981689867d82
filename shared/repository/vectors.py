"""Document vectors (``document_vectors``): per (document, model version) its field vectors
and its projected index entry, and the documents of the other kind whose entries are
nearest a query's through an entry index per (version, kind): IVFFlat (rebuilt with more
lists as the kind grows: ``workers.index_basis``) or HNSW. Exact ranking of what they
return is ``workers.ranking``'s.

The index is partial (``WHERE model_version_id = v AND kind = k``) over the projected entry
cast to its basis's width (``halfvec(d)``; ``repository.bases``), so each version has its
own, built when its basis is fitted, and a promotion's rebuild never touches the serving
version's. Queries name the version and kind as literals (the planner proves the partial
predicate only from constants) and order by the same cast expression. A (version, kind)
without a basis yet (fewer documents than ``scoring.index_fit_at``) is read whole, in pages
(``vector_page``), and ranked exactly.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, LiteralString

from pgvector import HalfVector
from sqlalchemy import func, select
from sqlalchemy import text as sql
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from jobfit.shared.orm import DocumentRow, DocumentVectorRow, table_of, utcnow
from jobfit.shared.repository.binary import binary_rows
from jobfit.shared.repository.chunks import chunked

Kind = Literal["resume", "job"]
# pgvector's hnsw.ef_search accepts 1..1000; a query returns at most ef_search rows.
MAX_EF_SEARCH = 1000
# pgvector indexes halfvec with HNSW up to this many dimensions; wider: no index.
HNSW_HALFVEC_MAX_DIMS = 4000
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VectorWrite:
    document_id: int
    kind: str
    content_hash: str
    slots: list[str]
    fields: Any  # float sequence: numpy array or list (stored as float16)
    index_entry: Any = None  # its projection (None: the (version, kind) has no basis yet)


@dataclass(frozen=True)
class StoredVectors:
    document_id: int
    kind: str
    content_hash: str
    scoring_key: str
    slots: list[str]
    fields: bytes  # ``halfvec_send``'s binary form (``workers.scoring.from_halfvec``)


def upsert_vectors(
    *, session: Session, model_version_id: int, key: str, writes: Sequence[VectorWrite]
) -> None:
    """Write (or replace) documents' vectors under one version; the same write twice leaves
    the same row, and a write for content the document no longer has replaces nothing."""
    if not writes:
        return
    now = utcnow()
    ins = insert(table_of(DocumentVectorRow))
    stmt = ins.on_conflict_do_update(
        index_elements=["document_id", "model_version_id"],
        set_={
            c: ins.excluded[c]
            for c in (
                "kind",
                "content_hash",
                "scoring_key",
                "slots",
                "fields",
                "index_entry",
            )
        }
        | {"updated_at": now},
        # Vectors of a version of the document that is no longer stored never replace others
        # (a slow worker's write after a newer version was committed).
        where=sql(
            "excluded.content_hash ="
            " (SELECT d.content_hash FROM documents d WHERE d.id = excluded.document_id)"
        ),
    )
    for part in chunked(sorted(writes, key=lambda w: w.document_id)):
        session.execute(
            stmt,
            [
                {
                    "document_id": w.document_id,
                    "model_version_id": model_version_id,
                    "kind": w.kind,
                    "content_hash": w.content_hash,
                    "scoring_key": key,
                    "slots": w.slots,
                    "fields": w.fields,
                    "index_entry": w.index_entry,
                    "updated_at": now,
                }
                for w in part
            ],
        )


# Stored vectors of documents, by id or a page of a kind: constant statement texts whatever
# the ids (``repository.binary``).
_VECTOR_COLUMNS = (
    "SELECT document_id, kind, content_hash, scoring_key, slots::text, halfvec_send(fields)"
    " FROM document_vectors"
)
_LOAD_VECTORS = (
    _VECTOR_COLUMNS + " WHERE model_version_id = %(v)s AND document_id = ANY(%(ids)s::bigint[])"
)
_VECTOR_PAGE = (
    _VECTOR_COLUMNS + " WHERE model_version_id = %(v)s AND kind = %(k)s AND document_id > %(after)s"
    " ORDER BY document_id LIMIT %(n)s"
)
# A pseudo-random draw that is the same for the same rows (a hash of the row id).
_SAMPLE_VECTORS = (
    _VECTOR_COLUMNS + " WHERE model_version_id = %(v)s AND kind = %(k)s"
    " ORDER BY hashint8(document_id), document_id LIMIT %(n)s"
)


def _stored(rows: Iterable[tuple[Any, ...]]) -> list[StoredVectors]:
    return [
        StoredVectors(doc_id, kind, content_hash, key, _slots(slots), bytes(fields))
        for doc_id, kind, content_hash, key, slots, fields in rows
    ]


@functools.lru_cache(maxsize=256)
def _slots_of(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


def _slots(text: str) -> list[str]:
    """A row's slot names from their JSON text: a kind has few layouts, each parsed once
    (psycopg's JSON loader took 10 of a query's 60 ms for its pool of 1,000)."""
    return list(_slots_of(text))


def load_vectors(
    *, session: Session, model_version_id: int, document_ids: Iterable[int]
) -> dict[int, StoredVectors]:
    """Stored vectors of those documents under one version (fresh or not: see the hashes)."""
    out: dict[int, StoredVectors] = {}
    for part in chunked(sorted(set(document_ids))):
        rows = binary_rows(session, _LOAD_VECTORS, {"v": model_version_id, "ids": list(part)})
        out |= {sv.document_id: sv for sv in _stored(rows)}
    return out


def vector_page(
    *, session: Session, model_version_id: int, kind: str, after: int, n: int
) -> list[StoredVectors]:
    """The next ``n`` stored vectors of the (version, kind) by document id after ``after``."""
    params = {"v": model_version_id, "k": _kind(kind), "after": after, "n": n}
    return _stored(binary_rows(session, _VECTOR_PAGE, params))


def sample_vectors(
    *, session: Session, model_version_id: int, kind: str, n: int
) -> list[StoredVectors]:
    """Up to ``n`` of the (version, kind)'s stored vectors, the same draw for the same rows."""
    params = {"v": model_version_id, "k": _kind(kind), "n": n}
    return _stored(binary_rows(session, _SAMPLE_VECTORS, params))


def stale_vector_ids(
    *,
    session: Session,
    model_version_id: int,
    kind: Kind,
    key: str,
    after: int = 0,
    limit: int = 1000,
) -> list[int]:
    """Documents of a kind whose vectors under this version are missing or stale (another
    content or weights), by id, from row id ``after`` on: what a rebuild still has to write
    (a document without any field text never gets vectors: a rebuild pages past it)."""
    dv = DocumentVectorRow
    stmt = (
        select(DocumentRow.id)
        .outerjoin(
            dv, (dv.document_id == DocumentRow.id) & (dv.model_version_id == model_version_id)
        )
        .where(
            DocumentRow.kind == kind,
            DocumentRow.id > after,
            (dv.document_id.is_(None))
            | (dv.content_hash != DocumentRow.content_hash)
            | (dv.scoring_key != key),
        )
        .order_by(DocumentRow.id)
        .limit(limit)
    )
    return list(session.execute(stmt).scalars())


def index_name(model_version_id: int, kind: str) -> str:
    """The HNSW index's name; an IVFFlat one's adds ``_l<lists>`` (migration 0008)."""
    return f"ix_document_vectors_entry_v{model_version_id}_{kind}"


@dataclass(frozen=True)
class EntryIndex:
    """The index over a (version, kind)'s entries: its name, access method (``hnsw`` or
    ``ivfflat``), for IVFFlat its number of lists, and Postgres's estimate of its entries
    (``pg_class.reltuples``: exact when built, then as VACUUM last counted; -1: unknown)."""

    name: str
    method: str
    lists: int | None
    entries: float


def entry_indexes(*, session: Session, model_version_id: int, kind: str) -> list[EntryIndex]:
    """The (version, kind)'s entry indexes, the one that serves first: the IVFFlat index of
    most lists, else the HNSW one. More than one only between an IVFFlat rebuild's commit and
    ``drop_replaced_entry_indexes`` (or an HNSW index a worker of older code built next to
    it); the planner may read either meanwhile."""
    base = index_name(model_version_id, _kind(kind))
    rows = session.execute(
        sql(
            "SELECT c.relname, a.amname,"
            " (SELECT substr(o, 7)::int FROM unnest(c.reloptions) o WHERE o LIKE 'lists=%')"
            " AS lists, c.reltuples"
            " FROM pg_class c JOIN pg_am a ON a.oid = c.relam"
            " WHERE c.relkind = 'i'"
            " AND c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())"
            " AND (c.relname = :base OR starts_with(c.relname, :base || '_l'))"
            " ORDER BY a.amname = 'ivfflat' DESC, lists DESC NULLS LAST, c.relname"
        ),
        {"base": base},
    ).all()
    return [EntryIndex(r[0], r[1], r[2], float(r[3])) for r in rows]


def entry_index(*, session: Session, model_version_id: int, kind: str) -> EntryIndex | None:
    """The (version, kind)'s serving entry index (``entry_indexes``), if it has one."""
    found = entry_indexes(session=session, model_version_id=model_version_id, kind=kind)
    return found[0] if found else None


def drop_replaced_entry_indexes(*, session: Session, model_version_id: int, kind: Kind) -> int:
    """Drop the (version, kind)'s entry indexes but the serving IVFFlat one; how many
    (``jobfit_drop_replaced_entry_indexes``, migration 0008). Run it in a transaction of its
    own with a short ``lock_timeout``: a drop waits for every reader of the table."""
    dropped = session.execute(
        sql("SELECT jobfit_drop_replaced_entry_indexes(:v, :k)"),
        {"v": model_version_id, "k": _kind(kind)},
    ).scalar()
    return int(dropped or 0)


def index_exists(*, session: Session, model_version_id: int, kind: str) -> bool:
    """Whether the (version, kind) has an entry index (HNSW or IVFFlat)."""
    return entry_index(session=session, model_version_id=model_version_id, kind=kind) is not None


def count_vectors(*, session: Session, model_version_id: int, kind: str) -> int:
    """How many documents of a kind have vectors under a version."""
    t = DocumentVectorRow
    return int(
        session.execute(
            select(func.count()).where(t.model_version_id == model_version_id, t.kind == kind)
        ).scalar_one()
    )


def ensure_ivfflat_index(
    *, session: Session, model_version_id: int, kind: Kind, dims: int, lists: int
) -> bool:
    """Create the (version, kind)'s IVFFlat index of ``lists`` lists over its entries of
    ``dims`` (its basis's width) unless one of more than half as many lists exists; True if
    it was created (``jobfit_ensure_ivfflat_index``, migration 0008: serialised with the HNSW
    function by an advisory lock). Building it locks the table against writes until the
    transaction ends (seconds at 100,000 entries); the index it replaces stays until
    ``drop_replaced_entry_indexes``."""
    # pgvector refuses a build whose k-means would pass maintenance_work_mem (64 MB by
    # default: enough for about 560 lists, so the first rebuild refused was the one to 800, at
    # about 160,000 entries); the build gets what it needs for its call, then the caller's
    # setting is back.
    have_kb = int(
        session.execute(
            sql("SELECT setting::bigint FROM pg_settings WHERE name = 'maintenance_work_mem'")
        ).scalar_one()
    )
    need_kb = ivfflat_build_kb(lists, dims)
    raised = need_kb > have_kb
    if raised:
        log.info(
            "IVFFlat build of %d lists: maintenance_work_mem %d kB for the call (set: %d kB)",
            lists,
            need_kb,
            have_kb,
        )
        _set_local(session, "maintenance_work_mem", f"{need_kb}kB")
    # (a failed build aborts the transaction, whose rollback undoes the setting too)
    created = session.execute(
        sql("SELECT jobfit_ensure_ivfflat_index(:v, :k, :d, :l)"),
        {"v": model_version_id, "k": _kind(kind), "d": dims, "l": lists},
    ).scalar()
    if raised:
        _set_local(session, "maintenance_work_mem", f"{have_kb}kB")
    return bool(created)


def _set_local(session: Session, name: str, value: str) -> None:
    session.execute(sql("SELECT set_config(:n, :v, true)"), {"n": name, "v": value})


def ivfflat_build_kb(lists: int, dims: int) -> int:
    """kB of ``maintenance_work_mem`` pgvector 0.8's IVFFlat build of ``lists`` lists over
    ``halfvec(dims)`` asks for (``ivfkmeans.c``: its samples, 50 a list and at least 10,000,
    the centres, and Elkan k-means' bounds, 4 bytes per sample and list: 200 bytes times the
    lists squared, about 0.8 kB per entry at ``ivf_lists``), a quarter more for margin."""
    samples = max(50 * lists, 10_000)
    item = 8 * -(-(8 + 2 * dims) // 8)  # a halfvec, MAXALIGNed
    need = (
        samples * (item + 12)  # the samples; their nearest centre and upper bound
        + 3 * lists * item  # centres, new centres (and room to spare)
        + lists * (8 + 4 * dims)  # the float aggregates of the centres
        + 4 * samples * lists  # lower bounds
        + 4 * lists * lists  # half the distances between centres
        + 16 * lists  # counts, s, new distances
    )
    return -(-need * 5 // 4 // 1024)


def ensure_index(
    *,
    session: Session,
    model_version_id: int,
    kind: Kind,
    dims: int,
    m: int,
    ef_construction: int,
) -> bool:
    """Create the HNSW index of (version, kind) over its entries of ``dims`` (its basis's
    width) if it has no entry index; True if it was created (``jobfit_ensure_hnsw_index``,
    migrations 0005 and 0007: serialised by an advisory lock, two workers create it once)."""
    if dims > HNSW_HALFVEC_MAX_DIMS:
        log.warning(
            "retrieval vectors of %d dimensions exceed pgvector's HNSW limit for halfvec (%d):"
            " nearest-document queries of version %d rank every document",
            dims,
            HNSW_HALFVEC_MAX_DIMS,
            model_version_id,
        )
        return False
    if index_exists(session=session, model_version_id=model_version_id, kind=kind):
        return False
    # As the tables' owner (migration 0005): a worker's role needs only EXECUTE on it.
    created = session.execute(
        sql("SELECT jobfit_ensure_hnsw_index(:v, :k, :d, :m, :efc)"),
        {"v": model_version_id, "k": _kind(kind), "d": dims, "m": m, "efc": ef_construction},
    ).scalar()
    return bool(created)


def nearest_vectors(
    *,
    session: Session,
    model_version_id: int,
    kind: Kind,
    entry_query: Any,
    entry_dims: int,
    limit: int,
    ef_search: int | None = None,
    probes: int | None = None,
) -> list[StoredVectors]:
    """Stored vectors of the (at most ``limit``, at most ``MAX_EF_SEARCH``) documents of
    ``kind`` whose index entries are nearest ``entry_query`` (the query projected on the
    kind's basis, ``entry_dims`` wide) by Euclidean distance through the entry index: the
    largest inner product, every entry having one norm (``workers.vectors``), nearest first.
    Approximate: ``ef_search`` is the HNSW search breadth, ``probes`` the IVFFlat lists read
    (``workers.index_basis.probes``). Fewer than asked: an HNSW graph left some entries
    unreachable, or the kind has fewer (the caller reads them all).

    One statement: the index scan's own row visits read the field vectors (binary,
    ``repository.binary``), where reading the ids first and their vectors by id after
    looked every row up a second time (README "Matching at scale")."""
    n = min(MAX_EF_SEARCH, int(limit))
    ef = min(MAX_EF_SEARCH, max(ef_search or 0, n, 40))
    session.execute(sql(f"SET LOCAL hnsw.ef_search = {int(ef)}"))
    if probes is not None:
        session.execute(sql(f"SET LOCAL ivfflat.probes = {int(max(1, probes))}"))
    # The planner prices a distance like any operator and may pick a scan and sort over the
    # ordered index scan (measured: 620 ms instead of milliseconds at 100,000 rows). Without
    # a sort the index is the way; with no index the sort still runs.
    session.execute(sql("SET LOCAL enable_sort = off"))
    rows = binary_rows(
        session,
        _nearest_sql(model_version_id, kind, entry_dims),
        {"e": HalfVector(entry_query), "n": n},
    )
    session.execute(sql("SET LOCAL enable_sort = on"))  # the rest of the transaction as it was
    return _stored(rows)


def _nearest_sql(model_version_id: int, kind: Kind, entry_dims: int) -> LiteralString:
    """The index query (literals for the partial index's predicate and its expression: ints
    and a checked kind; the vector and the limit are bound). A constant text per (version,
    kind, width): psycopg prepares it after a few runs, as it does the other reads."""
    d = int(entry_dims)
    return (
        f"{_VECTOR_COLUMNS}"
        f" WHERE model_version_id = {int(model_version_id)} AND kind = '{_kind(kind)}'"
        f" ORDER BY index_entry::halfvec({d}) <-> CAST(%(e)s AS halfvec({d})) LIMIT %(n)s"
    )


def _kind(kind: str) -> str:
    if kind not in ("resume", "job"):
        raise ValueError(f"unknown document kind {kind!r}")
    return kind

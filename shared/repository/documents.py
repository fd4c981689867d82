"""Resumes and jobs as the producers sent them: one row per (kind, external id), the latest
content; an upsert of the same content writes nothing.

Revisions (README "Revisions"): a document's ``revision`` is the producer's, optional. The row
keeps the highest one applied. A message whose revision is older than the row's, or equal to
it with other content, is stale: not applied (its row, vectors and matches stay as they are)
and counted in ``stale_revisions``. A message without a revision is applied as before and
leaves the row's revision as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import String, any_, bindparam, func, select, tuple_
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.orm import Session, defer

from jobfit.shared.orm import DocumentRow, StaleRevisionRow, table_of, utcnow
from jobfit.shared.repository.chunks import chunked, id_array
from jobfit.shared.schemas import Document, JobDocument, ResumeDocument

DocStatus = Literal["created", "updated", "unchanged", "stale"]


def upsert_document(*, session: Session, doc: Document) -> tuple[DocumentRow, DocStatus]:
    """Store ``doc`` under (kind, external id). Same content: nothing written; an older
    revision: nothing written but its count in ``stale_revisions``."""
    ((row, status),) = upsert_documents(session=session, docs=[doc])
    return row, status


def upsert_documents(
    *, session: Session, docs: Sequence[Document]
) -> list[tuple[DocumentRow, DocStatus]]:
    """``upsert_document`` for many documents in three statements (insert the new ones, lock
    all of them, update the changed ones; a fourth counts the stale ones), in one lock order
    (kind, id). A document given twice is applied in order: each occurrence gets the status
    it would get alone, after the ones before it."""
    if not docs:
        return []
    hashes = [doc.content_hash() for doc in docs]  # once each: a canonical JSON and a sha256
    first: dict[tuple[str, str], tuple[Document, str]] = {}
    for doc, content_hash in zip(docs, hashes, strict=True):
        first.setdefault((doc.kind, doc.id), (doc, content_hash))
    now = utcnow()
    table = table_of(DocumentRow)
    new_rows = [
        {
            "kind": doc.kind,
            "external_id": doc.id,
            "content_hash": content_hash,
            "schema_version": doc.schema_version,
            "payload": doc.model_dump(mode="json"),
            "revision": doc.revision,
            "created_at": now,
            "updated_at": now,
        }
        for _, (doc, content_hash) in sorted(first.items(), key=lambda kv: kv[0])
    ]
    # One statement text for any number of rows (psycopg batches them: "insertmanyvalues");
    # a multi-row ``values([...])`` was compiled anew per batch, ~0.3 ms a document.
    insert_new = (
        insert(table)
        .on_conflict_do_nothing(index_elements=["kind", "external_id"])
        .returning(table.c.kind, table.c.external_id)
    )
    inserted: set[tuple[str, str]] = set()
    for part in chunked(new_rows):
        inserted.update((k, i) for k, i in session.execute(insert_new, list(part)))
    rows: dict[tuple[str, str], DocumentRow] = {}
    keys = sorted(first)
    for part_keys in chunked(keys):
        wanted = (
            func.unnest(
                bindparam("kinds", [k for k, _ in part_keys], type_=ARRAY(String)),
                bindparam("ids", [i for _, i in part_keys], type_=ARRAY(String)),
            )
            .table_valued("kind", "external_id")
            .render_derived()
        )
        rows.update(
            ((r.kind, r.external_id), r)
            for r in session.execute(
                select(DocumentRow)
                # Not read here: a changed document's payload is replaced, not merged.
                .options(defer(DocumentRow.payload))
                .where(
                    tuple_(DocumentRow.kind, DocumentRow.external_id).in_(
                        select(wanted.c.kind, wanted.c.external_id)
                    )
                )
                .order_by(DocumentRow.kind, DocumentRow.external_id)
                .with_for_update(of=DocumentRow)
            ).scalars()
        )
    out: list[tuple[DocumentRow, DocStatus]] = []
    stale: dict[int, StaleRevision] = {}
    for doc, content_hash in zip(docs, hashes, strict=True):
        key = (doc.kind, doc.id)
        row = rows[key]
        status: DocStatus
        if key in inserted and first[key][0] is doc:
            status = "created"
        elif (
            doc.revision is not None
            and row.revision is not None
            # older, or as old with other content (the same content is a redelivery)
            and (
                doc.revision < row.revision
                or (doc.revision == row.revision and content_hash != row.content_hash)
            )
        ):
            seen = stale.get(row.id)
            stale[row.id] = StaleRevision(
                row.id, (seen.messages if seen else 0) + 1, doc.revision, row.revision, now
            )
            status = "stale"
        else:
            if doc.revision is not None:  # not stale: newer than the row's (or it has none)
                row.revision = doc.revision
            if row.content_hash == content_hash:
                status = "unchanged"
            else:
                row.content_hash = content_hash
                row.schema_version = doc.schema_version
                row.payload = doc.model_dump(mode="json")
                row.updated_at = now
                status = "updated"
        out.append((row, status))
    session.flush()
    _count_stale(session=session, stale=list(stale.values()))
    return out


@dataclass(frozen=True)
class StaleRevision:
    """A document's stale messages of one batch: how many, the last one's revision and the
    stored revision it was refused against."""

    document_id: int
    messages: int
    last_revision: int
    stored_revision: int
    seen_at: datetime


def _count_stale(*, session: Session, stale: Sequence[StaleRevision]) -> None:
    """Add stale messages to their documents' counts (in document order: the documents are
    locked already, so concurrent batches wait on those locks, never on each other here)."""
    if not stale:
        return
    table = insert(StaleRevisionRow).values(
        [
            {
                "document_id": s.document_id,
                "messages": s.messages,
                "last_revision": s.last_revision,
                "stored_revision": s.stored_revision,
                "last_seen_at": s.seen_at,
            }
            for s in sorted(stale, key=lambda s: s.document_id)
        ]
    )
    session.execute(
        table.on_conflict_do_update(
            index_elements=["document_id"],
            set_={
                "messages": StaleRevisionRow.messages + table.excluded.messages,
                "last_revision": table.excluded.last_revision,
                "stored_revision": table.excluded.stored_revision,
                "last_seen_at": table.excluded.last_seen_at,
            },
        )
    )


def stale_counts(*, session: Session) -> dict[str, int]:
    """Stale messages counted so far, by document kind (``jobfit metrics``)."""
    rows = session.execute(
        select(DocumentRow.kind, func.sum(StaleRevisionRow.messages))
        .join(DocumentRow, DocumentRow.id == StaleRevisionRow.document_id)
        .group_by(DocumentRow.kind)
    )
    return {kind: int(n) for kind, n in rows}


def get_document(*, session: Session, kind: str, external_id: str) -> DocumentRow | None:
    return session.execute(
        select(DocumentRow).where(DocumentRow.kind == kind, DocumentRow.external_id == external_id)
    ).scalar_one_or_none()


def list_documents(
    *, session: Session, kind: str, external_ids: Sequence[str] | None = None
) -> list[DocumentRow]:
    """Documents of one kind (all, or those ids), in id order."""
    stmt = select(DocumentRow).where(DocumentRow.kind == kind).order_by(DocumentRow.id)
    if external_ids is not None:
        stmt = stmt.where(DocumentRow.external_id.in_(list(external_ids)))
    return list(session.execute(stmt).scalars())


def document_ids(*, session: Session, kind: str) -> list[int]:
    """Row ids of every document of one kind, in id order (no payloads read)."""
    stmt = select(DocumentRow.id).where(DocumentRow.kind == kind).order_by(DocumentRow.id)
    return list(session.execute(stmt).scalars())


def documents_by_id(*, session: Session, ids: Sequence[int]) -> dict[int, DocumentRow]:
    """Documents by row id (those that exist). The payload is loaded when first read: most
    callers need only their ids and content hashes."""
    out: dict[int, DocumentRow] = {}
    for part in chunked(sorted(set(ids))):
        stmt = (
            select(DocumentRow)
            .where(DocumentRow.id == any_(id_array("ids", part)))
            .options(defer(DocumentRow.payload))
        )
        out.update((r.id, r) for r in session.execute(stmt).scalars())
    return out


@dataclass(frozen=True)
class DocumentHead:
    """What a match row records of a document: its row id, kind and content hash."""

    id: int
    kind: str
    content_hash: str

    @classmethod
    def of(cls, row: DocumentRow) -> DocumentHead:
        return cls(row.id, row.kind, row.content_hash)


def parse_document(row: DocumentRow) -> ResumeDocument | JobDocument:
    """The stored payload as its message type (validated again)."""
    if row.kind == "resume":
        return ResumeDocument.model_validate(row.payload)
    return JobDocument.model_validate(row.payload)

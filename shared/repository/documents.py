"""Resumes and jobs as the producers sent them: one row per (kind, external id), the latest
content; an upsert of the same content writes nothing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from sqlalchemy import select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, defer

from jobfit.shared.orm import DocumentRow, utcnow
from jobfit.shared.repository.chunks import chunked
from jobfit.shared.schemas import Document, JobDocument, ResumeDocument

DocStatus = Literal["created", "updated", "unchanged"]


def upsert_document(*, session: Session, doc: Document) -> tuple[DocumentRow, DocStatus]:
    """Store ``doc`` under (kind, external id). Same content: nothing written."""
    ((row, status),) = upsert_documents(session=session, docs=[doc])
    return row, status


def upsert_documents(
    *, session: Session, docs: Sequence[Document]
) -> list[tuple[DocumentRow, DocStatus]]:
    """``upsert_document`` for many documents in three statements (insert the new ones, lock
    all of them, update the changed ones), in one lock order (kind, id). A document given
    twice is applied in order: each occurrence gets the status it would get alone."""
    if not docs:
        return []
    first: dict[tuple[str, str], Document] = {}
    for doc in docs:
        first.setdefault((doc.kind, doc.id), doc)
    now = utcnow()
    inserted = {
        (k, i)
        for k, i in session.execute(
            insert(DocumentRow)
            .values(
                [
                    {
                        "kind": doc.kind,
                        "external_id": doc.id,
                        "content_hash": doc.content_hash(),
                        "schema_version": doc.schema_version,
                        "payload": doc.model_dump(mode="json"),
                        "created_at": now,
                        "updated_at": now,
                    }
                    for _, doc in sorted(first.items(), key=lambda kv: kv[0])
                ]
            )
            .on_conflict_do_nothing(index_elements=["kind", "external_id"])
            .returning(DocumentRow.kind, DocumentRow.external_id)
        )
    }
    rows = {
        (r.kind, r.external_id): r
        for r in session.execute(
            select(DocumentRow)
            .where(tuple_(DocumentRow.kind, DocumentRow.external_id).in_(list(first)))
            .order_by(DocumentRow.kind, DocumentRow.external_id)
            .with_for_update()
        ).scalars()
    }
    out: list[tuple[DocumentRow, DocStatus]] = []
    for doc in docs:
        key = (doc.kind, doc.id)
        row, content_hash = rows[key], doc.content_hash()
        status: DocStatus
        if key in inserted and first[key] is doc:
            status = "created"
        elif row.content_hash == content_hash:
            status = "unchanged"
        else:
            row.content_hash = content_hash
            row.schema_version = doc.schema_version
            row.payload = doc.model_dump(mode="json")
            row.updated_at = now
            status = "updated"
        out.append((row, status))
    session.flush()
    return out


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


def documents_by_id(*, session: Session, ids: Sequence[int]) -> dict[int, DocumentRow]:
    """Documents by row id (those that exist). The payload is loaded when first read: a
    retrieval's candidates need only their ids and content hashes."""
    out: dict[int, DocumentRow] = {}
    for part in chunked(sorted(set(ids))):
        stmt = (
            select(DocumentRow).where(DocumentRow.id.in_(part)).options(defer(DocumentRow.payload))
        )
        out.update((r.id, r) for r in session.execute(stmt).scalars())
    return out


def parse_document(row: DocumentRow) -> ResumeDocument | JobDocument:
    """The stored payload as its message type (validated again)."""
    if row.kind == "resume":
        return ResumeDocument.model_validate(row.payload)
    return JobDocument.model_validate(row.payload)

"""Ingest as plain functions (tests call them without Celery): documents -> stored rows ->
their field texts embedded (cache-through) and their vectors stored -> matched
(``workers.matching``) -> each document's result with its best matches.

A stale document (its revision older than the stored one: ``repository.documents``) is
answered ``stale`` and goes no further: nothing embedded, stored or scored for it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

from sqlalchemy.orm import Session, sessionmaker

from jobfit.shared import repository as repo
from jobfit.shared.db import transaction
from jobfit.shared.fields import field_texts, text_hash
from jobfit.shared.orm import DocumentRow
from jobfit.shared.schemas import Document, IngestResult, TopMatch
from jobfit.workers.embedding import ModelContext, embed_texts, store_text_vectors
from jobfit.workers.matching import score_documents, top_of

log = logging.getLogger(__name__)


def ingest_document(
    *, session: Session, ctx: ModelContext, doc: Document
) -> tuple[DocumentRow, repo.DocStatus, int]:
    """Store the document and embed its fields. Same id and content again: no work."""
    ((row, status, embedded),) = ingest_documents(session=session, ctx=ctx, docs=[doc])
    return row, status, embedded


def ingest_documents(
    *, session: Session, ctx: ModelContext, docs: Sequence[Document]
) -> list[tuple[DocumentRow, repo.DocStatus, int]]:
    """Store many documents (in order: a later version of one id wins, a stale one is not
    applied), embed the fields of those that changed in one ``encode`` call and store their
    vectors. Per document: its row, its status and how many texts were embedded for it (a
    text new to several documents counts for the first)."""
    stored = repo.upsert_documents(session=session, docs=docs)
    stale = [
        f"{row.kind} {row.external_id} revision {doc.revision} (stored: {row.revision})"
        for doc, (row, status) in zip(docs, stored, strict=True)
        if status == "stale"
    ]
    if stale:
        log.warning(
            "%d stale document(s) not applied: %s%s",
            len(stale),
            "; ".join(stale[:5]),
            "; ..." if len(stale) > 5 else "",
        )
    changed = [
        (i, row, field_texts(doc))
        for i, (doc, (row, status)) in enumerate(zip(docs, stored, strict=True))
        if status in ("created", "updated")
    ]
    vectors, new = embed_texts(
        session=session, ctx=ctx, texts=(t for _, _, ft in changed for t in ft.values())
    )
    # A document given twice: its last version's vectors (its row holds that content).
    store_text_vectors(
        session=session,
        ctx=ctx,
        docs={row.id: (row, ft) for _, row, ft in changed},
        vectors=vectors,
    )
    first: dict[str, int] = {}
    for i, _, ft in changed:
        for t in ft.values():
            first.setdefault(text_hash(t), i)
    per_doc = Counter(first[h] for h in new)
    return [(row, status, per_doc[i]) for i, (row, status) in enumerate(stored)]


def ingest_batch(
    *,
    factory: sessionmaker[Session],
    ctx: ModelContext,
    docs: Sequence[tuple[Document, bool]],
    done_keys: Sequence[str] = (),
) -> list[IngestResult]:
    """Ingest many messages' documents, each with its ``score`` flag; one result per document.

    Two transactions: the documents stored, their new texts embedded (one ``encode``) and
    their vectors stored, then the matching of those to be scored (``scoring.mode``: every
    pair, or retrieval and the top K), begun after the documents are committed so that of a
    resume and a job ingested at the same time at least one side sees the other. The
    deliveries ``done_keys`` are marked done in the last transaction, with the rows: a
    delivery is done exactly when its rows are committed.
    """
    with transaction(factory) as session:
        stored = ingest_documents(session=session, ctx=ctx, docs=[doc for doc, _ in docs])
        to_score = {
            row.id: row
            for (row, status, _), (_, score) in zip(stored, docs, strict=True)
            if score and status != "stale"
        }
        if not to_score:
            repo.set_delivery_state(session=session, keys=done_keys, state="done")
    per_doc: Counter[int] = Counter()
    top: dict[int, list[TopMatch]] = {}
    if to_score:
        with transaction(factory) as session:
            repo.set_delivery_state(session=session, keys=done_keys, state="done")
            # Read again: another worker may have committed a newer version of a document
            # since (its content, not this message's, is what gets scored).
            current = repo.documents_by_id(session=session, ids=sorted(to_score))
            rows = [current[i] for i in sorted(current)]
            score_documents(session=session, ctx=ctx, rows=rows, per_doc=per_doc)
            top = top_of(session=session, ctx=ctx, rows=rows)
    results = []
    scored_once: set[int] = set()
    for (row, status, embedded), (doc, score) in zip(stored, docs, strict=True):
        if status == "stale":
            results.append(stale_result(row, doc))
            continue
        # A document twice in one batch: its matches count for its first message.
        scored = per_doc[row.id] if score and row.id not in scored_once else 0
        scored_once.add(row.id)
        results.append(
            IngestResult(
                status=status,
                document_id=row.external_id,
                embedded=embedded,
                scored=scored,
                model_version=ctx.version,
                top=top.get(row.id, []) if score else [],
            )
        )
    return results


def stale_result(row: DocumentRow, doc: Document) -> IngestResult:
    """The answer to a stale message: not applied, and why."""
    return IngestResult(
        status="stale",
        document_id=row.external_id,
        reason=f"revision {doc.revision} is not newer than the stored revision {row.revision}"
        " (README: Revisions): not applied",
    )

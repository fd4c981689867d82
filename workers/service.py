"""The pipeline's logic as plain functions: tests call them without Celery.

ingest: documents -> stored rows -> their field texts embedded (cache-through) -> scored
score:  (resumes x jobs) not yet scored on their current content -> pair cosines -> rows
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from jobfit.shared import repository as repo
from jobfit.shared.config import PairType
from jobfit.shared.db import transaction
from jobfit.shared.fields import field_texts, text_hash
from jobfit.shared.orm import DocumentRow
from jobfit.shared.schemas import Document, IngestResult
from jobfit.workers.embedders.base import Embedder
from jobfit.workers.scoring import Vector, from_bytes, score_match, to_bytes


@dataclass(frozen=True)
class ModelContext:
    """The model a task runs with: one version for the whole task, never mixed."""

    embedder: Embedder
    model_version_id: int
    weights: Mapping[PairType, float]

    @property
    def version(self) -> str:
        return self.embedder.version


def embed_texts(
    *, session: Session, ctx: ModelContext, texts: Iterable[str]
) -> tuple[dict[str, Vector], list[str]]:
    """Vectors by text hash. Only texts with no stored embedding reach the model, in one
    ``encode`` call; returns the vectors and the hashes of the texts this call embedded."""
    by_hash = {text_hash(t): t for t in texts}
    cached = repo.load_embeddings(
        session=session, model_version_id=ctx.model_version_id, text_hashes=by_hash
    )
    missing = [h for h in by_hash if h not in cached]
    if missing:
        # Another worker may be embedding the same texts right now: wait for it, look again.
        repo.lock_texts(session=session, model_version_id=ctx.model_version_id, text_hashes=missing)
        cached.update(
            repo.load_embeddings(
                session=session, model_version_id=ctx.model_version_id, text_hashes=missing
            )
        )
    vectors = {h: from_bytes(raw) for h, raw in cached.items()}
    missing = sorted((h for h in by_hash if h not in cached), key=lambda h: len(by_hash[h]))
    if missing:
        encoded = ctx.embedder.encode([by_hash[h] for h in missing])
        rows = []
        for h, vec in zip(missing, encoded, strict=True):
            vectors[h] = np.asarray(vec, dtype=np.float32)
            rows.append((h, by_hash[h], int(vec.shape[0]), to_bytes(vec)))
        repo.insert_embeddings(session=session, model_version_id=ctx.model_version_id, rows=rows)
    return vectors, missing


def ingest_document(
    *, session: Session, ctx: ModelContext, doc: Document
) -> tuple[DocumentRow, repo.DocStatus, int]:
    """Store the document and embed its fields. Same id and content again: no work."""
    ((row, status, embedded),) = ingest_documents(session=session, ctx=ctx, docs=[doc])
    return row, status, embedded


def ingest_documents(
    *, session: Session, ctx: ModelContext, docs: Sequence[Document]
) -> list[tuple[DocumentRow, repo.DocStatus, int]]:
    """Store many documents (in order: a later version of one id wins) and embed the fields of
    those that changed in one ``encode`` call. Per document: its row, its status and how many
    texts were embedded for it (a text new to several documents counts for the first)."""
    stored = repo.upsert_documents(session=session, docs=docs)
    changed = [
        (i, field_texts(doc))
        for i, (doc, (_, status)) in enumerate(zip(docs, stored, strict=True))
        if status != "unchanged"
    ]
    _, new = embed_texts(
        session=session, ctx=ctx, texts=(t for _, ft in changed for t in ft.values())
    )
    first: dict[str, int] = {}
    for i, ft in changed:
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

    Two transactions: the documents stored and their new texts embedded (one ``encode``),
    then the pairs of those to be scored (one bulk upsert; a resume against every stored job,
    a job against every stored resume), begun after the documents are committed so that of a
    resume and a job ingested at the same time at least one side sees the other. The
    deliveries ``done_keys`` are marked done in the last transaction, with the rows: a
    delivery is done exactly when its rows are committed.
    """
    with transaction(factory) as session:
        stored = ingest_documents(session=session, ctx=ctx, docs=[doc for doc, _ in docs])
        to_score = {
            row.id: row for (row, _, _), (_, score) in zip(stored, docs, strict=True) if score
        }
        if not to_score:
            repo.set_delivery_state(session=session, keys=done_keys, state="done")
    per_doc: Counter[int] = Counter()
    if to_score:
        with transaction(factory) as session:
            repo.set_delivery_state(session=session, keys=done_keys, state="done")
            rows = [to_score[i] for i in sorted(to_score)]
            if resumes := [r for r in rows if r.kind == "resume"]:
                jobs = repo.list_documents(session=session, kind="job")
                score_pairs(session=session, ctx=ctx, resumes=resumes, jobs=jobs, per_doc=per_doc)
            if jobs := [r for r in rows if r.kind == "job"]:
                resumes = repo.list_documents(session=session, kind="resume")
                score_pairs(session=session, ctx=ctx, resumes=resumes, jobs=jobs, per_doc=per_doc)
    results = []
    scored_once: set[int] = set()
    for (row, status, embedded), (_, score) in zip(stored, docs, strict=True):
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
            )
        )
    return results


def score_pairs(
    *,
    session: Session,
    ctx: ModelContext,
    resumes: Sequence[DocumentRow],
    jobs: Sequence[DocumentRow],
    per_doc: Counter[int] | None = None,
) -> tuple[int, int]:
    """Score every (resume, job) whose stored match is missing or stale.

    Returns (matches written, texts embedded); ``per_doc`` (by document row id) counts the
    matches written for each document. Pairs already scored on the same content, model
    version and weights are skipped, so a redelivered task writes nothing.
    """
    weights = {p.value: float(ctx.weights.get(p, 0.0)) for p in PairType}
    key = repo.scoring_key(weights)
    pairs = [(r, j) for r in resumes for j in jobs]
    fresh = repo.fresh_match_keys(
        session=session, model_version_id=ctx.model_version_id, pairs=pairs, key=key
    )
    todo = [(r, j) for r, j in pairs if (r.id, j.id) not in fresh]
    if not todo:
        return 0, 0
    docs = {row.id: row for pair in todo for row in pair}
    texts = {doc_id: field_texts(repo.parse_document(row)) for doc_id, row in docs.items()}
    vectors, new = embed_texts(
        session=session, ctx=ctx, texts=(t for ft in texts.values() for t in ft.values())
    )

    def doc_vectors(doc_id: int) -> dict[PairType, Vector]:
        return {p: vectors[text_hash(t)] for p, t in texts[doc_id].items()}

    writes = []
    for r, j in todo:
        m = score_match(doc_vectors(r.id), doc_vectors(j.id), ctx.weights)
        writes.append(
            repo.MatchWrite(
                resume_id=r.id,
                job_id=j.id,
                score=m.score,
                pair_scores={p.value: s for p, s in m.pair_scores.items()},
                resume_hash=r.content_hash,
                job_hash=j.content_hash,
            )
        )
    written = repo.upsert_matches(
        session=session, model_version_id=ctx.model_version_id, key=key, writes=writes
    )
    if per_doc is not None:
        per_doc.update(w.resume_id for w in writes)
        per_doc.update(w.job_id for w in writes)
    return written, len(new)


def score_resume(
    *, session: Session, ctx: ModelContext, resume_id: str, job_ids: Sequence[str] | None = None
) -> tuple[int, int] | None:
    """One resume against the given jobs (all stored jobs by default). None: no such resume."""
    resume = repo.get_document(session=session, kind="resume", external_id=resume_id)
    if resume is None:
        return None
    jobs = repo.list_documents(session=session, kind="job", external_ids=job_ids)
    return score_pairs(session=session, ctx=ctx, resumes=[resume], jobs=jobs)


def score_job(*, session: Session, ctx: ModelContext, job_id: str) -> tuple[int, int] | None:
    """One job against every stored resume. None: no such job."""
    job = repo.get_document(session=session, kind="job", external_id=job_id)
    if job is None:
        return None
    resumes = repo.list_documents(session=session, kind="resume")
    return score_pairs(session=session, ctx=ctx, resumes=resumes, jobs=[job])

"""Texts and documents to vectors under one model version, cache-through: a text reaches the
model once per version (``field_embeddings``), a document's vectors are made once per content
and weights (``document_vectors``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy.orm import Session

from jobfit.shared import repository as repo
from jobfit.shared.config import PairType, ScoringSettings
from jobfit.shared.fields import field_texts, text_hash
from jobfit.shared.orm import DocumentRow
from jobfit.workers import index_basis
from jobfit.workers.embedders.base import Embedder
from jobfit.workers.ranking import decode
from jobfit.workers.scoring import Vector, from_pgvector
from jobfit.workers.vectors import (
    LAYOUT,
    DocumentVectors,
    query_vector,
    retrieval_dims,
    retrieval_vector,
)


@dataclass(frozen=True)
class ModelContext:
    """The model a task runs with: one version for the whole task, never mixed."""

    embedder: Embedder
    model_version_id: int
    weights: Mapping[PairType, float]
    scoring: ScoringSettings = field(default_factory=ScoringSettings)

    @property
    def version(self) -> str:
        return self.embedder.version

    @property
    def scoring_key(self) -> str:
        """Identifies the weights: rows and vectors made under other weights are stale."""
        return repo.scoring_key({p.value: float(self.weights.get(p, 0.0)) for p in PairType})

    @property
    def vectors_key(self) -> str:
        """Identifies what stored document vectors were made with: the weights and the
        retrieval layout (``workers.vectors.LAYOUT``)."""
        return repo.scoring_key(
            {**{p.value: float(self.weights.get(p, 0.0)) for p in PairType}, "layout": LAYOUT}
        )

    @property
    def retrieval_dims(self) -> int:
        return retrieval_dims(self.embedder.dim)

    def retrieval_vector(self, doc: DocumentVectors) -> Vector:
        """A document's index entry."""
        return retrieval_vector(doc, self.weights, self.embedder.dim)

    def query_vector(self, doc: DocumentVectors) -> Vector:
        """A document's query against the other kind's index."""
        return query_vector(doc, self.weights, self.embedder.dim)


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
    vectors = {h: from_pgvector(raw) for h, raw in cached.items()}
    missing = sorted((h for h in by_hash if h not in cached), key=lambda h: len(by_hash[h]))
    if missing:
        encoded = ctx.embedder.encode([by_hash[h] for h in missing])
        rows = []
        for h, vec in zip(missing, encoded, strict=True):
            vectors[h] = np.asarray(vec, dtype=np.float32)
            rows.append((h, by_hash[h], int(vec.shape[0]), vectors[h]))
        repo.insert_embeddings(session=session, model_version_id=ctx.model_version_id, rows=rows)
    return vectors, missing


def document_vectors(
    *, session: Session, ctx: ModelContext, rows: Sequence[DocumentRow]
) -> tuple[dict[int, DocumentVectors], int]:
    """These documents' vectors under the context's version, by row id: the stored ones where
    they match the content and weights, else made from their field texts (embedded
    cache-through) and stored. Returns them and how many texts reached the model."""
    key = ctx.vectors_key
    stored = repo.load_vectors(
        session=session, model_version_id=ctx.model_version_id, document_ids=[r.id for r in rows]
    )
    out: dict[int, DocumentVectors] = {}
    todo: dict[int, DocumentRow] = {}
    for row in rows:
        s = stored.get(row.id)
        if s is not None and s.content_hash == row.content_hash and s.scoring_key == key:
            out[row.id] = decode(s)
        else:
            todo[row.id] = row
    if not todo:
        return out, 0
    texts = {i: field_texts(repo.parse_document(row)) for i, row in todo.items()}
    vectors, new = embed_texts(
        session=session, ctx=ctx, texts=(t for ft in texts.values() for t in ft.values())
    )
    made = store_text_vectors(
        session=session,
        ctx=ctx,
        docs={i: (todo[i], ft) for i, ft in texts.items()},
        vectors=vectors,
    )
    return out | made, len(new)


def store_text_vectors(
    *,
    session: Session,
    ctx: ModelContext,
    docs: Mapping[int, tuple[DocumentRow, Mapping[PairType, str]]],
    vectors: Mapping[str, Vector],
) -> dict[int, DocumentVectors]:
    """Documents' vectors made from their field texts (by row id: the row and its texts by
    pair type) and the texts' embeddings (by text hash), stored; returned by row id."""
    made = {
        i: DocumentVectors.from_pairs(row.kind, {p: vectors[text_hash(t)] for p, t in ft.items()})
        for i, (row, ft) in docs.items()
    }
    store_vectors(session=session, ctx=ctx, rows=[row for row, _ in docs.values()], vectors=made)
    return made


def store_vectors(
    *,
    session: Session,
    ctx: ModelContext,
    rows: Sequence[DocumentRow],
    vectors: Mapping[int, DocumentVectors],
) -> None:
    """Write these documents' vectors (a document without any field text has none: nothing
    to retrieve it by), each with its index entry where its (version, kind) has a basis
    (``workers.index_basis``: else the fit that follows projects it)."""
    made = [(row, *vectors[row.id].packed()) for row in rows]
    made = [(row, names, fields) for row, names, fields in made if names]
    writes = []
    for kind in sorted({row.kind for row, _, _ in made}):
        mine = [(row, names, fields) for row, names, fields in made if row.kind == kind]
        basis = index_basis.for_writing(
            session=session,
            model_version_id=ctx.model_version_id,
            kind=kind,
            scoring=ctx.scoring,
            weights=ctx.weights,
        )
        entries = index_basis.entries_for(
            basis, [ctx.retrieval_vector(vectors[row.id]) for row, _, _ in mine]
        )
        writes += [
            repo.VectorWrite(
                document_id=row.id,
                kind=row.kind,
                content_hash=row.content_hash,
                slots=names,
                fields=fields,
                index_entry=entry,
            )
            for (row, names, fields), entry in zip(mine, entries, strict=True)
        ]
    repo.upsert_vectors(
        session=session, model_version_id=ctx.model_version_id, key=ctx.vectors_key, writes=writes
    )

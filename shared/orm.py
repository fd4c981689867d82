"""Tables (SQLAlchemy 2 typed mappings). Alembic owns the schema: see shared/migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from jobfit.shared.vector_types import BinaryHalfVector, BinaryVector

JsonType = JSONB()
BigId = BigInteger()

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def table_of(row: type[Base]) -> Table:
    """A mapped class's table, for Core statements: a bulk write through it skips the ORM's
    per-row bookkeeping (measured: ~a fifth of an ingest batch's database time)."""
    return Base.metadata.tables[row.__tablename__]


class DocumentRow(Base):
    """A resume or a job as the producer sent it (latest version per external id)."""

    __tablename__ = "documents"
    __table_args__ = (
        UniqueConstraint("kind", "external_id", name="uq_documents_kind_external_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(10))  # resume | job
    external_id: Mapped[str] = mapped_column(String(200))
    content_hash: Mapped[str] = mapped_column(String(64))
    schema_version: Mapped[int] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]] = mapped_column(JsonType)
    # The highest revision applied (the producer's, optional): an older message is stale.
    revision: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class StaleRevisionRow(Base):
    """Messages of a document that were not applied because their revision was older than the
    stored one (or as old, with other content): how many, and the last of them. One row per
    document, so a stream of stale messages cannot grow the table."""

    __tablename__ = "stale_revisions"

    document_id: Mapped[int] = mapped_column(
        ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True
    )
    messages: Mapped[int] = mapped_column(BigInteger)
    last_revision: Mapped[int] = mapped_column(BigInteger)  # the last stale message's
    stored_revision: Mapped[int] = mapped_column(BigInteger)  # the document's, then
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelVersionRow(Base):
    """A model the workers can serve. ``version`` is content-addressed (name@weights-sha)."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[str] = mapped_column(String(200), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    path: Mapped[str] = mapped_column(Text)
    dim: Mapped[int] = mapped_column(Integer)
    # A ``repository.registry.ModelStatus`` value; every insert goes through the registry.
    status: Mapped[str] = mapped_column(String(20))
    parent_version: Mapped[str | None] = mapped_column(String(200), nullable=True)
    params: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The last time a worker could not load this version (it kept serving the one it had).
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class FieldEmbeddingRow(Base):
    """One embedding per (model version, text): shared by every document that has the text.
    The embedding cache: a text reaches the model once per version."""

    __tablename__ = "field_embeddings"

    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True
    )
    text_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    dim: Mapped[int] = mapped_column(Integer)
    # pgvector ``vector`` (float32, L2-normalised), of the version's dimension.
    vector: Mapped[Any] = mapped_column(BinaryVector())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DocumentVectorRow(Base):
    """A document's vectors under one model version (``workers.embedding`` makes them).

    ``fields``: its field vectors (``halfvec``: float16), one per field slot it has,
    concatenated in the order of ``slots``: what exact scoring reads. ``index_entry``: its
    retrieval vector (``workers.vectors``, made from the field vectors and the weights)
    projected on its (version, kind)'s basis, what the entry index holds.
    ``content_hash`` and ``scoring_key`` tell a stale row (the document or the weights
    changed)."""

    __tablename__ = "document_vectors"
    __table_args__ = (Index("ix_document_vectors_version_kind", "model_version_id", "kind"),)

    document_id: Mapped[int] = mapped_column(
        ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True
    )
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(10))
    content_hash: Mapped[str] = mapped_column(String(64))
    scoring_key: Mapped[str] = mapped_column(String(64))
    slots: Mapped[list[str]] = mapped_column(JsonType)
    fields: Mapped[Any] = mapped_column(BinaryHalfVector())
    # The retrieval vector projected on its (version, kind)'s basis (``IndexBasisRow``), what
    # the entry index holds; NULL until that basis is fitted (the fit fills every row's).
    index_entry: Mapped[Any | None] = mapped_column(BinaryHalfVector(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class IndexBasisRow(Base):
    """The basis a (version, kind)'s retrieval vectors are projected on for its HNSW index
    (``workers.index_basis``): ``basis`` is a float32 matrix of ``source_dims`` rows and
    ``dims`` orthonormal columns, fitted once on ``fitted_on`` of its stored vectors, which
    it keeps ``energy`` of (their summed squared norms). Never changed once written."""

    __tablename__ = "index_bases"

    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(10), primary_key=True)
    source_dims: Mapped[int] = mapped_column(Integer)
    dims: Mapped[int] = mapped_column(Integer)
    basis: Mapped[bytes] = mapped_column(LargeBinary)
    fitted_on: Mapped[int] = mapped_column(Integer)
    energy: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class MatchRow(Base):
    """The score of one (resume, job) under one model version. In ``top_k`` scoring only the
    pairs in either side's top K are stored; the indexes below read a document's best K."""

    __tablename__ = "matches"
    __table_args__ = (
        UniqueConstraint(
            "resume_id", "job_id", "model_version_id", name="uq_matches_resume_job_version"
        ),
        Index(
            "ix_matches_version_resume_score",
            "model_version_id",
            "resume_id",
            text("score DESC NULLS LAST"),
        ),
        Index(
            "ix_matches_version_job_score",
            "model_version_id",
            "job_id",
            text("score DESC NULLS LAST"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    resume_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    job_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE")
    )
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    pairs_used: Mapped[list[str]] = mapped_column(JsonType)
    # What was scored: a document or weights change makes the row stale and it is rescored.
    resume_hash: Mapped[str] = mapped_column(String(64))
    job_hash: Mapped[str] = mapped_column(String(64))
    scoring_key: Mapped[str] = mapped_column(String(64))
    scored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PairScoreRow(Base):
    """The cosine of one field pair of a match."""

    __tablename__ = "pair_scores"

    match_id: Mapped[int] = mapped_column(
        ForeignKey("matches.id", ondelete="CASCADE"), primary_key=True
    )
    pair_type: Mapped[str] = mapped_column(String(20), primary_key=True)
    score: Mapped[float] = mapped_column(Float)


class FailedMessageRow(Base):
    """A message a worker could not use, with the reason. Recorded once per message."""

    __tablename__ = "failed_messages"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    dedupe_key: Mapped[str] = mapped_column(String(64), unique=True)
    task_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    task_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)  # truncated, for a human to read
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LabelRow(Base):
    """A match-level label: how well a resume fits a job, 0..1. Keyed by the documents'
    external ids, so a label may arrive before its documents; the latest value wins."""

    __tablename__ = "labels"
    __table_args__ = (UniqueConstraint("resume_id", "job_id", name="uq_labels_resume_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    resume_id: Mapped[str] = mapped_column(String(200))
    job_id: Mapped[str] = mapped_column(String(200), index=True)
    score: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(100))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PairLabelRow(Base):
    """A field-pair training example from a generic pair file (sentence_0, sentence_1, label)."""

    __tablename__ = "pair_labels"

    pair_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    sentence_0: Mapped[str] = mapped_column(Text)
    sentence_1: Mapped[str] = mapped_column(Text)
    label: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(100))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SplitAssignmentRow(Base):
    """Which side of a train/evaluation split a resume (or a job) is on, stored once: every
    model version is judged on the same examples."""

    __tablename__ = "split_assignments"

    split: Mapped[str] = mapped_column(String(20), primary_key=True)  # resume | job
    external_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    part: Mapped[str] = mapped_column(String(10))  # train | eval


class DeliveryRow(Base):
    """How often a task message was handed to a worker, and how that ended. Keyed by task id
    and retry number (a Celery retry is a new message under the same id). A message that was
    delivered more than ``broker.max_deliveries`` times without finishing (its worker died
    each time: OOM, segfault, kill) is dead-lettered to ``failed_messages`` instead of run."""

    __tablename__ = "deliveries"

    key: Mapped[str] = mapped_column(String(240), primary_key=True)
    task_name: Mapped[str] = mapped_column(String(200))
    count: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(10))  # running | done | dead
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

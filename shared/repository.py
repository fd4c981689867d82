"""Reads and idempotent writes. Every function takes ``session`` keyword-only and never
commits: the caller (a task, the CLI) owns the transaction."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from sqlalchemy import delete, select, tuple_, update
from sqlalchemy import text as sql
from sqlalchemy.orm import Session

from jobfit.shared.db import insert_for
from jobfit.shared.orm import (
    DeliveryRow,
    DocumentRow,
    FailedMessageRow,
    FieldEmbeddingRow,
    MatchRow,
    ModelVersionRow,
    PairScoreRow,
    utcnow,
)
from jobfit.shared.schemas import Document, JobDocument, ResumeDocument

DocStatus = Literal["created", "updated", "unchanged"]
MAX_FAILED_PAYLOAD = 10_000
# Rows per statement: keeps every statement under the drivers' bind-parameter limits
# (65,535 for Postgres, 32,766 for SQLite), whatever the number of documents scored.
CHUNK = 1000

T = TypeVar("T")


def chunked(items: Sequence[T], size: int | None = None) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most ``size`` (default CHUNK) items."""
    n = size or CHUNK
    for i in range(0, len(items), n):
        yield items[i : i + n]


# --- documents ---------------------------------------------------------------------------


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
            insert_for(session, DocumentRow.__table__)
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


def parse_document(row: DocumentRow) -> ResumeDocument | JobDocument:
    """The stored payload as its message type (validated again)."""
    if row.kind == "resume":
        return ResumeDocument.model_validate(row.payload)
    return JobDocument.model_validate(row.payload)


# --- model versions ----------------------------------------------------------------------


def insert_model_version(
    *,
    session: Session,
    version: str,
    name: str,
    path: str,
    dim: int,
    status: str,
    parent_version: str | None = None,
    params: dict[str, Any] | None = None,
) -> ModelVersionRow:
    """Insert ``version`` unless it exists (idempotent); returns its row."""
    session.execute(
        insert_for(session, ModelVersionRow.__table__)
        .values(
            version=version,
            name=name,
            path=path,
            dim=dim,
            status=status,
            parent_version=parent_version,
            params=params or {},
            metrics={},
            created_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["version"])
    )
    return session.execute(
        select(ModelVersionRow).where(ModelVersionRow.version == version)
    ).scalar_one()


def ensure_model_version(
    *, session: Session, version: str, name: str, path: str, dim: int
) -> ModelVersionRow:
    """Register ``version`` once; the first version ever registered becomes active."""
    row = insert_model_version(
        session=session, version=version, name=name, path=path, dim=dim, status="registered"
    )
    if active_model_version(session=session) is None:
        row.status = "active"
        row.promoted_at = utcnow()
        session.flush()
    return row


def active_model_version(*, session: Session) -> ModelVersionRow | None:
    return session.execute(
        select(ModelVersionRow).where(ModelVersionRow.status == "active").limit(1)
    ).scalar_one_or_none()


# --- embeddings --------------------------------------------------------------------------


def load_embeddings(
    *, session: Session, model_version_id: int, text_hashes: Iterable[str]
) -> dict[str, bytes]:
    """Stored vectors (raw float32 bytes) for those text hashes under one model version."""
    out: dict[str, bytes] = {}
    for part in chunked(sorted(set(text_hashes))):
        rows = session.execute(
            select(FieldEmbeddingRow.text_hash, FieldEmbeddingRow.vector).where(
                FieldEmbeddingRow.model_version_id == model_version_id,
                FieldEmbeddingRow.text_hash.in_(part),
            )
        )
        out.update((h, bytes(v)) for h, v in rows)
    return out


def lock_texts(*, session: Session, model_version_id: int, text_hashes: Iterable[str]) -> None:
    """Transaction-scoped Postgres advisory locks on (model version, text), taken in one
    global order (no deadlock between two such callers). A worker that needs texts another
    worker is embedding waits for that commit, then finds them stored: each text reaches the
    model once per version. No-op on SQLite (one writer at a time anyway)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    keys = sorted(
        {
            int.from_bytes(
                hashlib.sha256(f"{model_version_id}:{h}".encode()).digest()[:8], "big", signed=True
            )
            for h in text_hashes
        }
    )
    # One statement: the locks are taken in the array's (sorted) order.
    for part in chunked(keys):
        session.execute(
            sql("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(CAST(:keys AS bigint[])) k"),
            {"keys": list(part)},
        )


def insert_embeddings(
    *, session: Session, model_version_id: int, rows: Sequence[tuple[str, str, int, bytes]]
) -> None:
    """Insert (text_hash, text, dim, vector) rows; a row another worker wrote first is kept."""
    if not rows:
        return
    now = utcnow()
    session.execute(
        insert_for(session, FieldEmbeddingRow.__table__).on_conflict_do_nothing(
            index_elements=["model_version_id", "text_hash"]
        ),
        [
            {
                "model_version_id": model_version_id,
                "text_hash": h,
                "text": text,
                "dim": dim,
                "vector": vec,
                "created_at": now,
            }
            for h, text, dim, vec in sorted(rows)
        ],
    )


# --- matches -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchWrite:
    resume_id: int
    job_id: int
    score: float | None
    pair_scores: dict[str, float]
    resume_hash: str
    job_hash: str


def scoring_key(weights: dict[str, float]) -> str:
    """Identifies the scoring rule; rows scored under other weights are stale."""
    canon = ",".join(f"{k}={weights[k]:.6g}" for k in sorted(weights))
    return hashlib.sha256(canon.encode()).hexdigest()


def fresh_match_keys(
    *,
    session: Session,
    model_version_id: int,
    pairs: Sequence[tuple[DocumentRow, DocumentRow]],
    key: str,
) -> set[tuple[int, int]]:
    """The (resume, job) pairs already scored on the current content, model and weights."""
    wanted = {(r.id, j.id): (r.content_hash, j.content_hash) for r, j in pairs}
    fresh: set[tuple[int, int]] = set()
    for part in chunked(list(wanted)):
        rows = session.execute(
            select(
                MatchRow.resume_id, MatchRow.job_id, MatchRow.resume_hash, MatchRow.job_hash
            ).where(
                MatchRow.model_version_id == model_version_id,
                MatchRow.scoring_key == key,
                tuple_(MatchRow.resume_id, MatchRow.job_id).in_(part),
            )
        )
        fresh.update((r, j) for r, j, rh, jh in rows if wanted.get((r, j)) == (rh, jh))
    return fresh


def upsert_matches(
    *, session: Session, model_version_id: int, key: str, writes: Sequence[MatchWrite]
) -> int:
    """Write match rows and their pair scores; a redelivered write leaves the same rows."""
    ordered = sorted(writes, key=lambda w: (w.resume_id, w.job_id))  # one lock order: no deadlock
    for part in chunked(ordered):
        _upsert_match_rows(session, model_version_id, key, part)
    return len(ordered)


def _upsert_match_rows(
    session: Session, model_version_id: int, key: str, ordered: Sequence[MatchWrite]
) -> None:
    # One statement, many parameter sets: SQLAlchemy's "insertmanyvalues" batches them with a
    # statement compiled once (a multi-VALUES literal recompiles per call: 10x slower here).
    now = utcnow()
    ins = insert_for(session, MatchRow.__table__)
    stmt = ins.on_conflict_do_update(
        index_elements=["resume_id", "job_id", "model_version_id"],
        set_={
            c: ins.excluded[c]
            for c in ("score", "pairs_used", "resume_hash", "job_hash", "scoring_key", "scored_at")
        },
    ).returning(MatchRow.id, sort_by_parameter_order=True)
    params = [
        {
            "resume_id": w.resume_id,
            "job_id": w.job_id,
            "model_version_id": model_version_id,
            "score": w.score,
            "pairs_used": list(w.pair_scores),
            "resume_hash": w.resume_hash,
            "job_hash": w.job_hash,
            "scoring_key": key,
            "scored_at": now,
        }
        for w in ordered
    ]
    match_ids = list(session.execute(stmt, params).scalars())
    # Pair types a new version of a document no longer has must not linger.
    session.execute(delete(PairScoreRow).where(PairScoreRow.match_id.in_(match_ids)))
    pair_rows = [
        {"match_id": mid, "pair_type": p, "score": s}
        for mid, w in zip(match_ids, ordered, strict=True)
        for p, s in w.pair_scores.items()
    ]
    if pair_rows:
        pins = insert_for(session, PairScoreRow.__table__)
        session.execute(
            pins.on_conflict_do_update(
                index_elements=["match_id", "pair_type"], set_={"score": pins.excluded.score}
            ),
            pair_rows,
        )


@dataclass(frozen=True)
class RankedMatch:
    resume_id: str
    job_id: str
    title: str
    score: float | None
    pair_scores: dict[str, float]
    model_version: str


def ranked(
    *,
    session: Session,
    resume_id: str | None = None,
    job_id: str | None = None,
    model_version: str | None = None,
    top: int = 10,
) -> list[RankedMatch]:
    """Matches of one resume (best jobs) or one job (best resumes), best first.

    Without ``model_version``: the version that scored this document most recently (what the
    workers serve now), so a model switch never mixes two versions' scores in one ranking.
    """
    from sqlalchemy.orm import aliased

    resume, job = aliased(DocumentRow), aliased(DocumentRow)

    def of_document(stmt: Any) -> Any:
        stmt = (
            stmt.select_from(MatchRow)
            .join(resume, MatchRow.resume_id == resume.id)
            .join(job, MatchRow.job_id == job.id)
            .join(ModelVersionRow, MatchRow.model_version_id == ModelVersionRow.id)
        )
        if resume_id is not None:
            stmt = stmt.where(resume.external_id == resume_id)
        if job_id is not None:
            stmt = stmt.where(job.external_id == job_id)
        return stmt

    if model_version is None:
        model_version = session.execute(
            of_document(select(ModelVersionRow.version))
            .order_by(MatchRow.scored_at.desc())
            .limit(1)
        ).scalar_one_or_none()
    stmt = of_document(
        select(MatchRow, resume.external_id, job.external_id, job.payload, ModelVersionRow.version)
    )
    stmt = (
        stmt.where(ModelVersionRow.version == model_version)
        .order_by(MatchRow.score.desc().nulls_last(), job.external_id, resume.external_id)
        .limit(top)
    )
    rows = session.execute(stmt).all()
    pairs = _pair_scores(session, [m.id for m, *_ in rows])
    return [
        RankedMatch(
            resume_id=rid,
            job_id=jid,
            title=str(payload.get("title", "")),
            score=m.score,
            pair_scores=pairs.get(m.id, {}),
            model_version=version,
        )
        for m, rid, jid, payload, version in rows
    ]


def _pair_scores(session: Session, match_ids: list[int]) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    if not match_ids:
        return out
    for mid, p, s in session.execute(
        select(PairScoreRow.match_id, PairScoreRow.pair_type, PairScoreRow.score).where(
            PairScoreRow.match_id.in_(match_ids)
        )
    ):
        out.setdefault(mid, {})[p] = s
    return out


# --- failed messages ---------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """A message a worker could not use, and why."""

    reason: str
    payload: Any
    task_name: str | None = None
    task_id: str | None = None

    def values(self) -> dict[str, Any]:
        text = self.payload if isinstance(self.payload, str) else repr(self.payload)
        text = text[:MAX_FAILED_PAYLOAD]
        name, tid = self.task_name or "", self.task_id or ""
        key_src = f"{tid}\x1f{name}\x1f{self.reason}\x1f{'' if tid else text}"
        return {
            "dedupe_key": hashlib.sha256(key_src.encode("utf-8", "replace")).hexdigest(),
            "task_name": name[:200] or None,
            "task_id": tid[:200] or None,
            "reason": _printable(self.reason[:MAX_FAILED_PAYLOAD]),
            "payload": _printable(text),
            "created_at": utcnow(),
        }


def _printable(text: str) -> str:
    """Text Postgres accepts: no lone surrogates, no NUL."""
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\\x00")


def record_failed_messages(*, session: Session, failures: Sequence[Failure]) -> None:
    """Record messages a worker could not use, in one statement per chunk; a redelivered
    message (same task id, name and reason) is recorded once."""
    rows = list({v["dedupe_key"]: v for v in (f.values() for f in failures)}.values())
    for chunk in chunked(rows):
        session.execute(
            insert_for(session, FailedMessageRow.__table__)
            .values(list(chunk))
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
        )


# --- deliveries (bounded redelivery) -----------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """What the deliveries table says of a message as it starts: ``count`` includes this
    delivery (a message already ``done`` is not counted again: running it is a harmless redo)."""

    key: str
    count: int
    state: str


def begin_deliveries(*, session: Session, messages: Sequence[tuple[str, str]]) -> list[Delivery]:
    """Count one delivery of each (key, task name); returns them in the given order. A key that
    is new starts at 1 in state ``running``; ``done`` ones keep their count."""
    if not messages:
        return []
    table = DeliveryRow.__table__
    now = utcnow()
    by_key: dict[str, Delivery] = {}
    for chunk in chunked(sorted(dict(messages).items())):
        stmt = insert_for(session, table).values(
            [
                {"key": k, "task_name": n[:200], "count": 1, "state": "running", "updated_at": now}
                for k, n in chunk
            ]
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["key"],
            set_={
                "count": sql(
                    "CASE WHEN deliveries.state = 'done' THEN deliveries.count"
                    " ELSE deliveries.count + 1 END"
                ),
                "updated_at": now,
            },
        ).returning(table.c.key, table.c.count, table.c.state)
        for key, count, state in session.execute(stmt):
            by_key[key] = Delivery(key, count, state)
    return [by_key[k] for k, _ in messages]


def set_delivery_state(*, session: Session, keys: Sequence[str], state: str) -> None:
    """Mark messages ``running`` (one at a time, as a suspect is tried), ``done`` or ``dead``."""
    for chunk in chunked(sorted(set(keys))):
        session.execute(
            update(DeliveryRow)
            .where(DeliveryRow.key.in_(chunk))
            .values(state=state, updated_at=utcnow())
        )

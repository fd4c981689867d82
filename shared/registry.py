"""Training data and the model registry: labels, pair labels, the stored evaluation split,
model versions and their promotion. Like ``shared.repository``: ``session`` keyword-only,
never commits, every write idempotent."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from jobfit.shared.db import insert_for
from jobfit.shared.orm import (
    LabelRow,
    ModelVersionRow,
    PairLabelRow,
    SplitAssignmentRow,
    utcnow,
)
from jobfit.shared.repository import chunked, insert_model_version
from jobfit.shared.splits import SplitName, split_part

# Status of a model version: the one the workers serve, one that lost (or was not yet
# judged), one that was active before.
ACTIVE, CANDIDATE, RETIRED = "active", "candidate", "retired"


# --- labels ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelIn:
    resume_id: str
    job_id: str
    score: float


def upsert_labels(*, session: Session, labels: Sequence[LabelIn], source: str) -> int:
    """Store match labels; the latest score for a (resume, job) wins. Returns rows written."""
    now = utcnow()
    latest = {(lb.resume_id, lb.job_id): lb.score for lb in labels}  # one row per key
    items = sorted(latest.items())
    for part in chunked(items):
        stmt = insert_for(session, LabelRow.__table__).values(
            [
                {"resume_id": r, "job_id": j, "score": s, "source": source, "updated_at": now}
                for (r, j), s in part
            ]
        )
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["resume_id", "job_id"],
                set_={
                    "score": stmt.excluded.score,
                    "source": stmt.excluded.source,
                    "updated_at": stmt.excluded.updated_at,
                },
            )
        )
    assign_splits(
        session=session,
        resume_ids={r for (r, _), _ in items},
        job_ids={j for (_, j), _ in items},
    )
    return len(items)


def list_labels(*, session: Session) -> list[LabelIn]:
    rows = session.execute(
        select(LabelRow.resume_id, LabelRow.job_id, LabelRow.score).order_by(
            LabelRow.resume_id, LabelRow.job_id
        )
    )
    return [LabelIn(r, j, s) for r, j, s in rows]


def pair_hash(sentence_0: str, sentence_1: str) -> str:
    return hashlib.sha256(f"{sentence_0}\x1f{sentence_1}".encode()).hexdigest()


def upsert_pair_labels(
    *, session: Session, pairs: Sequence[tuple[str, str, float]], source: str
) -> int:
    """Store generic field-pair examples (sentence_0, sentence_1, label); latest label wins."""
    now = utcnow()
    latest = {pair_hash(a, b): (a, b, y) for a, b, y in pairs}
    for part in chunked(sorted(latest.items())):
        stmt = insert_for(session, PairLabelRow.__table__).values(
            [
                {
                    "pair_hash": h,
                    "sentence_0": a,
                    "sentence_1": b,
                    "label": y,
                    "source": source,
                    "updated_at": now,
                }
                for h, (a, b, y) in part
            ]
        )
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["pair_hash"],
                set_={
                    "label": stmt.excluded.label,
                    "source": stmt.excluded.source,
                    "updated_at": stmt.excluded.updated_at,
                },
            )
        )
    return len(latest)


def list_pair_labels(*, session: Session) -> list[tuple[str, str, float]]:
    rows = session.execute(
        select(PairLabelRow.sentence_0, PairLabelRow.sentence_1, PairLabelRow.label).order_by(
            PairLabelRow.pair_hash
        )
    )
    return [(a, b, y) for a, b, y in rows]


# --- the stored split --------------------------------------------------------------------


def assign_splits(*, session: Session, resume_ids: Iterable[str], job_ids: Iterable[str]) -> None:
    """Store the side of each new id; an id already assigned keeps its side forever."""
    by_split: tuple[tuple[SplitName, Iterable[str]], ...] = (
        ("resume", resume_ids),
        ("job", job_ids),
    )
    rows = [
        {"split": split, "external_id": i, "part": split_part(split, i)}
        for split, ids in by_split
        for i in sorted(set(ids))
    ]
    for part in chunked(rows):
        session.execute(
            insert_for(session, SplitAssignmentRow.__table__)
            .values(list(part))
            .on_conflict_do_nothing(index_elements=["split", "external_id"])
        )


def split_parts(*, session: Session, split: SplitName) -> dict[str, str]:
    """external id -> train | eval, for one split."""
    rows = session.execute(
        select(SplitAssignmentRow.external_id, SplitAssignmentRow.part).where(
            SplitAssignmentRow.split == split
        )
    )
    return {external_id: part for external_id, part in rows}


# --- model versions ----------------------------------------------------------------------


def register_model_version(
    *,
    session: Session,
    version: str,
    name: str,
    path: str,
    dim: int,
    parent_version: str | None,
    params: dict[str, Any],
) -> ModelVersionRow:
    """Record a trained model as a candidate (idempotent: same version, same row)."""
    return insert_model_version(
        session=session,
        version=version,
        name=name,
        path=path,
        dim=dim,
        status=CANDIDATE,
        parent_version=parent_version,
        params=params,
    )


def get_version(*, session: Session, version: str) -> ModelVersionRow:
    row = session.execute(
        select(ModelVersionRow).where(ModelVersionRow.version == version)
    ).scalar_one_or_none()
    if row is None:
        raise LookupError(f"no model version {version!r}")
    return row


def list_versions(*, session: Session) -> list[ModelVersionRow]:
    return list(
        session.execute(select(ModelVersionRow).order_by(ModelVersionRow.id)).scalars().all()
    )


def set_metrics(
    *, session: Session, version: str, key: str, metrics: dict[str, Any]
) -> ModelVersionRow:
    """Store one evaluation (``key``: split and data hash) of a version, keeping the others."""
    row = get_version(session=session, version=version)
    row.metrics = {**(row.metrics or {}), key: metrics}
    session.flush()
    return row


def promote(*, session: Session, version: str) -> tuple[str | None, str]:
    """Make ``version`` the one the workers serve. Returns (previous active, new active).
    Locks the registry rows so two promotions never leave two active versions."""
    rows = session.execute(select(ModelVersionRow).with_for_update()).scalars().all()
    target = next((r for r in rows if r.version == version), None)
    if target is None:
        raise LookupError(f"no model version {version!r}")
    previous = next((r.version for r in rows if r.status == ACTIVE), None)
    if previous == version:
        return previous, version
    session.execute(
        update(ModelVersionRow).where(ModelVersionRow.status == ACTIVE).values(status=RETIRED)
    )
    target.status = ACTIVE
    target.promoted_at = utcnow()
    target.last_error = None
    session.flush()
    return previous, version


def previous_active(*, session: Session) -> str | None:
    """The version that was active before the current one (for ``rollback``)."""
    return session.execute(
        select(ModelVersionRow.version)
        .where(ModelVersionRow.status == RETIRED, ModelVersionRow.promoted_at.is_not(None))
        .order_by(ModelVersionRow.promoted_at.desc())
        .limit(1)
    ).scalar_one_or_none()


def record_load_error(*, session: Session, version: str, error: str) -> None:
    session.execute(
        update(ModelVersionRow)
        .where(ModelVersionRow.version == version)
        .values(last_error=error[:2000])
    )


def label_count(*, session: Session) -> int:
    return int(session.execute(select(func.count()).select_from(LabelRow)).scalar_one())

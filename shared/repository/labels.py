"""Training data: match labels, generic field-pair labels, and the stored train/evaluation
split (each resume's and job's side, assigned once, so every model version is judged on the
same examples). Every write is idempotent: the latest label wins, an assigned side stays."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from jobfit.shared.orm import LabelRow, PairLabelRow, SplitAssignmentRow, utcnow
from jobfit.shared.repository.chunks import chunked
from jobfit.shared.splits import SplitName, split_part


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
        stmt = insert(LabelRow).values(
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
        stmt = insert(PairLabelRow).values(
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
            insert(SplitAssignmentRow)
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


def label_count(*, session: Session) -> int:
    return int(session.execute(select(func.count()).select_from(LabelRow)).scalar_one())


def pair_label_count(*, session: Session) -> int:
    return int(session.execute(select(func.count()).select_from(PairLabelRow)).scalar_one())

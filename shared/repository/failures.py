"""Messages a worker could not use (invalid, or dead-lettered after too many deliveries),
kept with the reason for a human to read; a redelivered one is recorded once."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from jobfit.shared.orm import FailedMessageRow, utcnow
from jobfit.shared.repository.chunks import chunked

MAX_FAILED_PAYLOAD = 10_000


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
            insert(FailedMessageRow)
            .values(list(chunk))
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
        )


def reason_kind(reason: str) -> str:
    """A failure's reason without its particulars (what precedes the first colon, at most 60
    characters): the label metrics count failures by."""
    return reason.split(":", 1)[0].strip()[:60] or "unknown"


def list_failed_messages(
    *, session: Session, limit: int = 20, task_name: str | None = None
) -> list[FailedMessageRow]:
    """The latest recorded failures, newest first."""
    stmt = select(FailedMessageRow).order_by(
        FailedMessageRow.created_at.desc(), FailedMessageRow.id.desc()
    )
    if task_name is not None:
        stmt = stmt.where(FailedMessageRow.task_name == task_name)
    return list(session.scalars(stmt.limit(limit)))


def failure_counts(*, session: Session) -> dict[str, int]:
    """Recorded failures by reason kind (``reason_kind``)."""
    counts: dict[str, int] = {}
    rows = session.execute(
        select(FailedMessageRow.reason, func.count()).group_by(FailedMessageRow.reason)
    )
    for reason, n in rows:
        kind = reason_kind(reason)
        counts[kind] = counts.get(kind, 0) + int(n)
    return counts

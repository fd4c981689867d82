"""Bounded redelivery: how often each task message was handed to a worker and how that
ended, so a message that keeps killing its worker is dead-lettered instead of run again."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text as sql
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from jobfit.shared.orm import DeliveryRow, utcnow
from jobfit.shared.repository.chunks import chunked


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
    now = utcnow()
    by_key: dict[str, Delivery] = {}
    for chunk in chunked(sorted(dict(messages).items())):
        ins = insert(DeliveryRow).values(
            [
                {"key": k, "task_name": n[:200], "count": 1, "state": "running", "updated_at": now}
                for k, n in chunk
            ]
        )
        stmt = ins.on_conflict_do_update(
            index_elements=["key"],
            set_={
                "count": sql(
                    "CASE WHEN deliveries.state = 'done' THEN deliveries.count"
                    " ELSE deliveries.count + 1 END"
                ),
                "updated_at": now,
            },
        ).returning(DeliveryRow.key, DeliveryRow.count, DeliveryRow.state)
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

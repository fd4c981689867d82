"""The model registry: the model versions the workers can serve, their status, their
evaluations, and promotion (which one the workers serve). The one home of the statuses.

A version is content-addressed (``name@<weights sha256>``, ``shared.model_store``). Training
registers a CANDIDATE; promotion makes it ACTIVE and the previous active RETIRED; a worker
serving another backend of the active weights (ONNX) scores under a VARIANT row, a child of
the weights' row, because its vectors differ slightly. The registry promotes weights, never
variants.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from jobfit.shared.model_store import base_version
from jobfit.shared.orm import ModelVersionRow, utcnow


class ModelStatus(StrEnum):
    """``model_versions.status`` (stored as these strings)."""

    ACTIVE = "active"  # the version the workers serve (at most one)
    CANDIDATE = "candidate"  # trained, not (yet) promoted: it lost, or was not judged
    RETIRED = "retired"  # active before
    REGISTERED = "registered"  # a configured model a worker loaded while another was active
    VARIANT = "variant"  # another backend (ONNX) of a version's weights; never promoted


@dataclass(frozen=True)
class ModelInfo:
    """A model as its registry row names it: the content-addressed version, a readable
    name, its directory, its embedding dimension."""

    version: str
    name: str
    path: str
    dim: int


def insert_model_version(
    *,
    session: Session,
    model: ModelInfo,
    status: ModelStatus,
    parent_version: str | None = None,
    params: dict[str, Any] | None = None,
) -> ModelVersionRow:
    """Insert ``version`` unless it exists (idempotent); returns its row. A trained model is
    inserted as a CANDIDATE (same version, same row: a redelivered retrain adds nothing)."""
    session.execute(
        insert(ModelVersionRow)
        .values(
            **asdict(model),
            status=status.value,
            parent_version=parent_version,
            params=params or {},
            metrics={},
            created_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["version"])
    )
    return session.execute(
        select(ModelVersionRow).where(ModelVersionRow.version == model.version)
    ).scalar_one()


def ensure_model_version(*, session: Session, model: ModelInfo) -> ModelVersionRow:
    """Register ``model`` once; the first version ever registered becomes active."""
    row = insert_model_version(session=session, model=model, status=ModelStatus.REGISTERED)
    if active_model_version(session=session) is None:
        row.status = ModelStatus.ACTIVE.value
        row.promoted_at = utcnow()
        session.flush()
    return row


def ensure_served_version(*, session: Session, model: ModelInfo, backend: str) -> ModelVersionRow:
    """The row a worker serving ``model`` scores under: the weights' row (registered once,
    see ensure_model_version) or, for another backend of those weights
    (``name@digest+onnx-int8``), a VARIANT row whose parent is the weights' row."""
    weights = replace(model, version=base_version(model.version))
    row = ensure_model_version(session=session, model=weights)
    if row.version == model.version:
        return row
    return insert_model_version(
        session=session,
        model=model,
        status=ModelStatus.VARIANT,
        parent_version=row.version,
        params={"backend": backend},
    )


def active_model_version(*, session: Session) -> ModelVersionRow | None:
    return session.execute(
        select(ModelVersionRow).where(ModelVersionRow.status == ModelStatus.ACTIVE.value).limit(1)
    ).scalar_one_or_none()


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
    previous = next((r.version for r in rows if r.status == ModelStatus.ACTIVE.value), None)
    if previous == version:
        return previous, version
    session.execute(
        update(ModelVersionRow)
        .where(ModelVersionRow.status == ModelStatus.ACTIVE.value)
        .values(status=ModelStatus.RETIRED.value)
    )
    target.status = ModelStatus.ACTIVE.value
    target.promoted_at = utcnow()
    target.last_error = None
    session.flush()
    return previous, version


def previous_active(*, session: Session) -> str | None:
    """The version that was active before the current one (for ``rollback``)."""
    return session.execute(
        select(ModelVersionRow.version)
        .where(
            ModelVersionRow.status == ModelStatus.RETIRED.value,
            ModelVersionRow.promoted_at.is_not(None),
        )
        .order_by(ModelVersionRow.promoted_at.desc())
        .limit(1)
    ).scalar_one_or_none()


def record_load_error(*, session: Session, version: str, error: str) -> None:
    """Note on the version's row that a worker could not load it (it kept serving another)."""
    session.execute(
        update(ModelVersionRow)
        .where(ModelVersionRow.version == version)
        .values(last_error=error[:2000])
    )


PAIR_WEIGHTS = "pair_weights"  # params key: the version's learned pair-type weights
PROMOTION = "promotion"  # params key: the promotion decision (promoted, reason, refused_by)


def pair_weights(*, session: Session, version: str) -> dict[str, float] | None:
    """The pair-type weights stored with a version (None: it has none; equal weights)."""
    row = get_version(session=session, version=version)
    stored = (row.params or {}).get(PAIR_WEIGHTS)
    return {str(k): float(v) for k, v in stored.items()} if stored else None


def record_promotion(*, session: Session, version: str, decision: dict[str, Any]) -> None:
    """Note on the version's row whether it was promoted and, if not, which check refused
    it (``params["promotion"]``)."""
    row = get_version(session=session, version=version)
    row.params = {**(row.params or {}), PROMOTION: decision}
    session.flush()

"""Index bases (``index_bases``): per (model version, kind) the basis its retrieval vectors are
projected on for the HNSW index, and the projected entries (``document_vectors.index_entry``).
The arithmetic is ``workers.index_basis``; here are the rows, and the lock that keeps every
stored vector of a (version, kind) either projected or waiting for the fit that projects it.

The lock (a transaction-level advisory lock per (version, kind)): a worker writing vectors of
a (version, kind) that has no basis yet holds it shared until its transaction ends; the fit
holds it exclusively, so it starts once every such write is committed (and projects it) and
every later write sees its basis. Once a basis exists no writer takes the lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy import text as sql
from sqlalchemy.orm import Session

from jobfit.shared.orm import DocumentVectorRow, IndexBasisRow, utcnow
from jobfit.shared.vector_types import BinaryHalfVector


@dataclass(frozen=True)
class StoredBasis:
    source_dims: int
    dims: int
    basis: bytes  # float32, source_dims x dims, row-major
    fitted_on: int
    energy: float


def _lock_name(model_version_id: int, kind: str) -> str:
    return f"jobfit_index_basis_v{int(model_version_id)}_{kind}"


def lock_for_writing(*, session: Session, model_version_id: int, kind: str) -> None:
    """Hold the (version, kind)'s lock shared until the transaction ends (module docstring)."""
    session.execute(
        sql("SELECT pg_advisory_xact_lock_shared(hashtext(:n))"),
        {"n": _lock_name(model_version_id, kind)},
    )


def lock_for_fitting(*, session: Session, model_version_id: int, kind: str) -> None:
    """Hold the (version, kind)'s lock exclusively until the transaction ends: waits for the
    writers that hold it shared (module docstring)."""
    session.execute(
        sql("SELECT pg_advisory_xact_lock(hashtext(:n))"), {"n": _lock_name(model_version_id, kind)}
    )


def get_basis(*, session: Session, model_version_id: int, kind: str) -> StoredBasis | None:
    row = session.get(IndexBasisRow, (model_version_id, kind))
    if row is None:
        return None
    return StoredBasis(row.source_dims, row.dims, bytes(row.basis), row.fitted_on, row.energy)


def insert_basis(*, session: Session, model_version_id: int, kind: str, basis: StoredBasis) -> None:
    session.add(
        IndexBasisRow(
            model_version_id=model_version_id,
            kind=kind,
            source_dims=basis.source_dims,
            dims=basis.dims,
            basis=basis.basis,
            fitted_on=basis.fitted_on,
            energy=basis.energy,
            created_at=utcnow(),
        )
    )
    session.flush()


def has_at_least(*, session: Session, model_version_id: int, kind: str, n: int) -> bool:
    """Whether the (version, kind) has at least ``n`` stored vectors (reads at most ``n``)."""
    dv = DocumentVectorRow
    some = (
        select(dv.document_id)
        .where(dv.model_version_id == model_version_id, dv.kind == kind)
        .limit(n)
        .subquery()
    )
    return int(session.execute(select(func.count()).select_from(some)).scalar_one()) >= n


def set_index_entries(
    *, session: Session, model_version_id: int, entries: Sequence[tuple[int, Any]]
) -> None:
    """Write the projected entries (document id, float sequence) of one version's rows."""
    if not entries:
        return
    dv = DocumentVectorRow
    stmt = (
        update(dv)
        .where(
            dv.document_id == bindparam("doc_id"),
            dv.model_version_id == bindparam("version_id"),
        )
        .values(index_entry=bindparam("entry", type_=BinaryHalfVector()))
    )
    session.connection().execute(
        stmt,
        [{"doc_id": i, "version_id": model_version_id, "entry": e} for i, e in entries],
    )

"""The HNSW index's basis per (model version, kind): what the index holds is each document's
retrieval vector (``workers.vectors``, 1,934 dimensions for MiniLM) projected on a basis of
``scoring.index_dims`` orthonormal directions fitted on the kind's own vectors (their
principal directions, uncentred: the inner products are what must survive), completed to one
norm by a last dimension as the full vectors are. A query is projected on the same basis.

Why: the index searches in a space about 15 times narrower. Among 100,000 synthetic resumes
around the real data (README "Matching at scale"; scratch runs, not in ``docs/bench/``): exact
search on the projected entries keeps 0.998 of a new job's true top 10, and at the same graph
settings its index query takes 15 ms at p95 instead of 77, the graph builds in 66 s instead
of 145. Candidates are still scored exactly on the documents' field vectors.

Lifecycle: a (version, kind) has no basis until it has ``scoring.index_fit_at`` stored
vectors (its queries scan them exactly: cheap at that size). The first worker to commit a
write past that fits it (``fit``), after its commit: the basis row and every stored vector's
entry in one transaction, the HNSW index in the next. ``repository.bases``' lock orders the
fit after every write that did not project and before every write that will. A basis never
changes: workers keep it once read (read committed: a writer that waited for the lock sees
the fit's commit).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from jobfit.shared import repository as repo
from jobfit.shared.config import ScoringSettings
from jobfit.workers.scoring import Vector
from jobfit.workers.vectors import ENTRY_NORM

log = logging.getLogger(__name__)

FIT_SAMPLE = 20_000  # vectors a basis is fitted on, at most
PAGE = 2_000  # stored vectors projected per statement when a basis is fitted
# How long a fit waits for the writes it must follow; past it the fit is tried again later.
FIT_LOCK_TIMEOUT = "60s"


@dataclass(frozen=True)
class Basis:
    """``matrix``: source_dims x dims, orthonormal columns (float32)."""

    matrix: np.ndarray

    @property
    def width(self) -> int:
        """Width of an index entry: the basis's dimensions and the completing one."""
        return int(self.matrix.shape[1]) + 1

    def entries(self, vectors: np.ndarray) -> np.ndarray:
        """Index entries of retrieval vectors (rows, each of norm ``ENTRY_NORM``): their
        projections, completed to that norm by a last dimension."""
        p = np.asarray(vectors, dtype=np.float32) @ self.matrix
        norm2 = np.einsum("ij,ij->i", p.astype(np.float64), p.astype(np.float64))
        rest = np.sqrt(np.maximum(ENTRY_NORM**2 - norm2, 0.0))
        return np.concatenate([p, rest[:, None].astype(np.float32)], axis=1)

    def query(self, vector: Vector) -> np.ndarray:
        """A query's projection (its last dimension 0, as the full query's)."""
        p = np.asarray(vector, dtype=np.float32) @ self.matrix
        return np.concatenate([p, np.zeros(1, dtype=np.float32)])

    def stored(self, fitted_on: int, energy: float) -> repo.StoredBasis:
        m = np.ascontiguousarray(self.matrix, dtype=np.float32)
        return repo.StoredBasis(m.shape[0], m.shape[1], m.tobytes(), fitted_on, energy)

    @classmethod
    def from_stored(cls, stored: repo.StoredBasis) -> Basis:
        m = np.frombuffer(stored.basis, dtype=np.float32)
        return cls(m.reshape(stored.source_dims, stored.dims).copy())


def fit_basis(vectors: np.ndarray, dims: int) -> tuple[Basis, float]:
    """The ``dims`` principal directions of these vectors (rows), uncentred, and the share of
    their squared norms those keep. Fewer rows than ``dims``: as many directions as rows."""
    x = np.asarray(vectors, dtype=np.float64)
    k = max(1, min(dims, x.shape[0], x.shape[1]))
    if x.shape[0] < x.shape[1]:  # fewer vectors than dimensions: their SVD is the cheaper
        _, sv, vt = np.linalg.svd(x, full_matrices=False)  # descending
        values, top = sv**2, vt[:k].T
    else:  # the eigenvectors of the (dims x dims) Gram matrix, whatever the number of rows
        values, vecs = np.linalg.eigh(x.T @ x)  # ascending
        values, top = values[::-1], vecs[:, ::-1][:, :k]
    total = float(values.sum())
    kept = float(values[:k].sum()) / total if total > 0 else 1.0
    return Basis(top.astype(np.float32)), kept


def from_halfvec(raw: bytes) -> np.ndarray:
    """A pgvector ``halfvec`` in its binary form (``halfvec_send``: two big-endian uint16, the
    dimension and 0, then the float16 values big endian) as a float32 array."""
    dim = int.from_bytes(raw[:2], "big")
    return np.frombuffer(raw, dtype=">f2", count=dim, offset=4).astype(np.float32)


# (database URL, model version id, kind) -> its basis, once seen (a basis never changes).
_BASES: dict[tuple[str, int, str], Basis] = {}
# (database URL, model version id, kind) whose HNSW index this process has seen to exist.
_INDEXED: set[tuple[str, int, str]] = set()


def _key(session: Session, model_version_id: int, kind: str) -> tuple[str, int, str]:
    return (str(session.get_bind().engine.url), model_version_id, kind)


def lookup(*, session: Session, model_version_id: int, kind: str) -> Basis | None:
    """The (version, kind)'s basis: kept once seen, else read (None: not fitted yet)."""
    key = _key(session, model_version_id, kind)
    if key in _BASES:
        return _BASES[key]
    stored = repo.get_basis(session=session, model_version_id=model_version_id, kind=kind)
    if stored is None:
        return None
    _BASES[key] = Basis.from_stored(stored)
    return _BASES[key]


def for_writing(
    *, session: Session, model_version_id: int, kind: str, scoring: ScoringSettings
) -> Basis | None:
    """The basis to project this transaction's writes of (version, kind) with. None: not
    fitted yet; then this transaction holds the kind's lock shared (the fit waits for it to
    end, and projects its writes), and if the kind has enough vectors once it commits, a fit
    runs then, in a transaction of its own (``fit``). A basis whose index is missing (the fit
    stopped between its two transactions) gets it built the same way."""
    key = _key(session, model_version_id, kind)
    basis = _BASES.get(key)
    if basis is None:  # not seen yet: read under the lock (a basis never goes away again)
        repo.lock_for_writing(session=session, model_version_id=model_version_id, kind=kind)
        basis = lookup(session=session, model_version_id=model_version_id, kind=kind)
    if basis is None or key not in _INDEXED:
        if basis is not None and repo.index_exists(
            session=session, model_version_id=model_version_id, kind=kind
        ):
            _INDEXED.add(key)
        else:
            _fit_after_commit(session, model_version_id, kind, scoring)
    return basis


def _fit_after_commit(
    session: Session, model_version_id: int, kind: str, scoring: ScoringSettings
) -> None:
    # Kept over a rollback: the session's next commit, if any, tries it (a fit checks
    # everything again, so one tried for nothing costs a lookup).
    due: dict[tuple[int, str], ScoringSettings] = session.info.setdefault("jobfit_fit_due", {})
    if not due:
        event.listen(session, "after_commit", _run_due, once=True)
    due[(model_version_id, kind)] = scoring


def _run_due(session: Session) -> None:
    due: dict[tuple[int, str], ScoringSettings] = session.info.pop("jobfit_fit_due", {})
    engine = session.get_bind().engine
    for (version, kind), scoring in due.items():
        try:
            fit(engine=engine, model_version_id=version, kind=kind, scoring=scoring)
        except Exception:  # the index is an optimisation: exact scans serve until a fit succeeds
            log.warning(
                "could not fit the index basis of version %d's %ss (tried again on the next write)",
                version,
                kind,
                exc_info=True,
            )


def fit(*, engine: Engine, model_version_id: int, kind: str, scoring: ScoringSettings) -> bool:
    """Fit the (version, kind)'s basis if it has ``scoring.index_fit_at`` vectors and none
    yet: the basis and every stored vector's entry in one transaction, after every write that
    did not project (``repository.bases``), then the HNSW index in another (building it takes
    a lock on the whole table: never while holding the kind's). Where the basis exists, only
    the index if it is missing. True if it fitted a basis."""
    fitted = None
    with Session(engine) as session:  # checked first without the lock
        due = _due(session, model_version_id, kind, scoring)
    if due:
        with Session(engine) as session, session.begin():
            session.execute(
                text("SELECT set_config('lock_timeout', :t, true)"), {"t": FIT_LOCK_TIMEOUT}
            )
            repo.lock_for_fitting(session=session, model_version_id=model_version_id, kind=kind)
            if _due(session, model_version_id, kind, scoring):
                fitted = _fit_locked(session, model_version_id, kind, scoring)
    with Session(engine) as session, session.begin():
        basis = lookup(session=session, model_version_id=model_version_id, kind=kind)
        if basis is not None:
            t0 = time.perf_counter()
            if repo.ensure_index(
                session=session,
                model_version_id=model_version_id,
                kind="resume" if kind == "resume" else "job",
                dims=basis.width,
                m=scoring.hnsw_m,
                ef_construction=scoring.hnsw_ef_construction,
            ):
                log.info(
                    "HNSW index of version %d's %ss built in %.1f s",
                    model_version_id,
                    kind,
                    time.perf_counter() - t0,
                )
    return fitted is not None


def _due(session: Session, model_version_id: int, kind: str, scoring: ScoringSettings) -> bool:
    """No basis yet and enough stored vectors for one."""
    if repo.get_basis(session=session, model_version_id=model_version_id, kind=kind):
        return False
    return repo.has_at_least(
        session=session, model_version_id=model_version_id, kind=kind, n=scoring.index_fit_at
    )


def _fit_locked(
    session: Session, model_version_id: int, kind: str, scoring: ScoringSettings
) -> Basis | None:
    sample = repo.sample_vectors(
        session=session, model_version_id=model_version_id, kind=kind, n=FIT_SAMPLE
    )
    if not sample:
        return None
    basis, energy = fit_basis(np.stack([from_halfvec(b) for b in sample]), scoring.index_dims)
    repo.insert_basis(
        session=session,
        model_version_id=model_version_id,
        kind=kind,
        basis=basis.stored(len(sample), energy),
    )
    projected = project_stored(session, model_version_id, kind, basis)
    log.info(
        "index basis of version %d's %ss: %d dimensions keep %.4f of %d vectors' energy;"
        " %d entries projected",
        model_version_id,
        kind,
        basis.width - 1,
        energy,
        len(sample),
        projected,
    )
    return basis


def project_stored(session: Session, model_version_id: int, kind: str, basis: Basis) -> int:
    """Write the entry of every stored vector of the (version, kind); how many."""
    after, done = 0, 0
    while page := repo.vector_page(
        session=session, model_version_id=model_version_id, kind=kind, after=after, n=PAGE
    ):
        ids = [i for i, _ in page]
        entries = basis.entries(np.stack([from_halfvec(b) for _, b in page]))
        repo.set_index_entries(
            session=session,
            model_version_id=model_version_id,
            entries=list(zip(ids, entries, strict=True)),
        )
        after, done = ids[-1], done + len(ids)
    return done


def query_entry(
    *, session: Session, model_version_id: int, kind: str, query: Vector
) -> tuple[Any, int | None]:
    """A query against the (version, kind)'s index: (its projection, its width), or
    (None, None) where there is no basis yet (then the query scans exactly)."""
    basis = lookup(session=session, model_version_id=model_version_id, kind=kind)
    if basis is None:
        return None, None
    return basis.query(query), basis.width


def entries_for(basis: Basis | None, vectors: Sequence[Vector]) -> list[Any]:
    """Index entries of these retrieval vectors under ``basis`` (None each: no basis yet)."""
    if basis is None or not vectors:
        return [None] * len(vectors)
    return list(basis.entries(np.stack(vectors)))

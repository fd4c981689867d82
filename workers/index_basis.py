"""The entry index's basis per (model version, kind): what the index holds is each document's
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
vectors (its queries rank them all exactly: ``workers.matching.rank_pool``). The first
worker to commit a write past that fits it (``fit``), after its commit: the basis row and
every stored vector's entry in one transaction, the entry index in the next
(``build_index``: IVFFlat or HNSW, ``scoring.index_method``). ``repository.bases``' lock
orders the fit after every write that did not project and before every write that will. A
basis never changes: workers keep it once read (read committed: a writer that waited for the
lock sees the fit's commit). An IVFFlat index is built again, with twice the lists, each
time its kind has grown fourfold: a worker looks after a commit, at most once a minute per
(version, kind).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from jobfit.shared import repository as repo
from jobfit.shared.config import PairType, ScoringSettings
from jobfit.workers.ranking import decode
from jobfit.workers.scoring import Vector
from jobfit.workers.vectors import ENTRY_NORM, DocumentVectors, retrieval_vector

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


# (database URL, model version id, kind) -> its basis, once seen (a basis never changes).
_BASES: dict[tuple[str, int, str], Basis] = {}
# (database URL, model version id, kind) -> when this process last found its index in order
# (monotonic seconds). An HNSW index, once seen, needs nothing more; an IVFFlat one is looked
# at again every ``IVF_CHECK_S`` (has the kind grown enough for more lists?).
_INDEXED: dict[tuple[str, int, str], float] = {}
IVF_CHECK_S = 60.0


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
    *,
    session: Session,
    model_version_id: int,
    kind: str,
    scoring: ScoringSettings,
    weights: Mapping[PairType, float],
) -> Basis | None:
    """The basis to project this transaction's writes of (version, kind) with. None: not
    fitted yet; then this transaction holds the kind's lock shared (the fit waits for it to
    end, and projects its writes), and if the kind has enough vectors once it commits, a fit
    runs then, in a transaction of its own (``fit``). A basis whose index is missing (the fit
    stopped between its two transactions) gets it built the same way, and with
    ``index_method`` ivfflat ``fit`` looks again at most every ``IVF_CHECK_S`` (has the kind
    outgrown its lists?)."""
    key = _key(session, model_version_id, kind)
    basis = _BASES.get(key)
    if basis is None:  # not seen yet: read under the lock (a basis never goes away again)
        repo.lock_for_writing(session=session, model_version_id=model_version_id, kind=kind)
        basis = lookup(session=session, model_version_id=model_version_id, kind=kind)
    if basis is None:
        _fit_after_commit(session, model_version_id, kind, scoring, weights)
        return None
    seen, now = _INDEXED.get(key), time.monotonic()
    if scoring.index_method == "hnsw":  # seen once: nothing more to do
        if seen is not None:
            return basis
        if repo.index_exists(session=session, model_version_id=model_version_id, kind=kind):
            _INDEXED[key] = now
            return basis
    elif seen is not None and now - seen < IVF_CHECK_S:
        return basis
    else:
        _INDEXED[key] = now
    # built, or looked at again, after this commit (``fit``: ``build_index``)
    _fit_after_commit(session, model_version_id, kind, scoring, weights)
    return basis


Due = dict[tuple[int, str], tuple[ScoringSettings, Mapping[PairType, float]]]


def _fit_after_commit(
    session: Session,
    model_version_id: int,
    kind: str,
    scoring: ScoringSettings,
    weights: Mapping[PairType, float],
) -> None:
    # Kept over a rollback: the session's next commit, if any, tries it (a fit checks
    # everything again, so one tried for nothing costs a lookup).
    due: Due = session.info.setdefault("jobfit_fit_due", {})
    if not due:
        event.listen(session, "after_commit", _run_due, once=True)
    due[(model_version_id, kind)] = (scoring, weights)


def _run_due(session: Session) -> None:
    due: Due = session.info.pop("jobfit_fit_due", {})
    engine = session.get_bind().engine
    for (version, kind), (scoring, weights) in due.items():
        try:
            fit(
                engine=engine,
                model_version_id=version,
                kind=kind,
                scoring=scoring,
                weights=weights,
            )
        except Exception:  # the index is an optimisation: exact ranking serves until a fit succeeds
            log.warning(
                "could not fit the index basis of version %d's %ss (tried again on the next write)",
                version,
                kind,
                exc_info=True,
            )


def fit(
    *,
    engine: Engine,
    model_version_id: int,
    kind: str,
    scoring: ScoringSettings,
    weights: Mapping[PairType, float],
) -> bool:
    """Fit the (version, kind)'s basis if it has ``scoring.index_fit_at`` vectors and none
    yet, on their retrieval vectors under ``weights`` (made from their stored field vectors):
    the basis and every stored vector's entry in one transaction, after every write that
    did not project (``repository.bases``), then the entry index in another (building it takes
    a lock on the whole table: never while holding the kind's; ``build_index``), then the
    indexes an IVFFlat rebuild replaced are dropped in a third. Where the basis exists, only
    the index: built if missing, rebuilt if its kind has outgrown it. True if it fitted a
    basis."""
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
                fitted = _fit_locked(session, model_version_id, kind, scoring, weights)
    with Session(engine) as session, session.begin():
        basis = lookup(session=session, model_version_id=model_version_id, kind=kind)
        if basis is not None:
            t0 = time.perf_counter()
            built = build_index(
                session=session,
                model_version_id=model_version_id,
                kind=kind,
                basis=basis,
                scoring=scoring,
            )
            if built:
                log.info(
                    "%s index of version %d's %ss built in %.1f s",
                    built,
                    model_version_id,
                    kind,
                    time.perf_counter() - t0,
                )
    _drop_replaced(engine, model_version_id, kind)
    return fitted is not None


# How long dropping a replaced index waits for the table's readers and writers before it
# gives up (tried again at the next look): meanwhile new readers queue behind it.
DROP_LOCK_TIMEOUT = "2s"


def _drop_replaced(engine: Engine, model_version_id: int, kind: str) -> None:
    """Drop the entry indexes an IVFFlat rebuild replaced, in a transaction of its own (a
    drop waits for every reader of the table: never while holding the build's locks)."""
    k: repo.Kind = "resume" if kind == "resume" else "job"
    with Session(engine) as session:
        found = repo.entry_indexes(session=session, model_version_id=model_version_id, kind=k)
    if len(found) < 2 or found[0].method != "ivfflat":
        return
    try:
        with Session(engine) as session, session.begin():
            session.execute(
                text("SELECT set_config('lock_timeout', :t, true)"), {"t": DROP_LOCK_TIMEOUT}
            )
            n = repo.drop_replaced_entry_indexes(
                session=session, model_version_id=model_version_id, kind=k
            )
        log.info("dropped %d replaced index(es) of version %d's %ss", n, model_version_id, kind)
    except OperationalError:  # the lock timed out: the next look tries again
        log.warning(
            "could not drop the replaced indexes of version %d's %ss yet (tried again later)",
            model_version_id,
            kind,
            exc_info=True,
        )


def ivf_lists(n: int) -> int:
    """IVFFlat lists for ``n`` entries: ceil(2 sqrt(n)). Finer than pgvector's advice (rows /
    1,000 up to 1M rows, sqrt(rows) past it): among 100,000 resumes around the real data, a
    new job's recall@10 was 0.99 reading 14 % of 632 lists, and as much reading 19 % of 316
    (README "Matching at scale")."""
    return max(1, math.ceil(2.0 * math.sqrt(max(n, 1))))


def rebuild_at(lists: int) -> int:
    """How many entries an IVFFlat index of ``lists`` lists is built again at (``build_index``):
    the fewest whose ``ivf_lists`` reach twice its lists, about four times what it was built
    on."""
    n = math.floor((lists - 0.5) ** 2)  # ceil(2 sqrt(n)) >= 2 lists from about here
    while ivf_lists(n) < 2 * lists:
        n += 1
    return n


# An IVFFlat query reads at least this many entries (all of a small kind's): below a few
# thousand, reading only some of a few coarse lists misses too much (recall@10 0.90 among
# 2,000 resumes reading 9 of 45 lists, under an earlier, coarser lists rule) and reading them
# all costs milliseconds.
IVF_MIN_ENTRIES = 5_000


def build_index(
    *,
    session: Session,
    model_version_id: int,
    kind: str,
    basis: Basis,
    scoring: ScoringSettings,
) -> str | None:
    """The (version, kind)'s entry index as ``scoring.index_method`` asks where it has none;
    an IVFFlat one again, with ``ivf_lists`` of its entries, once the kind has grown fourfold
    since it was built (twice the lists: its cells stay about as fine as a fresh build's).
    What was built (None: nothing). An index of the other method stays as it is."""
    k: repo.Kind = "resume" if kind == "resume" else "job"
    current = repo.entry_index(session=session, model_version_id=model_version_id, kind=k)
    if current is None and scoring.index_method == "hnsw":
        made = repo.ensure_index(
            session=session,
            model_version_id=model_version_id,
            kind=k,
            dims=basis.width,
            m=scoring.hnsw_m,
            ef_construction=scoring.hnsw_ef_construction,
        )
        return "HNSW" if made else None
    if current is not None and current.method != "ivfflat":
        return None
    n = repo.count_vectors(session=session, model_version_id=model_version_id, kind=k)
    if current is not None and n < rebuild_at(current.lists or 0):
        return None
    lists = ivf_lists(n)
    made = repo.ensure_ivfflat_index(
        session=session, model_version_id=model_version_id, kind=k, dims=basis.width, lists=lists
    )
    return f"IVFFlat ({lists} lists)" if made else None


def probes(
    *, session: Session, model_version_id: int, kind: str, scoring: ScoringSettings
) -> int | None:
    """IVFFlat lists a query of the (version, kind) reads (None: its index is not IVFFlat):
    ``scoring.ivf_probes`` of them, or enough for ``IVF_MIN_ENTRIES`` entries."""
    current = repo.entry_index(session=session, model_version_id=model_version_id, kind=kind)
    if current is None or current.lists is None:
        return None
    return probe_count(current.lists, current.entries, scoring.ivf_probes)


def probe_count(lists: int, entries: float, probes: int) -> int:
    """Lists to read of an IVFFlat index of ``lists`` lists holding about ``entries`` entries
    (-1: unknown): ``probes`` of them, or enough for ``IVF_MIN_ENTRIES`` entries, all of a
    small index, at least one. A fixed count reads a share that falls as the kind grows (its
    lists grow with sqrt(n)): the entries read grow with sqrt(n), not with n."""
    if entries < IVF_MIN_ENTRIES:  # (-1 and 0 too: read as small)
        return max(1, lists)
    floor = math.ceil(IVF_MIN_ENTRIES / entries * lists)
    return min(lists, max(1, probes, floor))


def _due(session: Session, model_version_id: int, kind: str, scoring: ScoringSettings) -> bool:
    """No basis yet and enough stored vectors for one."""
    if repo.get_basis(session=session, model_version_id=model_version_id, kind=kind):
        return False
    return repo.has_at_least(
        session=session, model_version_id=model_version_id, kind=kind, n=scoring.index_fit_at
    )


def _fit_locked(
    session: Session,
    model_version_id: int,
    kind: str,
    scoring: ScoringSettings,
    weights: Mapping[PairType, float],
) -> Basis | None:
    sample = repo.sample_vectors(
        session=session, model_version_id=model_version_id, kind=kind, n=FIT_SAMPLE
    )
    if not sample:
        return None
    basis, energy = fit_basis(retrieval_vectors(sample, weights), scoring.index_dims)
    repo.insert_basis(
        session=session,
        model_version_id=model_version_id,
        kind=kind,
        basis=basis.stored(len(sample), energy),
    )
    projected = project_stored(session, model_version_id, kind, basis, weights)
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


def retrieval_vectors(
    stored: Sequence[repo.StoredVectors], weights: Mapping[PairType, float]
) -> np.ndarray:
    """Stored documents' retrieval vectors (rows) under ``weights``."""
    docs = [decode(s) for s in stored]
    return np.stack([retrieval_vector(d, weights, _dim(d)) for d in docs])


def _dim(doc: DocumentVectors) -> int:
    return int(next(iter(doc.slots.values())).shape[0])


def project_stored(
    session: Session,
    model_version_id: int,
    kind: str,
    basis: Basis,
    weights: Mapping[PairType, float],
) -> int:
    """Write the entry of every stored vector of the (version, kind); how many."""
    after, done = 0, 0
    while page := repo.vector_page(
        session=session, model_version_id=model_version_id, kind=kind, after=after, n=PAGE
    ):
        ids = [s.document_id for s in page]
        entries = basis.entries(retrieval_vectors(page, weights))
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
    (None, None) where there is no basis yet (then the query ranks every document)."""
    basis = lookup(session=session, model_version_id=model_version_id, kind=kind)
    if basis is None:
        return None, None
    return basis.query(query), basis.width


def entries_for(basis: Basis | None, vectors: Sequence[Vector]) -> list[Any]:
    """Index entries of these retrieval vectors under ``basis`` (None each: no basis yet)."""
    if basis is None or not vectors:
        return [None] * len(vectors)
    return list(basis.entries(np.stack(vectors)))

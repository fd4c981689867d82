"""``python -m tools bench-scale`` (``make bench-scale``): top-K retrieval at corpus sizes far
beyond the real dataset, on Postgres with pgvector (the configured one if it has pgvector,
else the embedded one), every figure from one run.

Corpora: documents made around the real dataset's documents (each synthetic document takes a
random real document of its kind and, per field slot it has, the real MiniLM vector plus
Gaussian noise of norm about ``NOISE``, normalised: clustered like real data, not uniform),
written straight into ``documents`` and ``document_vectors`` with binary COPY, so the model is
not the bottleneck. The noise (``--noise``):

real        drawn with the covariance of the real vectors of that kind and slot: a synthetic
            document differs from its seed the way real documents differ from each other, in
            the few directions real texts span (the default).
isotropic   the same norm spread over all 384 dimensions: directions no real text takes,
            which raise the corpus's intrinsic dimension far above real data's (a stress
            case for the graph; README "Matching at scale").

Sizes grow in steps (each step adds to the previous corpus). A kind's index basis is fitted
as a worker fits it: when the kind reaches ``scoring.index_fit_at`` documents, on those
(``workers.index_basis``); the documents after are written with their entries. An IVFFlat
index (the default, ``--index-method``) is kept as workers keep it: the load writes up to
each point where a worker would rebuild it with more lists (``next_build_at``), then calls
``index_basis.fit`` as a worker does after its commit; an HNSW index is dropped during a
step's load and built after it (a bulk build is faster than inserting into the graph).

Per size:
ingest        ``NEW_DOCS`` new documents of each kind through ``workers.matching.match_top_k``
              (retrieval, exact scoring of the candidates, top K and reverse updates written),
              each in its own transaction, after its row and vectors are stored as ingest's
              first transaction does: seconds and rows written per document, and the
              blocks each table read into shared buffers per document (its misses);
              ``matches`` and ``pair_scores`` analysed after the first (``analyze_matches``);
              after how many an autovacuum worker was at work.
              They are deleted after (their rows cascade): the next size's queries and
              recall see that size's corpus only.
query         a new document's top 10 as a reader would get it without storing anything:
              the index query plus exact rescoring of its candidates, p50/p95 (and the
              index query alone, which reads the pool's stored vectors too); after a
              ``CHECKPOINT`` (``checkpoint``), after ``pg_prewarm`` has read
              ``document_vectors`` and ``documents`` (heaps, TOAST tables, indexes) into
              shared buffers, and after ``QUERIES`` other queries of the same kind have
              run (``warm_up``), as a serving database has them.
recall        of that top 10 and top 100 against exhaustive exact scoring of the whole
              other side (computed here with numpy over the regenerated corpus).
bytes         per document in Postgres (each table with its indexes; matches and pair scores
              per ingested document), and index build seconds.

Plus the real dataset (344 resumes, 28 jobs, MiniLM): recall@10 of ``top_k`` against ``all``
for several candidate pool sizes, both directions.

The bench's own database runs with ``synchronous_commit = off`` (commits do not wait for the
WAL flush: a bulk load, not a durability test); it is dropped at the end.
"""

from __future__ import annotations

import heapq
import os
import re
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from jobfit.shared import repository as repo
from jobfit.shared.config import PairType, ScoringSettings, Settings
from jobfit.shared.db import ensure_database, make_session_factory, upgrade
from jobfit.shared.fields import JOB_SLOT, RESUME_SLOT, field_texts
from jobfit.shared.repository.vectors import Kind
from jobfit.shared.schemas import JobDocument, ResumeDocument
from jobfit.workers import index_basis
from jobfit.workers.embedding import ModelContext
from jobfit.workers.matching import index_pool, match_top_k, rank_pool
from jobfit.workers.scoring import Vector
from jobfit.workers.vectors import DocumentVectors, as_stored, score

FULL_SIZES = ((10_000, 1_000), (100_000, 10_000), (1_000_000, 100_000))
QUICK_SIZES = ((2_000, 200), (10_000, 1_000))
NOISE = 0.6
NOISE_MODELS = ("real", "isotropic")
NEW_DOCS = 50  # per kind and size, ingested
QUERIES = 50  # per kind and size, for latency and recall
# Search settings measured besides the configured one, per index method: what a wider or
# narrower search buys (recall) and costs (latency) at each size.
SWEEPS: dict[str, tuple[str, tuple[int, ...]]] = {
    "hnsw": ("ef_search", (400, 600, 1000)),
    "ivfflat": ("ivf_probes", (40, 160)),
}
CHUNK = 10_000  # documents written (and regenerated for exact scoring) at a time
BLOCK = 1_000  # documents of one seed: any range of documents regenerates identically
DIM = 384  # MiniLM
SEED = 20261129
NEW_IDS = 4_000_000_000  # row ids of ingested documents: beyond any corpus and the real set


class NoModel:
    """The embedder a bench context carries: every vector is stored already, so nothing may
    reach a model (an ``encode`` call is a bug of the bench)."""

    version = "minilm-scale@bench"
    dim = DIM

    def encode(self, texts: list[str]) -> Any:
        raise AssertionError(f"the scale bench embeds nothing, asked for {len(texts)} texts")


# --- synthetic documents ----------------------------------------------------------------


@dataclass(frozen=True)
class Bases:
    """The real documents' vectors by slot, per kind (what synthetic ones are drawn around),
    and per kind and slot the real vectors' spread: centred rows scaled so that a standard
    normal draw times them has norm about ``NOISE`` (``noise="real"``)."""

    resume: list[dict[str, Vector]]
    job: list[dict[str, Vector]]
    noise: str = "real"
    spread: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind in ("resume", "job"):
            for slot in sorted({s for d in self.of(kind) for s in d}):
                rows = np.stack([d[slot] for d in self.of(kind) if slot in d]).astype(np.float64)
                centred = rows - rows.mean(axis=0)
                total = float((centred**2).sum())  # E|g @ centred|^2 for standard normal g
                if len(rows) > 1 and total > 0:
                    self.spread[(kind, slot)] = (centred * (NOISE / np.sqrt(total))).astype(
                        np.float32
                    )

    def of(self, kind: str) -> list[dict[str, Vector]]:
        return self.resume if kind == "resume" else self.job

    def draw(self, rng: np.random.Generator, kind: str, slot: str) -> np.ndarray:
        """One noise vector for a slot of a kind (see the module docstring)."""
        spread = self.spread.get((kind, slot))
        if self.noise == "isotropic" or spread is None:
            return rng.standard_normal(DIM).astype(np.float32) * np.float32(NOISE / np.sqrt(DIM))
        out: np.ndarray = rng.standard_normal(len(spread)).astype(np.float32) @ spread
        return out


def real_bases(
    model: Any, dataset: Path, noise: str = "real"
) -> tuple[Bases, list[DocumentVectors], list[DocumentVectors]]:
    from tools.dataset import read_dataset

    data = read_dataset(dataset)
    every: list[ResumeDocument | JobDocument] = [*data.resumes, *data.jobs]
    texts = sorted({t for d in every for t in field_texts(d).values()})
    emb = dict(
        zip(
            texts,
            np.asarray(model.encode(texts, normalize_embeddings=True, batch_size=64)),
            strict=True,
        )
    )

    def vecs(d: Any) -> DocumentVectors:
        return DocumentVectors.from_pairs(d.kind, {p: emb[t] for p, t in field_texts(d).items()})

    resumes, jobs = [vecs(r) for r in data.resumes], [vecs(j) for j in data.jobs]
    bases = Bases([r.slots for r in resumes], [j.slots for j in jobs], noise=noise)
    return bases, resumes, jobs


def synthetic(bases: Bases, kind: str, start: int, n: int, salt: int = 0) -> list[DocumentVectors]:
    """Documents ``start .. start+n`` of a kind: the same every time they are asked for,
    whatever the range asked (each block of ``BLOCK`` has a seed of its own)."""
    out: list[DocumentVectors] = []
    for block in range(start // BLOCK, (start + n + BLOCK - 1) // BLOCK):
        docs = _block(bases, kind, block, salt)
        lo = max(start - block * BLOCK, 0)
        out += docs[lo : lo + n - len(out)]
    return out


def _block(bases: Bases, kind: str, block: int, salt: int) -> list[DocumentVectors]:
    rng = np.random.default_rng([SEED, salt, 0 if kind == "resume" else 1, block])
    pool = bases.of(kind)
    out = []
    for b in rng.integers(len(pool), size=BLOCK):
        slots = {}
        for s, v in pool[b].items():
            x = v + bases.draw(rng, kind, s)
            slots[s] = as_stored(x / np.linalg.norm(x))
        out.append(DocumentVectors(kind, slots))
    return out


def chunks(
    bases: Bases, kind: str, total: int, salt: int = 0
) -> Iterator[tuple[int, list[DocumentVectors]]]:
    for start in range(0, total, CHUNK):
        yield start, synthetic(bases, kind, start, min(CHUNK, total - start), salt)


# --- writing ------------------------------------------------------------------------------


def external_id(kind: str, i: int) -> str:
    return f"{kind}-s{i}"


def doc_id(kind: str, i: int) -> int:
    """Row ids: resumes from 1, jobs from 10**9 (room for any size here)."""
    return (1 if kind == "resume" else 1_000_000_001) + i


def copy_documents(
    factory: sessionmaker[Session],
    *,
    ctx: ModelContext,
    kind: str,
    start: int,
    docs: Sequence[DocumentVectors],
    ids: Sequence[int] | None = None,
) -> None:
    """Rows and vectors of these documents in two binary COPYs (one transaction), their index
    entries too where their kind has a basis (as a worker writes them)."""
    from pgvector import HalfVector
    from pgvector.psycopg import register_vector
    from psycopg.types.json import Jsonb

    engine = factory.kw["bind"]
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        register_vector(conn)
        with factory() as s:
            basis = index_basis.lookup(session=s, model_version_id=ctx.model_version_id, kind=kind)
        entries = index_basis.entries_for(basis, [ctx.retrieval_vector(d) for d in docs])
        ids = ids or [doc_id(kind, start + k) for k in range(len(docs))]
        names = [external_id(kind, i - doc_id(kind, 0)) for i in ids]
        with conn.cursor() as cur:
            with cur.copy(
                "COPY documents (id, kind, external_id, content_hash, schema_version, payload,"
                " created_at, updated_at) FROM STDIN (FORMAT BINARY)"
            ) as cp:
                cp.set_types(
                    [
                        "int8",
                        "varchar",
                        "varchar",
                        "varchar",
                        "int4",
                        "jsonb",
                        "timestamptz",
                        "timestamptz",
                    ]
                )
                now = repo_now()
                for i, name in zip(ids, names, strict=True):
                    cp.write_row((i, kind, name, name, 1, Jsonb({"id": name}), now, now))
            with cur.copy(
                "COPY document_vectors (document_id, model_version_id, kind, content_hash,"
                " scoring_key, slots, fields, index_entry, updated_at)"
                " FROM STDIN (FORMAT BINARY)"
            ) as cp:
                cp.set_types(
                    [
                        "int8",
                        "int4",
                        "varchar",
                        "varchar",
                        "varchar",
                        "jsonb",
                        "halfvec",
                        "halfvec",
                        "timestamptz",
                    ]
                )
                for i, name, d, x in zip(ids, names, docs, entries, strict=True):
                    slots, fields = d.packed()
                    cp.write_row(
                        (
                            i,
                            ctx.model_version_id,
                            kind,
                            name,
                            ctx.vectors_key,
                            Jsonb(slots),
                            HalfVector(fields),
                            None if x is None else HalfVector(x),
                            now,
                        )
                    )
        conn.commit()
    finally:
        raw.close()


def repo_now() -> Any:
    from jobfit.shared.orm import utcnow

    return utcnow()


# --- exhaustive exact scoring (the reference) ---------------------------------------------


def exact_scores(
    query: DocumentVectors, docs: Sequence[DocumentVectors], weights: dict[PairType, float]
) -> np.ndarray:
    """``scoring.score_match`` of ``query`` against each of ``docs``, vectorised (no score:
    -inf); checked against it on a sample in ``check_reference``."""
    other_slot = JOB_SLOT if query.kind == "resume" else RESUME_SLOT
    num = np.zeros(len(docs))
    den = np.zeros(len(docs))
    for p, q in query.pair_vectors().items():
        s = other_slot[p]
        mask = np.array([s in d.slots for d in docs])
        if not mask.any():
            continue
        mat = np.stack([d.slots[s] if s in d.slots else np.zeros(DIM, np.float32) for d in docs])
        num += weights[p] * (mat.astype(np.float64) @ q.astype(np.float64)) * mask
        den += weights[p] * mask
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1), -np.inf)
    return out


def check_reference(ctx: ModelContext, bases: Bases) -> float:
    """Largest difference between the vectorised reference and ``score_match``."""
    rs, js = synthetic(bases, "resume", 0, 20, salt=9), synthetic(bases, "job", 0, 20, salt=9)
    worst = 0.0
    for r in rs:
        ref = exact_scores(r, js, dict(ctx.weights))
        for j, x in zip(js, ref, strict=True):
            m = score(r, j, ctx.weights).score
            worst = max(worst, abs((m if m is not None else -np.inf) - x) if m is not None else 0.0)
    return worst


def exhaustive_top(
    ctx: ModelContext,
    *,
    bases: Bases,
    queries: Sequence[DocumentVectors],
    kind: str,
    total: int,
    k: int,
) -> list[list[int]]:
    """Per query: the row ids of its exact top ``k`` among the ``total`` corpus documents of
    ``kind`` (regenerated chunk by chunk)."""
    heaps: list[list[tuple[float, int]]] = [[] for _ in queries]
    weights = dict(ctx.weights)
    for start, docs in chunks(bases, kind, total):
        for qi, q in enumerate(queries):
            sc = exact_scores(q, docs, weights)
            best = np.argpartition(-sc, min(k, len(sc) - 1))[:k]
            for b in best:
                item = (float(sc[b]), doc_id(kind, start + int(b)))
                if len(heaps[qi]) < k:
                    heapq.heappush(heaps[qi], item)
                else:
                    heapq.heappushpop(heaps[qi], item)
    return [[i for _, i in sorted(h, reverse=True)] for h in heaps]


# --- measuring ----------------------------------------------------------------------------


def pct(xs: Sequence[float], q: float) -> float:
    """The q-th percentile of ``xs`` (seconds) in milliseconds."""
    return float(np.percentile(np.asarray(xs, dtype=np.float64) * 1000.0, q))


def query_top(
    factory: sessionmaker[Session], ctx: ModelContext, q: DocumentVectors, k: int
) -> tuple[list[int], float, float]:
    """A new document's top ``k`` ids as a reader would get them, nothing written (the index
    query, which reads its pool's stored vectors, then exact ranking of the pool on them:
    ``matching.nearest``), with the seconds of the index query alone and of the whole."""
    with factory() as session:
        limit = max(ctx.scoring.candidates, k)
        t0 = time.perf_counter()
        pool = index_pool(session=session, ctx=ctx, doc=q, limit=limit)
        t1 = time.perf_counter()
        ranked, _ = rank_pool(session=session, ctx=ctx, doc=q, pool=pool, limit=limit)
        t2 = time.perf_counter()
        session.rollback()
    return [i for i, _ in ranked[:k]], t1 - t0, t2 - t0


def recall(got: Sequence[Sequence[int]], want: Sequence[Sequence[int]], k: int) -> float:
    return statistics.fmean(
        len(set(g[:k]) & set(w[:k])) / k for g, w in zip(got, want, strict=True)
    )


def table_bytes(factory: sessionmaker[Session]) -> dict[str, int]:
    with factory() as s:
        return {
            t: int(s.execute(text("SELECT pg_total_relation_size(:t)"), {"t": t}).scalar_one())
            for t in ("documents", "document_vectors", "matches", "pair_scores", "field_embeddings")
        }


KINDS: tuple[Kind, ...] = ("resume", "job")


def drop_indexes(factory: sessionmaker[Session], ctx: ModelContext) -> None:
    with factory.begin() as s:
        for kind in KINDS:
            s.execute(text(f"DROP INDEX IF EXISTS {repo.index_name(ctx.model_version_id, kind)}"))


def load_kind(
    factory: sessionmaker[Session],
    ctx: ModelContext,
    *,
    bases: Bases,
    kind: str,
    have: int,
    total: int,
) -> tuple[float | None, float]:
    """Grow a kind from ``have`` to ``total`` documents. As in production, its basis is fitted
    when it reaches ``scoring.index_fit_at`` documents (on those), and what comes after is
    written with its entries; an IVFFlat index is kept as a worker keeps it (``index_basis.fit``
    after each write: rebuilt with more lists as the kind grows), an HNSW one is dropped and
    built after the load (``build_indexes``: faster than inserting into the graph). The seconds
    the basis fit took, if it happened here, and the seconds the IVFFlat upkeep took."""
    fit_s, upkeep_s = None, 0.0
    hnsw = ctx.scoring.index_method == "hnsw"
    for start, docs in chunks(bases, kind, total):
        skip = max(0, have - start)
        if skip >= len(docs):
            continue
        lo = start + skip
        rest = docs[skip:]
        while rest:
            at = next_build_at(factory, ctx, kind)
            n = at - lo if at is not None and lo < at < lo + len(rest) else len(rest)
            part, rest = rest[:n], rest[n:]
            copy_documents(factory, ctx=ctx, kind=kind, start=lo, docs=part)
            lo += len(part)
            with factory() as s:
                fitted = index_basis.lookup(
                    session=s, model_version_id=ctx.model_version_id, kind=kind
                )
            if fitted is not None and hnsw:
                continue
            t0 = time.perf_counter()
            if index_basis.fit(
                engine=factory.kw["bind"],
                model_version_id=ctx.model_version_id,
                kind=kind,
                scoring=ctx.scoring,
                weights=ctx.weights,
            ):
                fit_s = round(time.perf_counter() - t0, 2)
                if hnsw:
                    drop_indexes(factory, ctx)  # rebuilt after the load: no insert into the graph
            elif fitted is not None:
                upkeep_s += time.perf_counter() - t0
    return fit_s, round(upkeep_s, 2)


def next_build_at(factory: sessionmaker[Session], ctx: ModelContext, kind: str) -> int | None:
    """How many documents of the kind a worker would next fit or build its index at: its
    basis's fitting point, then each where a worker rebuilds the IVFFlat index
    (``index_basis.rebuild_at``); None: nothing more (HNSW). The load
    writes up to each, so the index a size is measured on is the one a worker that stored
    the same documents one by one would have built (the lists, and the entries they were
    fitted on), not one the bench's writes of ``CHUNK`` happened to land on."""
    with factory() as s:
        v = ctx.model_version_id
        if index_basis.lookup(session=s, model_version_id=v, kind=kind) is None:
            return ctx.scoring.index_fit_at
        current = repo.entry_index(session=s, model_version_id=v, kind=kind)
    if ctx.scoring.index_method == "hnsw" or current is None or current.lists is None:
        return None
    return index_basis.rebuild_at(current.lists)


def build_indexes(factory: sessionmaker[Session], ctx: ModelContext) -> dict[str, float]:
    """Each kind's HNSW index over its projected entries, rebuilt (kinds with a basis); an
    IVFFlat index is kept up as workers keep it (``load_kind``): nothing here."""
    out: dict[str, float] = {}
    if ctx.scoring.index_method != "hnsw":
        return out
    drop_indexes(factory, ctx)
    for kind in KINDS:
        with factory.begin() as s:
            basis = index_basis.lookup(session=s, model_version_id=ctx.model_version_id, kind=kind)
            if basis is None:
                continue
            s.execute(text("SET LOCAL maintenance_work_mem = '8GB'"))
            s.execute(text("SET LOCAL max_parallel_maintenance_workers = 1"))
            t0 = time.perf_counter()
            index_basis.build_index(
                session=s,
                model_version_id=ctx.model_version_id,
                kind=kind,
                basis=basis,
                scoring=ctx.scoring,
            )
            secs = time.perf_counter() - t0
        out[kind] = round(secs, 2)
    return out


def index_facts(factory: sessionmaker[Session], ctx: ModelContext) -> dict[str, Any]:
    """Per kind with a basis: the width of its index entries, and its entry index (method
    and, for IVFFlat, lists; None while it has none)."""
    out: dict[str, Any] = {}
    with factory() as s:
        for kind in KINDS:
            basis = index_basis.lookup(session=s, model_version_id=ctx.model_version_id, kind=kind)
            if basis is None:
                continue
            found = repo.entry_index(session=s, model_version_id=ctx.model_version_id, kind=kind)
            index = None if found is None else {"method": found.method, "lists": found.lists}
            out[kind] = {"dims": basis.width, "index": index}
    return out


def ingest_new(
    factory: sessionmaker[Session],
    ctx: ModelContext,
    bases: Bases,
    *,
    kind: str,
    size_no: int,
    n: int,
) -> dict[str, Any]:
    """``n`` new documents of ``kind``: stored, then matched one at a time (as a worker does
    with a batch of one); ``matches`` analysed after the first (``analyze_matches``)."""
    docs = synthetic(bases, kind, 0, n, salt=100 + size_no)
    base = NEW_IDS + doc_id(kind, 0) + size_no * 1000
    ids = [base + k for k in range(n)]
    t0 = time.perf_counter()
    copy_documents(factory, ctx=ctx, kind=kind, start=0, docs=docs, ids=ids)
    store_s = time.perf_counter() - t0
    # The pool's backends exit (and flush their counts) before the first count is read.
    factory.kw["bind"].dispose()
    time.sleep(1.0)
    misses = blocks_read(factory)
    with factory() as s:  # pg_stat_force_next_flush: Postgres 15 and newer
        counted = int(s.execute(text("SHOW server_version_num")).scalar_one()) >= 150000
    secs, rows, busy = [], [], 0
    for k, i in enumerate(ids):
        with factory.begin() as s:
            (row,) = repo.documents_by_id(session=s, ids=[i]).values()
            t0 = time.perf_counter()
            written, _ = match_top_k(session=s, ctx=ctx, rows=[row])
            t = time.perf_counter() - t0
            if counted:
                s.execute(text("SELECT pg_stat_force_next_flush()"))  # counted at the commit
        secs.append(t)
        rows.append(written)
        busy += autovacuum_busy(factory)
        if k == 0:
            analyze_matches(factory)
    after = blocks_read(factory)
    return {
        "docs": n,
        # rows and vectors written, entries added to the HNSW graph (one COPY for all n)
        "store_ms_per_doc": round(1000 * store_s / n, 2),
        "s_per_doc_mean": round(statistics.fmean(secs), 4),
        "ms_p50": round(pct(secs, 50), 1),
        "ms_p95": round(pct(secs, 95), 1),
        "rows_per_doc_mean": round(statistics.fmean(rows), 1),
        "ms_each": [round(1000 * t, 1) for t in secs],  # in order: a tail's place shows
        # shared-buffer misses: blocks read from the page cache or the disk, per table
        "blocks_read_per_doc": {
            t: round((after.get(t, 0) - misses.get(t, 0)) / n, 1) for t in MISS_TABLES
        }
        if counted
        else None,
        # ingests after which an autovacuum worker was at work (a look after each): on two
        # cores it would take one. Why the first 37 of 50 new jobs' ingests among 1,000,000
        # resumes took about 20 ms more than the rest (05f2a7a's run) is not known.
        "autovacuum_seen_after": busy,
    }


def analyze_matches(factory: sessionmaker[Session]) -> None:
    """``ANALYZE`` ``matches`` and ``pair_scores``, as autoanalyze does in a serving database
    within a minute of rows arriving in a table it found empty. The bench empties them at
    each size's end (its ingested documents go, and their rows cascade), so once autovacuum
    has recorded them empty, the first ingest's connections plan the ``pair_scores`` foreign
    key's check (a plan each connection keeps) as a sequential scan of ``matches``: each
    ingest then scanned every row the ones before it wrote, once per pair score (58,057
    scans for 50 new resumes, 35 ms growing to 408; with this after the first, 36 ms
    throughout: a scratch run at 10,000 × 1,000; README "Matching at scale"). An
    ``ANALYZE`` invalidates those plans; the next ones see the rows."""
    autocommit(factory, "ANALYZE matches, pair_scores")


def warm_up(
    factory: sessionmaker[Session], ctx: ModelContext, queries: Sequence[DocumentVectors]
) -> float:
    """Run these queries (others than those measured) unmeasured; seconds. Without it the
    first setting measured was far slower than the next ones (a new job's index query among
    1,000,000 resumes: 491 ms at p95 reading the default 80 lists, then 63 ms reading 40 and
    93 ms reading 160), reading back what the minutes of the exhaustive reference had let go
    (an older design, whose 15 GB did not fit in shared buffers; the reference now comes
    after the measurements). The measured queries' own candidates are not warmed beyond
    what any query shares (the index's lists)."""
    t0 = time.perf_counter()
    for q in queries:
        query_top(factory, ctx, q, 10)
    return round(time.perf_counter() - t0, 1)


def query_figures(
    factory: sessionmaker[Session], ctx: ModelContext, queries: Sequence[DocumentVectors]
) -> tuple[dict[str, float], list[list[int]]]:
    """Latency of the queries' top 10 (index query, and with exact rescoring), and their top
    100s, whose recall ``recalls`` gives once the exhaustive reference is computed."""
    got, index_s, whole_s = [], [], []
    for q in queries:
        ids, a, b = query_top(factory, ctx, q, 100)
        got.append(ids)
        index_s.append(a)
        whole_s.append(b)
    figures = {
        "index_ms_p50": round(pct(index_s, 50), 1),
        "index_ms_p95": round(pct(index_s, 95), 1),
        "top10_ms_p50": round(pct(whole_s, 50), 1),
        "top10_ms_p95": round(pct(whole_s, 95), 1),
    }
    return figures, got


def recalls(got: Sequence[Sequence[int]], want: Sequence[Sequence[int]]) -> dict[str, float]:
    """The recall of ``got``'s top 10 and 100 against ``want`` (exhaustive)."""
    return {
        "recall_at_10": round(recall(got, want, 10), 4),
        "recall_at_100": round(recall(got, want, min(100, len(want[0]))), 4),
    }


def measure_size(
    factory: sessionmaker[Session],
    ctx: ModelContext,
    bases: Bases,
    *,
    size_no: int,
    n_resumes: int,
    n_jobs: int,
    console: Console,
) -> dict[str, Any]:
    """Queries and ingests first, then the exhaustive references their recall is measured
    against: computing those takes minutes of both cores at 1,000,000 resumes (numpy here),
    after which the job queries measured were slower than in a run without it (top-10 p95
    61.9 ms against 50.5 on the AVX2 EPYC; not explained). The ingests' slowdown then (a
    new resume's median 383 ms against 61, no block read from outside shared buffers) fits
    the plan ``analyze_matches`` is about, but was not re-examined (README "Matching at
    scale")."""
    out: dict[str, Any] = {"resumes": n_resumes, "jobs": n_jobs}
    answers: dict[str, tuple[list[DocumentVectors], dict[int | None, list[list[int]]]]] = {}
    setting, values = SWEEPS[ctx.scoring.index_method]
    for kind in ("resume", "job"):
        qs = synthetic(bases, kind, 0, QUERIES, salt=200 + size_no)
        warm_s = warm_up(factory, ctx, synthetic(bases, kind, 0, QUERIES, salt=300 + size_no))
        key = f"{kind}_queries"  # a new resume asks for jobs, a new job for resumes
        figures, got = query_figures(factory, ctx, qs)
        out[key] = {"queries": len(qs), "warm_up_s": warm_s} | figures
        answers[kind] = (qs, {None: got})
        out[key][f"by_{setting}"] = {}
        for value in values:
            if value != getattr(ctx.scoring, setting):
                narrow = ctx.scoring.model_copy(update={setting: value})
                figures, got = query_figures(
                    factory, bench_context(ctx.model_version_id, narrow), qs
                )
                out[key][f"by_{setting}"][value] = figures
                answers[kind][1][value] = got
    before = table_bytes(factory)
    for kind in ("resume", "job"):
        out[f"ingest_{kind}"] = ingest_new(
            factory, ctx, bases, kind=kind, size_no=size_no, n=NEW_DOCS
        )
        console.print(f"  ingest_{kind}: {out[f'ingest_{kind}']}")
    after = table_bytes(factory)
    # Gone again (their rows cascade): the next size's queries and recall see its corpus only.
    with factory.begin() as s:
        s.execute(text("DELETE FROM documents WHERE id >= :lo"), {"lo": NEW_IDS})
    for kind in ("resume", "job"):
        qs, got_by = answers[kind]
        other, other_total = ("job", n_jobs) if kind == "resume" else ("resume", n_resumes)
        want = exhaustive_top(ctx, bases=bases, queries=qs, kind=other, total=other_total, k=100)
        key = f"{kind}_queries"
        out[key] |= recalls(got_by[None], want)
        for swept, got in got_by.items():
            if swept is not None:
                out[key][f"by_{setting}"][swept] |= recalls(got, want)
        console.print(f"  {key}: {out[key]}")
    docs = n_resumes + n_jobs
    out["bytes_per_document"] = {
        t: round(before[t] / docs) for t in ("documents", "document_vectors")
    }
    out["bytes_per_ingested_document"] = {
        t: round((after[t] - before[t]) / (2 * NEW_DOCS)) for t in ("matches", "pair_scores")
    }
    return out


# --- the real dataset: top_k against all ------------------------------------------------


def real_recall(
    factory: sessionmaker[Session],
    model_version_id: int,
    resumes: list[DocumentVectors],
    jobs: list[DocumentVectors],
    pools: Sequence[int],
) -> dict[str, Any]:
    """recall@10 of ``top_k`` retrieval + exact rescoring against every pair scored (``all``)
    on the real dataset's documents, per candidate pool size, both directions."""
    ctx = bench_context(model_version_id, ScoringSettings(mode="top_k"))
    rids = [3_000_000_000 + k for k in range(len(resumes))]
    jids = [3_100_000_000 + k for k in range(len(jobs))]
    copy_documents(factory, ctx=ctx, kind="resume", start=0, docs=resumes, ids=rids)
    copy_documents(factory, ctx=ctx, kind="job", start=0, docs=jobs, ids=jids)
    build_indexes(factory, ctx)
    w = dict(ctx.weights)
    out: dict[str, Any] = {"resumes": len(resumes), "jobs": len(jobs)}
    for name, queries, others, other_ids in (
        ("resume_queries", resumes, jobs, jids),
        ("job_queries", jobs, resumes, rids),
    ):
        want = [
            [other_ids[b] for b in np.argsort(-exact_scores(q, others, w))[:10]] for q in queries
        ]
        out[name] = {}
        for pool in pools:
            pctx = bench_context(model_version_id, ScoringSettings(mode="top_k", candidates=pool))
            got = [query_top(factory, pctx, q, 10)[0] for q in queries]
            out[name][f"candidates_{pool}"] = round(recall(got, want, 10), 4)
    return out


def load_size(
    factory: sessionmaker[Session],
    ctx: ModelContext,
    *,
    bases: Bases,
    have: dict[str, int],
    n_resumes: int,
    n_jobs: int,
    console: Console,
) -> dict[str, Any]:
    """Grow the corpus to this size (``have``: how many of each kind are loaded), fit the
    bases a kind now has enough documents for, rebuild the indexes; the step's figures."""
    t0 = time.perf_counter()
    console.print(f"size {n_resumes:,} resumes × {n_jobs:,} jobs: loading …")
    if ctx.scoring.index_method == "hnsw":
        drop_indexes(factory, ctx)  # rebuilt after the load: no insert into the graph
    fitted: dict[str, float] = {}
    upkeep: dict[str, float] = {}
    for kind, total in (("resume", n_resumes), ("job", n_jobs)):
        fit_s, upkeep[kind] = load_kind(
            factory, ctx, bases=bases, kind=kind, have=have[kind], total=total
        )
        if fit_s is not None:
            fitted[kind] = fit_s
        have[kind] = total
    load_s = time.perf_counter() - t0 - sum(fitted.values()) - sum(upkeep.values())
    vacuum_s = vacuum(factory)
    build = build_indexes(factory, ctx)
    checkpoint_s = checkpoint(factory)
    warm_s = prewarm(factory)
    checkpointed = "refused" if checkpoint_s is None else f"{checkpoint_s:.1f} s"
    console.print(
        f"  loaded in {load_s:.0f} s, vacuumed in {vacuum_s:.0f} s, bases fitted {fitted},"
        f" indexes built in {build}, checkpoint {checkpointed},"
        f" prewarmed in {warm_s:.0f} s"
    )
    return {
        "load_s": round(load_s, 1),
        "vacuum_s": round(vacuum_s, 1),
        "checkpoint_s": None if checkpoint_s is None else round(checkpoint_s, 1),
        "basis_fit_s": fitted,
        "index_build_s": build,
        # IVFFlat: the seconds the load's writes spent keeping the index (rebuilds included)
        "index_upkeep_s": upkeep,
        "indexes": index_facts(factory, ctx),
        "prewarm_s": round(warm_s, 1),
    }


def autocommit(factory: sessionmaker[Session], statement: str) -> float:
    """Run a statement outside a transaction block (``VACUUM``, ``CHECKPOINT``); seconds."""
    engine = factory.kw["bind"]
    t0 = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(statement))
    return time.perf_counter() - t0


def vacuum(factory: sessionmaker[Session]) -> float:
    """``VACUUM (ANALYZE)`` the loaded tables, as autovacuum would after a bulk load before
    a database serves (during the load the index rebuilds' locks cancel its pass over
    ``document_vectors``: the server log of a run on d41a31f); seconds. It did not remove
    the tail of the ingest at 1,000,000 resumes (README "Matching at scale")."""
    return autocommit(factory, "VACUUM (ANALYZE) documents, document_vectors")


def checkpoint(factory: sessionmaker[Session]) -> float | None:
    """``CHECKPOINT`` after the load, as a serving database is not in the middle of writing
    out a bulk load; seconds. The load fills ``max_wal_size`` over and over, and the next
    few megabytes of WAL would start a checkpoint in the middle of the measurements, on two
    cores: in a scratch run at 1,000,000 resumes, two rounds of 50 new jobs' ingests took
    67.0 and 81.8 ms on average, and the server log has such a checkpoint (9,990 buffers)
    from about when the second began (by the run's timing) to when it ended. None: this
    role may not (a superuser, or ``pg_checkpoint`` from Postgres 15, may); the run goes on
    without it."""
    try:
        return autocommit(factory, "CHECKPOINT")
    except DBAPIError as e:
        if getattr(e.orig, "sqlstate", None) != "42501":  # insufficient_privilege
            raise
        return None


def autovacuum_busy(factory: sessionmaker[Session]) -> int:
    """1 if an autovacuum worker is at work now, else 0. (The checkpointer's own count,
    ``pg_stat_checkpointer``, was no use here: Postgres 18 reported a checkpoint's writes
    when it ended, so a spread checkpoint through a size's measurements counted 0.)"""
    with factory() as s:
        found = s.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
                " AND state IS DISTINCT FROM 'idle'"
            )
        )
        return 1 if int(found.scalar_one()) else 0


def shared_buffers(factory: sessionmaker[Session]) -> str:
    with factory() as s:
        return str(s.execute(text("SHOW shared_buffers")).scalar())


PREWARM_TABLES = ("documents", "document_vectors")


def prewarm(factory: sessionmaker[Session]) -> float:
    """Read ``document_vectors`` and ``documents`` (heaps, TOAST tables, indexes) into
    Postgres's shared buffers with ``pg_prewarm``, as a serving database has them; seconds.
    The queries and ingests then measure a database whose working set is in memory,
    whatever the load and the build left there (what is not in shared buffers is read
    through the kernel's page cache, which this machine pages out after a minute unused:
    ``tools.postgres.settings``). ``documents`` belongs to it: every match row an ingest
    writes checks both its documents' rows (the foreign keys)."""
    t0 = time.perf_counter()
    with factory.begin() as s:
        s.execute(text("CREATE EXTENSION IF NOT EXISTS pg_prewarm"))
        s.execute(
            text(
                "WITH t AS (SELECT oid AS rel, reltoastrelid AS toast FROM pg_class"
                "  WHERE oid = ANY(CAST(:tables AS regclass[])))"
                ", r AS (SELECT rel FROM t UNION SELECT toast FROM t WHERE toast <> 0)"
                " SELECT pg_prewarm(x) FROM (SELECT rel AS x FROM r"
                " UNION SELECT indexrelid FROM pg_index WHERE indrelid IN (SELECT rel FROM r)) y"
            ),
            {"tables": list(PREWARM_TABLES)},
        )
    return time.perf_counter() - t0


MISS_TABLES = ("documents", "document_vectors", "matches", "pair_scores")


def blocks_read(factory: sessionmaker[Session]) -> dict[str, int]:
    """Blocks each of ``MISS_TABLES`` (heap, indexes, TOAST) has read into shared buffers
    since the server started: its misses, served by the page cache or the disk. Counts
    reach these views when a backend flushes them (``pg_stat_force_next_flush``, or its
    exit)."""
    with factory() as s:
        rows = s.execute(
            text(
                "SELECT relname, coalesce(heap_blks_read, 0) + coalesce(idx_blks_read, 0)"
                " + coalesce(toast_blks_read, 0) + coalesce(tidx_blks_read, 0)"
                " FROM pg_statio_user_tables WHERE relname = ANY(:t)"
            ),
            {"t": list(MISS_TABLES)},
        ).all()
    return {str(name): int(n) for name, n in rows}


def bench_context(model_version_id: int, scoring: ScoringSettings) -> ModelContext:
    return ModelContext(NoModel(), model_version_id, dict.fromkeys(PairType, 1.0), scoring)


# --- the run ---------------------------------------------------------------------------


def fresh_database(settings: Settings) -> tuple[Settings, Callable[[], None]]:
    db_url = make_url(settings.db.url).set(database=f"jobfit_scale_{uuid.uuid4().hex[:8]}")
    s = settings.model_copy(deep=True)
    s.db.url = db_url.render_as_string(hide_password=False)
    ensure_database(s.db.url)
    upgrade(s)
    admin = create_engine(db_url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        quoted = conn.dialect.identifier_preparer.quote(str(db_url.database))
        conn.execute(text(f"ALTER DATABASE {quoted} SET synchronous_commit = off"))
    admin.dispose()

    def drop() -> None:
        from tools.postgres import drop_database

        drop_database(
            db_url.set(database="postgres").render_as_string(hide_password=False),
            str(db_url.database),
        )

    return s, drop


def run(
    settings: Settings,
    model_path: Path,
    dataset: Path,
    console: Console,
    *,
    quick: bool = False,
    budget_s: float = 1800.0,
    keep: bool = False,
    noise: str = "real",
    index_method: str = "ivfflat",
    sizes: Sequence[tuple[int, int]] | None = None,
    graph: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The bench (module docstring): ``sizes`` (resumes, jobs) instead of ``FULL_SIZES``
    (``QUICK_SIZES`` with ``quick``); ``graph``: ``hnsw_m`` and ``hnsw_ef_construction``
    instead of the settings' (with ``index_method`` hnsw)."""
    from sentence_transformers import SentenceTransformer

    from tools.bench import cpu_model

    t_start = time.perf_counter()
    model = SentenceTransformer(str(model_path), device="cpu", local_files_only=True)
    bases, real_resumes, real_jobs = real_bases(model, dataset, noise)
    s, drop = fresh_database(settings)
    engine = create_engine(s.db.url, pool_size=2)
    factory = make_session_factory(engine)
    report: dict[str, Any] = {
        "noise": {"model": noise, "norm": NOISE},
        "dim": DIM,
        "cpu": cpu_model(),
        "shared_buffers": shared_buffers(factory),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "sizes": [],
    }
    try:
        with factory.begin() as session:
            v = repo.ensure_model_version(
                session=session, model=repo.ModelInfo(NoModel.version, "minilm-scale", "-", DIM)
            ).id
            real_v = repo.insert_model_version(
                session=session,
                model=repo.ModelInfo("minilm-real@bench", "minilm-real", "-", DIM),
                status=repo.ModelStatus.REGISTERED,
            ).id
        scoring = ScoringSettings(mode="top_k", index_method=index_method, **(graph or {}))
        ctx = bench_context(v, scoring)
        report["settings"] = ctx.scoring.model_dump()
        report["reference_max_abs_diff"] = check_reference(ctx, bases)
        report["real_dataset"] = real_recall(
            factory, real_v, real_resumes, real_jobs, (10, 20, 50, 100, 200)
        )
        console.print(f"real dataset: {report['real_dataset']}")
        have = {"resume": 0, "job": 0}
        last_step_s = 0.0
        steps = sizes if sizes is not None else (QUICK_SIZES if quick else FULL_SIZES)
        for size_no, (n_resumes, n_jobs) in enumerate(steps):
            elapsed = time.perf_counter() - t_start
            growth = (n_resumes + n_jobs) / max(1, have["resume"] + have["job"])
            if last_step_s and elapsed + last_step_s * growth > budget_s:
                report["stopped_before"] = {
                    "resumes": n_resumes,
                    "jobs": n_jobs,
                    "why": f"estimated {last_step_s * growth:.0f} s more would pass the"
                    f" {budget_s:.0f} s budget after {elapsed:.0f} s",
                }
                break
            t0 = time.perf_counter()
            entry = load_size(
                factory,
                ctx,
                bases=bases,
                have=have,
                n_resumes=n_resumes,
                n_jobs=n_jobs,
                console=console,
            )
            entry |= measure_size(
                factory,
                ctx,
                bases,
                size_no=size_no,
                n_resumes=n_resumes,
                n_jobs=n_jobs,
                console=console,
            )
            last_step_s = time.perf_counter() - t0
            entry["step_s"] = round(last_step_s, 1)
            report["sizes"].append(entry)
        report["total_s"] = round(time.perf_counter() - t_start, 1)
        report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        report["goals"] = goals(report)
    finally:
        engine.dispose()
        if not keep:
            drop()
    return report


def parse_sizes(spec: str) -> tuple[tuple[int, int], ...]:
    """``RESUMESxJOBS`` pairs, comma-separated (``100000x10000,1000000x100000``), each step
    larger than the one before (a step adds to the corpus before it)."""
    out: list[tuple[int, int]] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        m = re.fullmatch(r"(\d+)x(\d+)", part.replace("_", ""))
        if m is None:
            raise ValueError(f"a size is RESUMESxJOBS (e.g. 100000x10000), not {part!r}")
        size = (int(m[1]), int(m[2]))
        prev = out[-1] if out else (0, 0)
        if min(size) < 1 or size[0] < prev[0] or size[1] < prev[1] or size == prev:
            raise ValueError(f"sizes must be positive and grow, neither kind shrinking: {spec!r}")
        out.append(size)
    if not out:
        raise ValueError("no size given")
    return tuple(out)


def goals(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals, judged on this run."""
    sizes = report["sizes"]
    if not sizes:
        return {}
    first, last = sizes[0], sizes[-1]

    def flat(key: str, field: str) -> float:
        values = [float(s[key][field]) for s in sizes]
        return round(max(values) / min(values), 3)

    return {
        "ingest_time_max_over_min": {
            k: flat(f"ingest_{k}", "s_per_doc_mean") for k in ("resume", "job")
        },
        "ingest_rows_max_over_min": {
            k: flat(f"ingest_{k}", "rows_per_doc_mean") for k in ("resume", "job")
        },
        "recall_at_10_min": min(
            s[q]["recall_at_10"] for s in sizes for q in ("resume_queries", "job_queries")
        ),
        "top10_ms_p95_at_largest": {
            q: last[q]["top10_ms_p95"] for q in ("resume_queries", "job_queries")
        },
        "largest": {"resumes": last["resumes"], "jobs": last["jobs"]},
        "smallest": {"resumes": first["resumes"], "jobs": first["jobs"]},
    }

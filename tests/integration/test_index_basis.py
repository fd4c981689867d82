"""The index basis's lifecycle on real Postgres with pgvector (``workers.index_basis``): no
basis below ``index_fit_at`` (every document ranked), then one fit that projects every stored vector
and builds the entry index, writes projected from then on, a fit that waits for a write that
did not project, and an IVFFlat index rebuilt with more lists as its kind grows."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from sqlalchemy import func, select, text

from jobfit.shared import repository as repo
from jobfit.shared.client import read_documents
from jobfit.shared.config import PairType, ScoringSettings
from jobfit.shared.fields import field_texts
from jobfit.shared.orm import DocumentVectorRow
from jobfit.shared.sample import SAMPLE_DIR
from jobfit.shared.schemas import JobDocument, ResumeDocument
from jobfit.workers import index_basis
from jobfit.workers.embedding import ModelContext, store_vectors
from jobfit.workers.matching import nearest
from jobfit.workers.vectors import DocumentVectors, score
from tools.faults import stream_documents
from tools.scale import NoModel

pytestmark = pytest.mark.integration


def version(session_factory, tag: str, scoring: ScoringSettings) -> ModelContext:
    with session_factory.begin() as s:
        row = repo.ensure_model_version(
            session=s, model=repo.ModelInfo(f"{NoModel.version}-{tag}", "minilm", "-", 384)
        )
    return ModelContext(NoModel(), row.id, dict.fromkeys(PairType, 1.0), scoring)


def unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(384).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture()
def corpus(session_factory, clean_db):
    """The sample's jobs and resumes and the fault harness's resume variants, stored, with
    random field vectors for the fields each has (no model: the index sees only vectors):
    (resume rows, job rows, their vectors)."""
    resumes = [
        ResumeDocument.model_validate(d) for d in read_documents(SAMPLE_DIR / "resumes.jsonl")
    ]
    variants = [ResumeDocument.model_validate(d) for d in stream_documents(80)[0]]
    jobs = [JobDocument.model_validate(d) for d in read_documents(SAMPLE_DIR / "jobs.jsonl")]
    rows, vecs = with_vectors(session_factory, [*jobs, *resumes, *variants], seed=7)
    return [r for r in rows if r.kind == "resume"], [r for r in rows if r.kind == "job"], vecs


def with_vectors(session_factory, docs: list, *, seed: int) -> tuple[list, dict]:
    """``docs`` stored: (their rows, random field vectors for the fields each has)."""
    rng = np.random.default_rng(seed)
    with session_factory.begin() as s:
        rows = [row for row, _ in repo.upsert_documents(session=s, docs=docs)]
    vecs = {
        row.id: DocumentVectors.from_pairs(row.kind, {p: unit(rng) for p in field_texts(doc)})
        for row, doc in zip(rows, docs, strict=True)
    }
    return rows, vecs


def entries(session_factory, ctx: ModelContext, kind: str) -> tuple[int, int]:
    """(stored vectors, of them with an index entry) of the (version, kind)."""
    dv = DocumentVectorRow
    with session_factory() as s:
        return s.execute(
            select(func.count(), func.count(dv.index_entry)).where(
                dv.model_version_id == ctx.model_version_id, dv.kind == kind
            )
        ).one()


def index_exists(session_factory, ctx: ModelContext, kind: str) -> bool:
    with session_factory() as s:
        return repo.index_exists(session=s, model_version_id=ctx.model_version_id, kind=kind)


def entry_indexes(session_factory, ctx: ModelContext) -> list[tuple[str, str]]:
    """(name, access method) of every index on the version's resume entries."""
    base = repo.index_name(ctx.model_version_id, "resume")
    with session_factory() as s:
        rows = s.execute(
            text(
                "SELECT c.relname, a.amname FROM pg_class c JOIN pg_am a ON a.oid = c.relam"
                " WHERE c.relkind = 'i' AND starts_with(c.relname, :b) ORDER BY 1"
            ),
            {"b": base},
        ).all()
    return [(name, method) for name, method in rows]


def test_fitted_at_the_threshold_then_every_write_projected(session_factory, corpus) -> None:
    resumes, jobs, vecs = corpus
    n = len(resumes)
    # Fitted on all of them at once (the batch that reaches the threshold is the last), on as
    # many directions as there are vectors: the projection is exact, so the index's answers
    # are the exact ones up to halfvec rounding.
    fit_at = (n - 1) // 8 * 8 + 1  # reached by the last batch of 8, whatever n
    ctx = version(session_factory, "fit", ScoringSettings(index_fit_at=fit_at, index_dims=n))
    for i in range(0, n, 8):
        with session_factory.begin() as s:
            store_vectors(session=s, ctx=ctx, rows=resumes[i : i + 8], vectors=vecs)
        stored, projected = entries(session_factory, ctx, "resume")
        if stored < fit_at:
            assert projected == 0
            assert not index_exists(session_factory, ctx, "resume")
        else:  # the commit that reached the threshold fitted the basis
            assert projected == stored
            assert index_exists(session_factory, ctx, "resume")
    with session_factory() as s:
        stored_basis = repo.get_basis(
            session=s, model_version_id=ctx.model_version_id, kind="resume"
        )
    assert stored_basis is not None
    assert (stored_basis.source_dims, stored_basis.fitted_on) == (ctx.retrieval_dims, n)
    # A document changed after the fit: its new vectors are written with their entry.
    with session_factory.begin() as s:
        store_vectors(
            session=s, ctx=ctx, rows=resumes[:1], vectors={resumes[0].id: vecs[resumes[1].id]}
        )
    assert entries(session_factory, ctx, "resume") == (n, n)
    vecs = vecs | {resumes[0].id: vecs[resumes[1].id]}
    full = np.stack([ctx.retrieval_vector(vecs[r.id]) for r in resumes]).astype(np.float64)
    pool = 10 * ctx.scoring.index_oversample
    with session_factory.begin() as s:
        for job in jobs:
            found = nearest(session=s, ctx=ctx, doc=vecs[job.id], limit=10)
            assert len(found) == 10
            # ranked by the exact score, which their stored vectors give
            exact = {r.id: score(vecs[r.id], vecs[job.id], ctx.weights).score for r in resumes}
            for i, m in found:
                assert m.score == pytest.approx(exact[i], abs=1e-5)
            assert [m.score for _, m in found] == sorted((m.score for _, m in found), reverse=True)
            # of the pool: the entries nearest the query (the projection is exact here; the
            # index reads every list of so small a kind), up to halfvec rounding at its edge
            ip = dict(
                zip((r.id for r in resumes), full @ ctx.query_vector(vecs[job.id]), strict=True)
            )
            cut = sorted(ip.values(), reverse=True)[pool - 1]
            assert all(ip[i] >= cut - 1e-2 for i, _ in found), job.external_id
            sure = sorted(
                (x for i, x in exact.items() if x is not None and ip[i] >= cut + 1e-2),
                reverse=True,
            )
            if len(sure) >= 10:
                assert found[-1][1].score >= sure[9] - 1e-9, (job.external_id, found[-1], sure[9])


def waiting_for_advisory_lock(session_factory) -> int:
    with session_factory() as s:
        return s.execute(
            text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        ).scalar_one()


def test_the_fit_waits_for_a_write_that_did_not_project(
    session_factory, corpus, monkeypatch
) -> None:
    resumes, _, vecs = corpus
    ctx = version(session_factory, "lock", ScoringSettings(index_fit_at=10))
    # Writers do not fit here (their after-commit fit would project everything anyway): the
    # fit below is the only one, so what it projects shows what it waited for.
    monkeypatch.setattr(index_basis, "_run_due", lambda session: None)
    with session_factory.begin() as s:
        store_vectors(session=s, ctx=ctx, rows=resumes[:12], vectors=vecs)
    fitted: list[bool] = []
    fitter = threading.Thread(
        target=lambda: fitted.append(
            index_basis.fit(
                engine=session_factory.kw["bind"],
                model_version_id=ctx.model_version_id,
                kind="resume",
                scoring=ctx.scoring,
                weights=ctx.weights,
            )
        )
    )
    with session_factory() as writer:
        writer.begin()
        # no basis: this transaction holds the kind's lock shared until it ends
        store_vectors(session=writer, ctx=ctx, rows=resumes[12:20], vectors=vecs)
        fitter.start()
        deadline = time.monotonic() + 30
        while not waiting_for_advisory_lock(session_factory):
            assert fitter.is_alive() and time.monotonic() < deadline, "the fit did not wait"
            time.sleep(0.05)
        writer.commit()
    fitter.join(timeout=60)
    assert fitted == [True]
    # the 8 rows committed while it waited are projected too
    assert entries(session_factory, ctx, "resume") == (20, 20)
    assert index_exists(session_factory, ctx, "resume")
    with session_factory() as s:
        basis = repo.get_basis(session=s, model_version_id=ctx.model_version_id, kind="resume")
    assert basis is not None
    assert basis.fitted_on == 20


def test_a_missing_index_is_built_and_a_wrong_width_refused(session_factory, corpus) -> None:
    resumes, _, vecs = corpus
    ctx = version(session_factory, "rebuild", ScoringSettings(index_fit_at=10))
    with session_factory.begin() as s:
        store_vectors(session=s, ctx=ctx, rows=resumes[:12], vectors=vecs)
    assert index_exists(session_factory, ctx, "resume")
    # as if the fit had stopped between its two transactions
    ((name, _),) = entry_indexes(session_factory, ctx)
    with session_factory.begin() as s:
        s.execute(text(f"DROP INDEX {name}"))
    index_basis._INDEXED.clear()
    with session_factory.begin() as s:
        store_vectors(session=s, ctx=ctx, rows=resumes[12:13], vectors=vecs)
    assert index_exists(session_factory, ctx, "resume")
    # a caller that states another width (a worker from before migration 0007) is refused
    for call in (
        "jobfit_ensure_hnsw_index(:v, 'resume', :d, 16, 64)",
        "jobfit_ensure_ivfflat_index(:v, 'resume', :d, 4)",
    ):
        with pytest.raises(Exception, match="no index basis"), session_factory.begin() as s:
            s.execute(text(f"SELECT {call}"), {"v": ctx.model_version_id, "d": ctx.retrieval_dims})


def test_an_ivfflat_index_is_rebuilt_with_more_lists_as_its_kind_grows(
    session_factory, corpus, monkeypatch
) -> None:
    resumes, jobs, vecs = corpus
    monkeypatch.setattr(index_basis, "IVF_CHECK_S", 0.0)  # look after every commit
    monkeypatch.setattr(index_basis, "IVF_MIN_ENTRIES", 1)  # read the lists asked, not all
    ctx = version(session_factory, "ivf", ScoringSettings(index_fit_at=4, ivf_probes=3))
    seen: list[tuple[int, list[tuple[str, str]]]] = []
    for i in range(0, len(resumes), 4):
        with session_factory.begin() as s:
            store_vectors(session=s, ctx=ctx, rows=resumes[i : i + 4], vectors=vecs)
        stored, _ = entries(session_factory, ctx, "resume")
        seen.append((stored, entry_indexes(session_factory, ctx)))
    base = repo.index_name(ctx.model_version_id, "resume")
    lists_at = {n: [int(name.rsplit("_l", 1)[1]) for name, _ in idx] for n, idx in seen}
    for n, idx in seen:
        # one index at a time (the rebuild drops the old one in its transaction), IVFFlat
        assert len(idx) == (0 if n < 4 else 1), (n, idx)
        assert all(m == "ivfflat" and name.startswith(f"{base}_l") for name, m in idx)
    built = [lists_at[n][0] for n, idx in seen if idx]
    # built with ceil(2 sqrt(n)) lists at 4 entries, then twice as many each time the kind
    # has grown fourfold since (checked after every commit here)
    assert built[0] == index_basis.ivf_lists(4)
    distinct = list(dict.fromkeys(built))
    assert distinct == sorted(distinct) and len(distinct) >= 3, built
    for n, (lists,) in ((n, v) for n, v in lists_at.items() if v):
        assert index_basis.ivf_lists(n) < 2 * lists, (n, lists)
    # queries read 3 of its lists (the projection on 4 directions decides the pool: the
    # answers are approximate; test_fitted_at_the_threshold_then_every_write_projected checks
    # them where the projection is exact)
    ids = {r.id for r in resumes}
    with session_factory.begin() as s:
        assert index_basis.probes(
            session=s, model_version_id=ctx.model_version_id, kind="resume", scoring=ctx.scoring
        ) == min(3, lists_at[seen[-1][0]][0])
        for job in jobs:
            found = {i for i, _ in nearest(session=s, ctx=ctx, doc=vecs[job.id], limit=10)}
            assert len(found) == 10 and found <= ids


def test_a_replaced_index_waits_for_a_long_reader_and_goes_at_a_later_look(
    session_factory, corpus, monkeypatch, caplog
) -> None:
    """The rebuild's build shares the table with readers; dropping the index it replaced
    waits for them (a lock every reader blocks), so it gives up after ``DROP_LOCK_TIMEOUT``
    and the next look drops it: writes and queries go on meanwhile."""
    resumes, jobs, vecs = corpus
    monkeypatch.setattr(index_basis, "IVF_CHECK_S", 0.0)
    monkeypatch.setattr(index_basis, "DROP_LOCK_TIMEOUT", "200ms")
    ctx = version(session_factory, "drop", ScoringSettings(index_fit_at=4))
    with session_factory.begin() as s:
        store_vectors(session=s, ctx=ctx, rows=resumes[:4], vectors=vecs)
    assert [n for n, _ in entry_indexes(session_factory, ctx)][-1].endswith("_l4")
    reader = session_factory()
    try:
        reader.execute(select(func.count()).select_from(DocumentVectorRow)).scalar_one()
        with session_factory.begin() as s:  # 16 entries: rebuilt with 8 lists
            store_vectors(session=s, ctx=ctx, rows=resumes[4:16], vectors=vecs)
        names = [n for n, _ in entry_indexes(session_factory, ctx)]
        assert [n.rsplit("_l", 1)[1] for n in names] == ["4", "8"], names
        assert "could not drop the replaced indexes" in caplog.text
        with session_factory.begin() as s:  # the new index serves meanwhile
            serving = repo.entry_index(
                session=s, model_version_id=ctx.model_version_id, kind="resume"
            )
            assert serving is not None and serving.lists == 8
            assert len(nearest(session=s, ctx=ctx, doc=vecs[jobs[0].id], limit=10)) == 10
    finally:
        reader.close()
    with session_factory.begin() as s:  # the next look drops it
        store_vectors(session=s, ctx=ctx, rows=resumes[16:17], vectors=vecs)
    assert [n.rsplit("_l", 1)[1] for n, _ in entry_indexes(session_factory, ctx)] == ["8"]


def test_an_ivfflat_build_gets_the_memory_its_lists_need(session_factory, clean_db) -> None:
    """pgvector refuses an IVFFlat build whose k-means needs more than maintenance_work_mem
    (at the 64 MB default, the rebuild to 800 lists at about 160,000 entries): the build
    raises it for its call, and the caller's setting is back after it."""
    docs = [ResumeDocument.model_validate(d) for d in stream_documents(1000)[0]]
    rows, vecs = with_vectors(session_factory, docs, seed=11)
    ctx = version(session_factory, "memory", ScoringSettings(index_fit_at=10))
    with session_factory.begin() as s:
        store_vectors(session=s, ctx=ctx, rows=rows, vectors=vecs)
    with session_factory() as s:
        stored = repo.get_basis(session=s, model_version_id=ctx.model_version_id, kind="resume")
    assert stored is not None
    width = stored.dims + 1
    # Twice the lists of the fit's index (else the function keeps that one) and fewer than the
    # entries (else pgvector takes entries as centres: no k-means); its samples' room (50 a
    # list) and k-means bounds (4 bytes per sample and list) pass the 1 MB set below.
    lists = 300
    assert lists >= 2 * index_basis.ivf_lists(len(rows)) and 4 * len(rows) * lists > 2**20
    call = "SELECT jobfit_ensure_ivfflat_index(:v, 'resume', :d, :l)"
    with pytest.raises(Exception, match="memory required"), session_factory.begin() as s:
        s.execute(text("SET LOCAL maintenance_work_mem = '1MB'"))
        s.execute(text(call), {"v": ctx.model_version_id, "d": width, "l": lists})
    with session_factory.begin() as s:
        s.execute(text("SET LOCAL maintenance_work_mem = '1MB'"))
        assert repo.ensure_ivfflat_index(
            session=s, model_version_id=ctx.model_version_id, kind="resume", dims=width, lists=lists
        )
        assert s.execute(text("SHOW maintenance_work_mem")).scalar_one() == "1MB"
    # a refused call surfaces its own error (its transaction's rollback undoes the setting)
    with pytest.raises(Exception, match="no index basis"), session_factory.begin() as s:
        s.execute(text("SET LOCAL maintenance_work_mem = '1MB'"))
        repo.ensure_ivfflat_index(
            session=s,
            model_version_id=ctx.model_version_id,
            kind="resume",
            dims=width + 1,
            lists=2 * lists,
        )
    base = repo.index_name(ctx.model_version_id, "resume")
    assert (f"{base}_l{lists}", "ivfflat") in entry_indexes(session_factory, ctx)

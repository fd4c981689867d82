"""``top_k`` scoring on real Postgres with pgvector (IVFFlat), the real sample's documents and the
MiniLM model, through the service functions (no Celery: tests/integration/test_pipeline.py
runs the same through a worker). Each stored top K is compared with exhaustive exact scoring
of every pair, computed here from the same vectors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from sqlalchemy import delete, select

from jobfit.shared import repository as repo
from jobfit.shared.client import read_documents
from jobfit.shared.config import PairType, ScoringSettings
from jobfit.shared.orm import DocumentVectorRow, MatchRow
from jobfit.shared.sample import SAMPLE_DIR
from jobfit.shared.schemas import JobDocument, ResumeDocument
from jobfit.workers import matching, service
from jobfit.workers.embedding import ModelContext, document_vectors
from jobfit.workers.vectors import score

pytestmark = pytest.mark.integration

K = 5
# Fewer candidates than documents on either side: retrieval really chooses.
TOP_K = ScoringSettings(mode="top_k", top_k=K, candidates=4 * K, ef_search=40)


class MiniLM:
    """The real small model behind the embedder interface."""

    def __init__(self, model, version: str = "minilm@top-k-test") -> None:
        self.model, self.version, self.dim = model, version, 384

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.asarray(
            self.model.encode(texts, normalize_embeddings=True, batch_size=32), dtype=np.float32
        )


def context(session_factory, embedder) -> ModelContext:
    with session_factory.begin() as s:
        row = repo.ensure_model_version(
            session=s, model=repo.ModelInfo(embedder.version, "minilm", "-", embedder.dim)
        )
    return ModelContext(embedder, row.id, dict.fromkeys(PairType, 1.0), TOP_K)


@pytest.fixture()
def ctx(session_factory, clean_db, minilm) -> ModelContext:
    return context(session_factory, MiniLM(minilm))


@pytest.fixture()
def sample() -> tuple[list[ResumeDocument], list[JobDocument]]:
    resumes = [
        ResumeDocument.model_validate(d) for d in read_documents(SAMPLE_DIR / "resumes.jsonl")
    ]
    jobs = [JobDocument.model_validate(d) for d in read_documents(SAMPLE_DIR / "jobs.jsonl")]
    return resumes, jobs


def ingest(session_factory, ctx: ModelContext, docs: Sequence[ResumeDocument | JobDocument]):
    """As the ingest task does: store and embed, then score in a second transaction."""
    service.ingest_batch(factory=session_factory, ctx=ctx, docs=[(d, True) for d in docs])


def exhaustive(session_factory, ctx: ModelContext) -> dict[tuple[str, str], float]:
    """Every (resume, job)'s exact score, from the stored documents' vectors."""
    with session_factory.begin() as s:
        resumes = repo.list_documents(session=s, kind="resume")
        jobs = repo.list_documents(session=s, kind="job")
        vecs, _ = document_vectors(session=s, ctx=ctx, rows=[*resumes, *jobs])
    out = {}
    for r in resumes:
        for j in jobs:
            m = score(vecs[r.id], vecs[j.id], ctx.weights)
            if m.score is not None:  # no pair in common: never ranked
                out[(r.external_id, j.external_id)] = m.score
    return out


def best(
    scores: dict[tuple[str, str], float], *, resume: str | None = None, job: str | None = None
):
    """The exhaustive top-K scores of one document (scores, not ids: ties may swap ids)."""
    mine = [s for (r, j), s in scores.items() if resume in (None, r) and job in (None, j)]
    return sorted(mine, reverse=True)[:K]


def stored_top(session_factory, *, resume: str | None = None, job: str | None = None):
    with session_factory() as s:
        rows = repo.ranked(session=s, resume_id=resume, job_id=job, top=K)
    return [m.score for m in rows]


def test_stored_top_k_equals_the_exhaustive_top_k_on_the_sample(session_factory, ctx, sample):
    """Each resume's top K is exact (its own retrieval over the stored jobs), and so is each
    job's once it has run its own (a job ingested again, as a rebuild does)."""
    resumes, jobs = sample
    ingest(session_factory, ctx, jobs)
    ingest(session_factory, ctx, resumes)
    scores = exhaustive(session_factory, ctx)
    for r in resumes:
        assert stored_top(session_factory, resume=r.id) == pytest.approx(
            best(scores, resume=r.id), abs=1e-6
        ), r.id
    with session_factory.begin() as s:
        rows = repo.list_documents(session=s, kind="job")
        matching.match_top_k(session=s, ctx=ctx, rows=rows)
    for j in jobs:
        assert stored_top(session_factory, job=j.id) == pytest.approx(
            best(scores, job=j.id), abs=1e-6
        ), j.id
    with session_factory() as s:
        n = len(s.execute(select(MatchRow.id)).all())
    assert n < len(resumes) * len(jobs), "not every pair is stored"


def test_a_new_job_enters_the_top_k_of_the_resumes_it_beats(session_factory, ctx, sample):
    """Of the resumes the new job's own query reaches (here a pool as large as the sample: a
    job reaches the resumes it ranks among its ``candidates`` best, README "Matching at
    scale"), each one it beats gets it in its stored top K, and only those."""
    resumes, jobs = sample
    ctx = ModelContext(
        ctx.embedder,
        ctx.model_version_id,
        ctx.weights,
        TOP_K.model_copy(update={"candidates": len(resumes)}),
    )
    ingest(session_factory, ctx, [*jobs, *resumes])
    # A job written from a resume's own fields: the best job that resume can have.
    r = resumes[0]
    twin = JobDocument(
        id="job-twin",
        title=r.positions[0] if r.positions else "Engineer",
        skills_required=r.skills,
        responsibilities=r.skills,
    )
    ingest(session_factory, ctx, [twin])
    scores = exhaustive(session_factory, ctx)
    beaten = [x.id for x in resumes if best(scores, resume=x.id)[-1] < scores[(x.id, twin.id)]]
    assert r.id in beaten
    for rid in beaten:
        with session_factory() as s:
            top = [m.job_id for m in repo.ranked(session=s, resume_id=rid, top=K)]
        assert twin.id in top, rid
        assert stored_top(session_factory, resume=rid) == pytest.approx(
            best(scores, resume=rid), abs=1e-6
        )
    for x in resumes:
        if x.id not in beaten:
            with session_factory() as s:
                top = [m.job_id for m in repo.ranked(session=s, resume_id=x.id, top=K)]
            assert twin.id not in top, x.id


def test_a_changed_document_is_reranked_and_leaves_nothing_stale(session_factory, ctx, sample):
    resumes, jobs = sample
    ingest(session_factory, ctx, [*jobs, *resumes])
    target = jobs[-1]
    before = resumes[0]
    after = before.model_copy(
        update={
            "skills": [*(target.skills_required or []), *(target.responsibilities or [])],
            "positions": [target.title or "Engineer"],
        }
    )
    ingest(session_factory, ctx, [after])
    scores = exhaustive(session_factory, ctx)
    with session_factory() as s:
        top = repo.ranked(session=s, resume_id=after.id, top=K)
        row = repo.get_document(session=s, kind="resume", external_id=after.id)
        assert row is not None
        hashes = set(
            s.execute(select(MatchRow.resume_hash).where(MatchRow.resume_id == row.id)).scalars()
        )
        vec_hash = s.execute(
            select(DocumentVectorRow.content_hash).where(DocumentVectorRow.document_id == row.id)
        ).scalar_one()
    assert top[0].job_id == target.id
    assert [m.score for m in top] == pytest.approx(best(scores, resume=after.id), abs=1e-6)
    assert hashes == {row.content_hash} == {vec_hash}, "every row of it scored on the new content"


def test_a_match_made_on_stale_vectors_says_so_and_is_rescored_at_that_documents_turn(
    session_factory, ctx, sample
):
    """A candidate's row records the content its stored vectors were made from. Here a
    resume's worst job holds its best job's vectors under an old content hash (as a new
    version's vectors can while a rebuild has not reached the job), so it ranks first and
    its row says it was scored on the old content, even where another resume of the same
    batch rescores its own stale row with that job on the job's current content; the job's
    own turn (its ingest, or the rebuild's) makes its vectors again and rescores that row
    exactly."""
    resumes, jobs = sample
    ctx = ModelContext(
        ctx.embedder, ctx.model_version_id, ctx.weights, TOP_K.model_copy(update={"candidates": K})
    )
    ingest(session_factory, ctx, [*jobs, *resumes])
    scores = exhaustive(session_factory, ctx)
    last = resumes[-1]
    ranked = sorted((sc, j) for (r, j), sc in scores.items() if r == last.id)
    (_, worst), (_, top) = ranked[0], ranked[-1]

    def place(resume: str, job: str) -> int:
        return sorted((-sc, j) for (r, j), sc in scores.items() if r == resume).index(
            (-scores[(resume, job)], job)
        )

    # Another resume, for which the stale vectors (the top job's) are far from its candidates,
    # with a stale row of its own with the worst job: its turn rescores that pair.
    other = next(r for r in resumes[:-1] if place(r.id, top) > 3 * K)
    vectors = DocumentVectorRow.__table__
    with session_factory.begin() as s:
        ids = {
            d.external_id: (d.id, d.content_hash)
            for d in repo.list_documents(session=s, kind="job")
        }
        (row,) = repo.list_documents(session=s, kind="resume", external_ids=[last.id])
        (other_row,) = repo.list_documents(session=s, kind="resume", external_ids=[other.id])
        s.execute(delete(MatchRow).where(MatchRow.resume_id == row.id))
        repo.upsert_matches(
            session=s,
            model_version_id=ctx.model_version_id,
            key=ctx.scoring_key,
            writes=[
                repo.MatchWrite(other_row.id, ids[worst][0], 0.0, {}, "changed", ids[worst][1])
            ],
        )
        slots, fields = s.execute(
            select(vectors.c.slots, vectors.c.fields).where(vectors.c.document_id == ids[top][0])
        ).one()
        s.execute(
            vectors.update()
            .where(vectors.c.document_id == ids[worst][0])
            .values(content_hash="old content", slots=slots, fields=fields)
        )

    def worst_row() -> tuple[float, str]:
        with session_factory() as s:
            return s.execute(
                select(MatchRow.score, MatchRow.job_hash).where(
                    MatchRow.job_id == ids[worst][0], MatchRow.resume_id == row.id
                )
            ).one()

    with session_factory.begin() as s:
        (row,) = repo.list_documents(session=s, kind="resume", external_ids=[last.id])
        (other_row,) = repo.list_documents(session=s, kind="resume", external_ids=[other.id])
        matching.match_top_k(session=s, ctx=ctx, rows=[row, other_row])
    with session_factory() as s:
        stored = {m.job_id: m.score for m in repo.ranked(session=s, resume_id=last.id, top=K)}
        rescored = s.execute(
            select(MatchRow.score, MatchRow.resume_hash, MatchRow.job_hash).where(
                MatchRow.job_id == ids[worst][0], MatchRow.resume_id == other_row.id
            )
        ).one()
    assert worst in stored, "its stale vectors rank it first"
    assert worst_row() == (pytest.approx(scores[(last.id, top)], abs=1e-6), "old content")
    assert rescored == (
        pytest.approx(scores[(other.id, worst)], abs=1e-6),
        other_row.content_hash,
        ids[worst][1],
    )
    for j, sc in stored.items():
        if j != worst:
            assert sc == pytest.approx(scores[(last.id, j)], abs=1e-6), j
    with session_factory.begin() as s:
        jobs_rows = repo.list_documents(session=s, kind="job", external_ids=[worst])
        matching.match_top_k(session=s, ctx=ctx, rows=jobs_rows)
    assert worst_row() == (pytest.approx(scores[(last.id, worst)], abs=1e-6), ids[worst][1])
    with session_factory() as s:
        vec_hash = s.execute(
            select(vectors.c.content_hash).where(vectors.c.document_id == ids[worst][0])
        ).scalar_one()
    assert vec_hash == ids[worst][1], "the stale vectors were made again"


def test_a_rebuild_under_a_new_version_stores_its_own_top_k(session_factory, ctx, sample, minilm):
    from jobfit.tasks.score import _rebuild_top_k

    resumes, jobs = sample
    # A resume with no field text has no vectors: nothing to retrieve it by, nothing to rank.
    ingest(session_factory, ctx, [*jobs, *resumes, ResumeDocument(id="no-text")])
    v2 = context(session_factory, MiniLM(minilm, "minilm@top-k-test-v2"))
    # As after a promotion: weights that favour skills, so the rankings really change.
    v2 = ModelContext(v2.embedder, v2.model_version_id, {**v2.weights, PairType.SKILLS: 4.0}, TOP_K)
    progress: list[tuple[str, int, int]] = []
    _rebuild_top_k(
        session_factory,
        v2,
        7,
        lambda stage, done, total, **_: progress.append((stage, done, total)),
    )
    n = len(resumes) + 1 + len(jobs)
    assert progress[-1] == ("ranking", n, n)
    assert {p[0] for p in progress} == {"embedding", "ranking"}
    scores = exhaustive(session_factory, v2)
    for r in resumes:
        with session_factory() as s:
            got = repo.ranked(session=s, resume_id=r.id, model_version=v2.version, top=K)
        assert [m.score for m in got] == pytest.approx(best(scores, resume=r.id), abs=1e-6)
    for j in jobs:
        with session_factory() as s:
            got = repo.ranked(session=s, job_id=j.id, model_version=v2.version, top=K)
        assert [m.score for m in got] == pytest.approx(best(scores, job=j.id), abs=1e-6)
    # Run again (a redelivered rescore): nothing is written twice.
    assert _rebuild_top_k(session_factory, v2, 7, lambda *a, **k: None) == (0, 0)

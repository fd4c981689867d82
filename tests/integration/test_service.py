"""The service functions on real Postgres, without Celery, with a counting embedder, in the
exhaustive scoring mode (``all``; tests/integration/test_top_k.py covers ``top_k``)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from sqlalchemy import func, select

from jobfit.shared import repository as repo
from jobfit.shared.config import PairType, ScoringSettings
from jobfit.shared.orm import FieldEmbeddingRow, MatchRow, PairScoreRow
from jobfit.shared.repository import chunks
from jobfit.shared.schemas import JobDocument, ResumeDocument
from jobfit.workers import matching, service
from jobfit.workers.embedding import ModelContext

ALL = ScoringSettings(mode="all")

pytestmark = pytest.mark.integration


class CountingEmbedder:
    """Deterministic vectors from the text's hash; remembers every text it was asked for."""

    version = "counting@test"
    dim = 8

    def __init__(self) -> None:
        self.seen: list[str] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.seen.extend(texts)
        out = np.array(
            [np.frombuffer(hashlib.sha256(t.encode()).digest()[:8], dtype=np.uint8) for t in texts],
            dtype=np.float32,
        )
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture()
def ctx(session_factory, clean_db):
    emb = CountingEmbedder()
    with session_factory.begin() as s:
        row = repo.ensure_model_version(
            session=s, model=repo.ModelInfo(emb.version, "counting", "-", emb.dim)
        )
    return ModelContext(emb, row.id, dict.fromkeys(PairType, 1.0), ALL)


def test_a_text_is_embedded_once_for_every_document_that_has_it(session_factory, ctx):
    docs = [
        ResumeDocument(id=f"r{i}", skills=["Python", "SQL"], degrees=[f"B{i}"]) for i in range(5)
    ]
    with session_factory.begin() as s:
        for d in docs:
            service.ingest_document(session=s, ctx=ctx, doc=d)
    assert ctx.embedder.seen.count("Skills: Python, SQL") == 1
    assert len(ctx.embedder.seen) == len(set(ctx.embedder.seen))
    with session_factory() as s:
        n = s.execute(select(func.count()).select_from(FieldEmbeddingRow)).scalar_one()
    assert n == len(set(ctx.embedder.seen))


def test_one_job_against_many_resumes_in_chunks(session_factory, ctx, monkeypatch):
    monkeypatch.setattr(chunks, "CHUNK", 37)  # many statements, same result
    resumes = [ResumeDocument(id=f"r{i}", positions=[f"Engineer {i % 50}"]) for i in range(400)]
    job = JobDocument(id="j", title="Engineer", skills_required=["C"])
    with session_factory.begin() as s:
        for d in [*resumes, job]:
            service.ingest_document(session=s, ctx=ctx, doc=d)
    with session_factory.begin() as s:
        assert matching.score_job(session=s, ctx=ctx, job_id="j")[:2] == (400, 0)
    with session_factory.begin() as s:
        assert matching.score_job(session=s, ctx=ctx, job_id="j")[:2] == (0, 0), "nothing stale"
    with session_factory() as s:
        assert s.execute(select(func.count()).select_from(MatchRow)).scalar_one() == 400
        # only positions: the resumes have no skills, the job no experience requirement
        assert s.execute(select(func.count()).select_from(PairScoreRow)).scalar_one() == 400


def test_new_weights_make_rows_stale_and_rescore(session_factory, ctx):
    with session_factory.begin() as s:
        service.ingest_document(
            session=s, ctx=ctx, doc=ResumeDocument(id="r", skills=["Go"], positions=["Dev"])
        )
        service.ingest_document(
            session=s, ctx=ctx, doc=JobDocument(id="j", title="Dev", skills_required=["Go"])
        )
        assert matching.score_resume(session=s, ctx=ctx, resume_id="r")[:2] == (1, 0)
    skills_only = ModelContext(ctx.embedder, ctx.model_version_id, {PairType.SKILLS: 1.0}, ALL)
    with session_factory.begin() as s:
        assert matching.score_resume(session=s, ctx=skills_only, resume_id="r")[:2] == (1, 0)
    with session_factory() as s:
        row = s.execute(select(MatchRow)).scalar_one()
        pairs = dict(s.execute(select(PairScoreRow.pair_type, PairScoreRow.score)).all())
    assert row.score == pytest.approx(pairs["skills"])
    assert set(pairs) == {"skills", "positions"}  # zero weight: still reported


def test_rankings_never_mix_model_versions(session_factory, ctx):
    with session_factory.begin() as s:
        service.ingest_document(session=s, ctx=ctx, doc=ResumeDocument(id="r", skills=["Go"]))
        for i in range(3):
            job = JobDocument(id=f"j{i}", title="Dev", skills_required=[f"Go {i}"])
            service.ingest_document(session=s, ctx=ctx, doc=job)
        matching.score_resume(session=s, ctx=ctx, resume_id="r")

    class Other(CountingEmbedder):
        version = "counting@v2"

    with session_factory.begin() as s:
        v2 = repo.ensure_model_version(session=s, model=repo.ModelInfo(Other.version, "c", "-", 8))
    ctx2 = ModelContext(Other(), v2.id, ctx.weights, ALL)
    with session_factory.begin() as s:
        assert matching.score_resume(session=s, ctx=ctx2, resume_id="r")[:2] == (
            3,
            5,
        )  # 1 + 3 + "Job title: Dev"
    with session_factory() as s:
        latest = repo.ranked(session=s, resume_id="r")
        first = repo.ranked(session=s, resume_id="r", model_version=ctx.version)
        by_job = repo.ranked(session=s, job_id="j0")
    assert [m.model_version for m in latest] == ["counting@v2"] * 3
    assert [m.model_version for m in first] == ["counting@test"] * 3
    assert [m.model_version for m in by_job] == ["counting@v2"]
    assert latest == sorted(latest, key=lambda m: -(m.score or 0))


def test_a_batch_of_documents_in_one_call_applies_them_in_order(session_factory, ctx):
    v1 = ResumeDocument(id="r", skills=["Go"])
    v2 = ResumeDocument(id="r", skills=["Rust"])
    other = ResumeDocument(id="q", skills=["Go"])
    with session_factory.begin() as s:
        out = service.ingest_documents(session=s, ctx=ctx, docs=[v1, other, v2, v2])
    assert [status for _, status, _ in out] == ["created", "created", "updated", "unchanged"]
    # "Skills: Go" is new to v1 and to q: counted once, for the first; v2's text for v2.
    assert [n for _, _, n in out] == [1, 0, 1, 0]
    assert ctx.embedder.seen.count("Skills: Go") == 1, "one encode call for the whole batch"
    with session_factory() as s:
        row = repo.get_document(session=s, kind="resume", external_id="r")
        assert row is not None and row.payload["skills"] == ["Rust"], "the last version wins"
    with session_factory.begin() as s:
        again = service.ingest_documents(session=s, ctx=ctx, docs=[v2, other])
    assert [status for _, status, _ in again] == ["unchanged", "unchanged"]

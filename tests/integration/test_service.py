"""The service functions on real Postgres, without Celery, with a counting embedder, in the
exhaustive scoring mode (``all``; tests/integration/test_top_k.py covers ``top_k``)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from sqlalchemy import func, select

from jobfit.shared import repository as repo
from jobfit.shared.config import PairType, ScoringSettings
from jobfit.shared.orm import (
    DocumentRow,
    DocumentVectorRow,
    FieldEmbeddingRow,
    MatchRow,
    PairScoreRow,
    StaleRevisionRow,
)
from jobfit.shared.repository import chunks
from jobfit.shared.schemas import IngestResult, JobDocument, ResumeDocument
from jobfit.workers import matching, service
from jobfit.workers.embedding import ModelContext
from jobfit.workers.scoring import from_pgvector

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


def test_vectors_read_in_binary_are_what_the_text_format_reads(session_factory, ctx):
    """``repository.binary``: the reads that carry vectors go over psycopg's binary cursor,
    outside SQLAlchemy's execute; they give the bytes its (text-format) read gives, and see
    the session's unflushed writes as its execute would."""
    with session_factory.begin() as s:
        for i in range(3):
            doc = ResumeDocument(id=f"r{i}", skills=[f"S{i}", "SQL"], degrees=["BSc"])
            service.ingest_document(session=s, ctx=ctx, doc=doc)
    dv, v = DocumentVectorRow, ctx.model_version_id
    with session_factory() as s:
        ids = list(s.execute(select(dv.document_id)).scalars())
        assert len(ids) == 3
        got = repo.load_vectors(session=s, model_version_id=v, document_ids=ids)
        want = s.execute(select(dv.document_id, dv.slots, func.halfvec_send(dv.fields))).all()
        assert {i: (g.slots, g.fields) for i, g in got.items()} == {
            i: (slots, bytes(raw)) for i, slots, raw in want
        }
        s.add(
            FieldEmbeddingRow(model_version_id=v, text_hash="h", text="t", dim=2, vector=[0.6, 0.8])
        )
        raw = repo.load_embeddings(session=s, model_version_id=v, text_hashes=["h"])["h"]
        assert from_pgvector(raw).tolist() == pytest.approx([0.6, 0.8])
        s.rollback()


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


def _state(session_factory, kind: str, external_id: str) -> tuple:
    """A document's row, its vectors and its matches (with their pair scores), as stored."""
    with session_factory() as s:
        row = repo.get_document(session=s, kind=kind, external_id=external_id)
        assert row is not None
        column = MatchRow.resume_id if kind == "resume" else MatchRow.job_id
        return (
            (row.content_hash, row.payload, row.revision, row.schema_version, row.updated_at),
            s.execute(
                select(DocumentVectorRow.content_hash, DocumentVectorRow.updated_at).where(
                    DocumentVectorRow.document_id == row.id
                )
            ).all(),
            s.execute(
                select(MatchRow.id, MatchRow.score, MatchRow.scored_at, PairScoreRow.score)
                .join(PairScoreRow, PairScoreRow.match_id == MatchRow.id)
                .where(column == row.id)
                .order_by(MatchRow.id, PairScoreRow.pair_type)
            ).all(),
        )


def _stale_count(session_factory, external_id: str) -> tuple[int, int, int] | None:
    with session_factory() as s:
        hit = s.execute(
            select(
                StaleRevisionRow.messages,
                StaleRevisionRow.last_revision,
                StaleRevisionRow.stored_revision,
            )
            .join(DocumentRow, DocumentRow.id == StaleRevisionRow.document_id)
            .where(DocumentRow.external_id == external_id)
        ).one_or_none()
    return None if hit is None else tuple(hit)


def test_an_older_revision_is_stale_an_equal_one_ignored_a_newer_one_applied(session_factory, ctx):
    def ingest(doc: ResumeDocument) -> IngestResult:
        (out,) = service.ingest_batch(factory=session_factory, ctx=ctx, docs=[(doc, True)])
        return out

    job = JobDocument(id="j", title="Dev", skills_required=["Go"])
    service.ingest_batch(factory=session_factory, ctx=ctx, docs=[(job, True)])
    assert ingest(ResumeDocument(id="r", skills=["Go"], revision=5)).status == "created"
    stored = _state(session_factory, "resume", "r")
    assert stored[0][2] == 5 and stored[1] and stored[2], "row, vectors and a match"
    seen = len(ctx.embedder.seen)

    older = ingest(ResumeDocument(id="r", skills=["Rust"], positions=["Dev"], revision=3))
    assert older.status == "stale" and (older.embedded, older.scored, older.top) == (0, 0, [])
    assert older.reason is not None and "revision 3" in older.reason and "5" in older.reason
    assert _stale_count(session_factory, "r") == (1, 3, 5)
    same_revision = ingest(ResumeDocument(id="r", skills=["Rust"], revision=5))
    assert same_revision.status == "stale"
    assert _stale_count(session_factory, "r") == (2, 5, 5)
    # Stale: not embedded, and its row, vectors and matches exactly as they were.
    assert _state(session_factory, "resume", "r") == stored
    assert len(ctx.embedder.seen) == seen
    # The stored revision's own content again (a redelivery): unchanged, not stale.
    assert ingest(ResumeDocument(id="r", skills=["Go"], revision=5)).status == "unchanged"
    assert _stale_count(session_factory, "r") == (2, 5, 5)
    with session_factory() as s:
        assert repo.stale_counts(session=s) == {"resume": 2}

    newer = ingest(ResumeDocument(id="r", skills=["Rust"], revision=6))
    assert (newer.status, newer.embedded, newer.scored) == ("updated", 1, 1)
    (content_hash, payload, revision, _, _), vectors, matches = _state(
        session_factory, "resume", "r"
    )
    assert (payload["skills"], revision) == (["Rust"], 6)
    assert {h for h, _ in vectors} == {content_hash}, "vectors of the new content"
    assert matches != stored[2], "rescored"
    # No revision: applied as before, and the stored revision stays the highest one applied.
    assert ingest(ResumeDocument(id="r", skills=["Python"])).status == "updated"
    assert _state(session_factory, "resume", "r")[0][2] == 6
    assert ingest(ResumeDocument(id="r", skills=["Go"], revision=6)).status == "stale"
    # Same content under a newer revision: nothing to embed or score, the revision recorded.
    assert ingest(ResumeDocument(id="r", skills=["Python"], revision=9)).status == "unchanged"
    assert _state(session_factory, "resume", "r")[0][2] == 9


def test_revisions_in_one_batch_apply_in_order(session_factory, ctx):
    docs = [
        ResumeDocument(id="n", skills=["C"], revision=2),
        ResumeDocument(id="n", skills=["D"], revision=1),
        ResumeDocument(id="r", skills=["A"], revision=7),
        ResumeDocument(id="r", skills=["B"], revision=6),
        ResumeDocument(id="r", skills=["E"], revision=8),
        ResumeDocument(id="r", skills=["E"], revision=8),
        ResumeDocument(id="r", skills=["F"], revision=7),
    ]
    out = service.ingest_batch(factory=session_factory, ctx=ctx, docs=[(d, True) for d in docs])
    assert [o.status for o in out] == [
        "created",
        "stale",
        "created",
        "stale",
        "updated",
        "unchanged",
        "stale",
    ]
    assert "Skills: B" not in ctx.embedder.seen and "Skills: F" not in ctx.embedder.seen
    with session_factory() as s:
        rows = {
            r.external_id: (r.payload["skills"], r.revision)
            for r in repo.list_documents(session=s, kind="resume")
        }
    assert rows == {"n": (["C"], 2), "r": (["E"], 8)}
    assert _stale_count(session_factory, "n") == (1, 1, 2)
    assert _stale_count(session_factory, "r") == (2, 7, 8), "counted together, the last kept"

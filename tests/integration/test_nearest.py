"""``workers.matching.nearest`` on real Postgres with pgvector. The HNSW graph can leave
entries unreachable: measured on the fault harness's documents (the sample's resumes and
their variants, which differ by one skill), a pair of near-duplicate variants drops out of
every neighbour list in about one graph of six, and no query reaches it whatever its
``ef_search``. A job ingested after those resumes then never scored them. A query that gets
fewer rows than it asked for therefore ranks every stored document: a kind with no more
documents than the candidate pool is answered whole."""

from __future__ import annotations

import random

import pytest

from jobfit.shared import repository as repo
from jobfit.shared.client import read_documents
from jobfit.shared.config import PairType, ScoringSettings
from jobfit.shared.sample import SAMPLE_DIR
from jobfit.shared.schemas import JobDocument, ResumeDocument
from jobfit.workers import service
from jobfit.workers.embedding import ModelContext, document_vectors, store_vectors
from jobfit.workers.matching import nearest
from tests.integration.test_top_k import MiniLM
from tools.faults import stream_documents

pytestmark = pytest.mark.integration

GRAPHS = 20  # without ranking them all, at least one of them misses (p ~ 0.97, measured 1 in 6)


def version(session_factory, embedder: MiniLM, tag: str) -> ModelContext:
    with session_factory.begin() as s:
        row = repo.ensure_model_version(
            session=s, model=repo.ModelInfo(f"{embedder.version}-{tag}", "minilm", "-", 384)
        )
    # The index from the 20th resume on (its basis fitted then): every later resume goes into
    # a graph, and the query asks for more than the kind holds: every resume is ranked.
    scoring = ScoringSettings(index_fit_at=20, index_method="hnsw")
    return ModelContext(embedder, row.id, dict.fromkeys(PairType, 1.0), scoring)


def test_every_resume_of_a_small_corpus_is_found_whatever_the_graph(
    session_factory, clean_db, minilm
) -> None:
    base = [ResumeDocument.model_validate(d) for d in read_documents(SAMPLE_DIR / "resumes.jsonl")]
    variants = [ResumeDocument.model_validate(d) for d in stream_documents(80)[0]]
    jobs = [JobDocument.model_validate(d) for d in read_documents(SAMPLE_DIR / "jobs.jsonl")]
    embedder = MiniLM(minilm, "minilm@nearest-test")
    first = version(session_factory, embedder, "0")
    with session_factory.begin() as s:
        service.ingest_documents(session=s, ctx=first, docs=[*jobs, *base[:12], *variants])
        resumes = repo.list_documents(session=s, kind="resume")
        job_rows = repo.list_documents(session=s, kind="job")
        vecs, _ = document_vectors(session=s, ctx=first, rows=[*resumes, *job_rows])
    want = sorted(r.id for r in resumes)
    short = []
    for graph in range(1, GRAPHS + 1):
        # The same vectors under a fresh version: a new graph, built as workers build it
        # (a few documents per transaction, in the order their messages came).
        ctx = version(session_factory, embedder, str(graph))
        order = list(resumes)
        random.Random(graph).shuffle(order)
        for i in range(0, len(order), 4):
            with session_factory.begin() as s:
                store_vectors(session=s, ctx=ctx, rows=order[i : i + 4], vectors=vecs)
        with session_factory.begin() as s:
            for job in job_rows:
                assert repo.get_basis(
                    session=s, model_version_id=ctx.model_version_id, kind="resume"
                )
                found = [
                    i
                    for i, _ in nearest(
                        session=s, ctx=ctx, doc=vecs[job.id], limit=ctx.scoring.candidates
                    )
                ]
                if sorted(found) != want:
                    short.append((graph, job.external_id, len(want) - len(set(found))))
    assert not short, f"(graph, job, resumes missed): {short[:5]}"

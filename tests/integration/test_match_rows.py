"""``repository.matches``' writes and reads on real Postgres: rows bound as arrays (one
statement text whatever their number), upserted idempotently, their pair scores replaced."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from jobfit.shared import repository as repo
from jobfit.shared.client import read_documents
from jobfit.shared.config import PairType
from jobfit.shared.orm import MatchRow, PairScoreRow
from jobfit.shared.sample import SAMPLE_DIR
from jobfit.shared.schemas import JobDocument, ResumeDocument
from tools.faults import stream_documents

pytestmark = pytest.mark.integration

P1, P2, P3 = (p.value for p in list(PairType)[:3])


@pytest.fixture()
def pairs(session_factory, clean_db):
    """More (resume, job) rows than one statement's chunk (1,000), and a model version."""
    resumes = [ResumeDocument.model_validate(d) for d in stream_documents(50)[0]]
    jobs = [JobDocument.model_validate(d) for d in read_documents(SAMPLE_DIR / "jobs.jsonl")]
    with session_factory.begin() as s:
        rows = [row for row, _ in repo.upsert_documents(session=s, docs=[*resumes, *jobs])]
        v = repo.ensure_model_version(
            session=s, model=repo.ModelInfo("minilm@match-rows", "minilm", "-", 384)
        ).id
        s.expunge_all()
    rs, js = [r for r in rows if r.kind == "resume"], [r for r in rows if r.kind == "job"]
    return v, [(r, j) for r in rs for j in js]


def write(r, j, score, pair_scores) -> repo.MatchWrite:
    return repo.MatchWrite(r.id, j.id, score, pair_scores, r.content_hash, j.content_hash)


def stored(session_factory, v: int) -> dict[tuple[int, int], tuple[int, float | None, list]]:
    with session_factory() as s:
        rows = s.execute(
            select(
                MatchRow.resume_id,
                MatchRow.job_id,
                MatchRow.id,
                MatchRow.score,
                MatchRow.pairs_used,
            ).where(MatchRow.model_version_id == v)
        )
        return {(r, j): (i, sc, used) for r, j, i, sc, used in rows}


def pair_rows(session_factory, match_id: int) -> dict[str, float]:
    with session_factory() as s:
        rows = s.execute(
            select(PairScoreRow.pair_type, PairScoreRow.score).where(
                PairScoreRow.match_id == match_id
            )
        )
        return {p: sc for p, sc in rows}


def test_rows_are_written_rewritten_in_place_and_lose_dropped_pair_types(
    session_factory, pairs
) -> None:
    v, todo = pairs
    assert len(todo) > 1000  # two statements' worth
    first = [
        write(r, j, None, {}) if n == 0 else write(r, j, n / 10_000, {P1: 0.5, P2: n / 10_000})
        for n, (r, j) in enumerate(todo)
    ]
    with session_factory.begin() as s:
        assert repo.upsert_matches(session=s, model_version_id=v, key="k1", writes=first) == len(
            todo
        )
    rows = stored(session_factory, v)
    assert len(rows) == len(todo)
    (r0, j0), (r1, j1) = (todo[0][0].id, todo[0][1].id), (todo[1][0].id, todo[1][1].id)
    assert rows[(r0, j0)][1:] == (None, [])  # no score: NULL in the array, no pair rows
    assert pair_rows(session_factory, rows[(r0, j0)][0]) == {}
    assert rows[(r1, j1)][1:] == (pytest.approx(1e-4), [P1, P2])
    assert pair_rows(session_factory, rows[(r1, j1)][0]) == {P1: 0.5, P2: pytest.approx(1e-4)}
    with session_factory() as s:
        assert s.execute(select(func.count()).select_from(PairScoreRow)).scalar_one() == 2 * (
            len(todo) - 1
        )
    # rewritten: the same rows (ids kept), a pair type dropped, one added, scores replaced
    again = [write(r, j, 0.25, {P2: 0.25, P3: 0.75}) for r, j in todo[:3]]
    with session_factory.begin() as s:
        repo.upsert_matches(session=s, model_version_id=v, key="k2", writes=again)
    after = stored(session_factory, v)
    assert len(after) == len(todo)
    for r, j in todo[:3]:
        mid, score, used = after[(r.id, j.id)]
        assert mid == rows[(r.id, j.id)][0]
        assert (score, used) == (0.25, [P2, P3])
        assert pair_rows(session_factory, mid) == {P2: 0.25, P3: 0.75}
    assert after[(todo[3][0].id, todo[3][1].id)] == rows[(todo[3][0].id, todo[3][1].id)]
    # an all-NULL chunk binds as well
    with session_factory.begin() as s:
        repo.upsert_matches(
            session=s,
            model_version_id=v,
            key="k2",
            writes=[write(r, j, None, {}) for r, j in todo[:2]],
        )
    assert [stored(session_factory, v)[(r.id, j.id)][1] for r, j in todo[:2]] == [None, None]


def test_fresh_and_stale_rows_are_told_apart_by_key_and_content(session_factory, pairs) -> None:
    v, todo = pairs
    with session_factory.begin() as s:
        repo.upsert_matches(
            session=s,
            model_version_id=v,
            key="k1",
            writes=[write(r, j, 0.5, {P1: 0.5}) for r, j in todo[:1200]],
        )
        s.flush()
        s.execute(
            MatchRow.__table__.update()
            .where(MatchRow.resume_id == todo[0][0].id, MatchRow.job_id == todo[0][1].id)
            .values(resume_hash="changed")
        )
    with session_factory() as s:
        fresh = repo.fresh_match_keys(session=s, model_version_id=v, pairs=todo, key="k1")
        assert fresh == {(r.id, j.id) for r, j in todo[1:1200]}
        assert repo.fresh_match_keys(session=s, model_version_id=v, pairs=todo, key="k2") == set()
        stale = repo.stale_partners(
            session=s, model_version_id=v, side="resume", ids=[todo[0][0].id], key="k1"
        )
        assert stale == {todo[0][0].id: {todo[0][1].id}}
        every = repo.stale_partners(
            session=s, model_version_id=v, side="job", ids=[todo[0][1].id], key="k2"
        )
        assert every[todo[0][1].id] == {r.id for r, j in todo[:1200] if j.id == todo[0][1].id}

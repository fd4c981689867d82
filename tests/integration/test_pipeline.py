"""Producer -> Redis -> worker process -> Postgres, asserted on rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from jobfit.shared.celery_app import INGEST_RESUME
from jobfit.shared.client import read_documents
from jobfit.shared.config import PairType
from jobfit.shared.fields import field_texts, usable_pairs
from jobfit.shared.orm import (
    DocumentRow,
    FieldEmbeddingRow,
    MatchRow,
    ModelVersionRow,
    PairScoreRow,
    StaleRevisionRow,
)
from jobfit.shared.schemas import JobDocument, ResumeDocument
from jobfit.workers.vectors import as_stored

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "sample"
TIMEOUT = 120


def sample_docs(n_resumes: int, n_jobs: int) -> tuple[list[dict], list[dict]]:
    resumes = read_documents(SAMPLE / "resumes.jsonl")[:n_resumes]
    jobs = read_documents(SAMPLE / "jobs.jsonl")[:n_jobs]
    return resumes, jobs


def submit_all(client, resumes: list[dict], jobs: list[dict]) -> list[dict]:
    results = [client.submit_job(j) for j in jobs] + [client.submit_resume(r) for r in resumes]
    return [r.get(timeout=TIMEOUT) for r in results]


def snapshot(session_factory) -> dict[tuple[str, str], tuple]:
    """Every match with its pair scores, keyed by (resume, job) external ids."""
    r, j = aliased(DocumentRow), aliased(DocumentRow)
    with session_factory() as s:
        rows = s.execute(
            select(
                r.external_id,
                j.external_id,
                MatchRow.id,
                MatchRow.score,
                MatchRow.pairs_used,
                MatchRow.scored_at,
                ModelVersionRow.version,
            )
            .join(r, MatchRow.resume_id == r.id)
            .join(j, MatchRow.job_id == j.id)
            .join(ModelVersionRow, MatchRow.model_version_id == ModelVersionRow.id)
        ).all()
        pairs: dict[int, dict[str, float]] = {}
        for mid, p, sc in s.execute(
            select(PairScoreRow.match_id, PairScoreRow.pair_type, PairScoreRow.score)
        ):
            pairs.setdefault(mid, {})[p] = sc
    return {
        (rid, jid): (score, tuple(used), scored_at, version, pairs.get(mid, {}))
        for rid, jid, mid, score, used, scored_at, version in rows
    }


def count(session_factory, model) -> int:
    with session_factory() as s:
        return s.execute(select(func.count()).select_from(model)).scalar_one()


def test_n_resumes_by_m_jobs_then_resend_changes_nothing(worker, client, clean_db, session_factory):
    resumes, jobs = sample_docs(4, 5)
    first = submit_all(client, resumes, jobs)
    assert {s["status"] for s in first} == {"created"}
    assert sum(s["embedded"] for s in first) > 0

    snap = snapshot(session_factory)
    assert len(snap) == 4 * 5, "one match row per (resume, job)"
    assert count(session_factory, DocumentRow) == 9
    versions = {v[3] for v in snap.values()}
    assert versions == {first[0]["model_version"]}, "every row names the model version"
    by_id = {d["id"]: d for d in resumes + jobs}
    for (rid, jid), (score, used, _, _, pairs) in snap.items():
        expected = usable_pairs(
            field_texts(ResumeDocument.model_validate(by_id[rid])),
            field_texts(JobDocument.model_validate(by_id[jid])),
        )
        assert list(used) == [p.value for p in expected]
        assert set(pairs) == set(used), "a pair score row for each pair used, no other"
        assert score == pytest.approx(np.mean([pairs[p] for p in used]), abs=1e-9)
    embeddings = count(session_factory, FieldEmbeddingRow)

    # The same documents again: nothing embedded, nothing written.
    again = submit_all(client, resumes, jobs)
    assert {s["status"] for s in again} == {"unchanged"}
    assert sum(s["embedded"] for s in again) == 0
    assert sum(s["scored"] for s in again) == 0
    assert snapshot(session_factory) == snap
    assert count(session_factory, FieldEmbeddingRow) == embeddings
    assert count(session_factory, PairScoreRow) == sum(len(v[1]) for v in snap.values())


def test_scores_equal_direct_encode_and_cosine(worker, client, clean_db, session_factory, minilm):
    resumes, jobs = sample_docs(3, 4)
    submit_all(client, resumes, jobs)
    snap = snapshot(session_factory)
    by_id = {d["id"]: d for d in resumes + jobs}
    worst = drift = 0.0
    for (rid, jid), (score, used, *_, pairs) in snap.items():
        rt = field_texts(ResumeDocument.model_validate(by_id[rid]))
        jt = field_texts(JobDocument.model_validate(by_id[jid]))
        direct = {}
        for p in used:
            a, b = minilm.encode([rt[PairType(p)], jt[PairType(p)]], convert_to_numpy=True)
            # the field vectors at the precision they are stored in (float16)
            a16, b16 = as_stored(a), as_stored(b)
            direct[p] = float(np.dot(a16, b16) / (np.linalg.norm(a16) * np.linalg.norm(b16)))
            worst = max(worst, abs(direct[p] - pairs[p]))
            drift = max(drift, abs(direct[p] - float(np.dot(a, b))))
        assert score == pytest.approx(np.mean(list(direct.values())), abs=1e-5)
    assert worst < 1e-5, f"pipeline distorts pair cosines by up to {worst}"
    assert drift < 1e-3, f"float16 storage moves pair cosines by up to {drift}"


def test_new_content_replaces_document_and_rescores(worker, client, clean_db, session_factory):
    resumes, jobs = sample_docs(1, 3)
    submit_all(client, resumes, jobs)
    before = snapshot(session_factory)
    changed = {**resumes[0], "positions": ["Welder", "Forklift driver"], "degrees": []}
    out = client.submit_resume(changed).get(timeout=TIMEOUT)
    assert out["status"] == "updated"
    assert out["scored"] == 3
    after = snapshot(session_factory)
    assert set(after) == set(before), "replaced, not duplicated"
    assert count(session_factory, DocumentRow) == 4
    for key, (_, used, scored_at, _, pairs) in after.items():
        _, _, old_at, _, old_pairs = before[key]
        assert scored_at > old_at
        assert "degrees" not in used and "degrees" not in pairs, "stale pair rows removed"
        assert pairs["positions"] != pytest.approx(old_pairs["positions"], abs=1e-4)
    with session_factory() as s:
        payload = s.execute(
            select(DocumentRow.payload).where(DocumentRow.external_id == resumes[0]["id"])
        ).scalar_one()
    assert payload["positions"] == ["Welder", "Forklift driver"]


def test_revisions_through_a_worker(worker, client, celery_app, clean_db, session_factory):
    """A stale message is answered "stale" and changes nothing; a newer one is applied; a
    version 1 message (as an older producer sends it) is still accepted."""
    resumes, jobs = sample_docs(1, 2)
    submit_all(client, [], jobs)
    doc = {**resumes[0], "revision": 10}
    assert client.submit_resume(doc).get(timeout=TIMEOUT)["status"] == "created"
    before = snapshot(session_factory)
    assert len(before) == 2

    welder = {**resumes[0], "positions": ["Welder"]}
    older = client.submit_resume({**welder, "revision": 9}).get(timeout=TIMEOUT)
    assert older["status"] == "stale" and older["scored"] == older["embedded"] == 0
    assert "revision 9" in older["reason"]
    equal = client.submit_resume({**welder, "revision": 10}).get(timeout=TIMEOUT)
    assert equal["status"] == "stale"
    assert client.submit_resume(doc).get(timeout=TIMEOUT)["status"] == "unchanged"
    assert snapshot(session_factory) == before, "stale: no match or pair score touched"
    with session_factory() as s:
        row = s.execute(
            select(DocumentRow).where(DocumentRow.external_id == doc["id"])
        ).scalar_one()
        assert (row.revision, row.payload["positions"]) == (10, doc["positions"])
        counted = s.execute(
            select(StaleRevisionRow.messages).where(StaleRevisionRow.document_id == row.id)
        ).scalar_one()
    assert counted == 2

    newer = client.submit_resume({**welder, "revision": 11}).get(timeout=TIMEOUT)
    assert (newer["status"], newer["scored"]) == ("updated", 2)
    v1 = {**resumes[0], "positions": ["Forklift driver"], "schema_version": 1}
    sent = celery_app.send_task(INGEST_RESUME, kwargs={"document": v1})
    assert sent.get(timeout=TIMEOUT)["status"] == "updated"
    with session_factory() as s:
        row = s.execute(
            select(DocumentRow).where(DocumentRow.external_id == doc["id"])
        ).scalar_one()
    assert (row.revision, row.payload["positions"]) == (11, ["Forklift driver"])


def test_score_tasks_by_request(worker, client, clean_db, session_factory):
    resumes, jobs = sample_docs(2, 3)
    results = [client.submit_job(j, score=False) for j in jobs]
    results += [client.submit_resume(r, score=False) for r in resumes]
    assert all(r.get(timeout=TIMEOUT)["scored"] == 0 for r in results)
    assert count(session_factory, MatchRow) == 0

    some = client.request_matches(resumes[0]["id"], [jobs[0]["id"]]).get(timeout=TIMEOUT)
    assert some["status"] == "ok" and some["scored"] == 1 and some["embedded"] == 0
    rest = client.request_matches(resumes[0]["id"]).get(timeout=TIMEOUT)
    assert rest["scored"] == 2, "only the jobs not yet scored"
    cands = client.request_candidates(jobs[1]["id"]).get(timeout=TIMEOUT)
    assert cands["scored"] == 1, "resume 0 already has job 1; resume 1 is new"
    assert count(session_factory, MatchRow) == 4
    missing = client.request_matches("no-such-resume").get(timeout=TIMEOUT)
    assert missing["status"] == "not_found"


def test_cli_submit_and_ranked_tables(worker, settings, clean_db, tmp_path):
    import os
    import subprocess
    import sys

    from tools.procs import ROOT, settings_env

    resumes, jobs = sample_docs(2, 4)
    (tmp_path / "jobs.jsonl").write_text("\n".join(json.dumps(j) for j in jobs))
    (tmp_path / "resumes.json").write_text(json.dumps(resumes))
    env = {**os.environ, **settings_env(settings), "COLUMNS": "200"}

    def jobfit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "jobfit", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )

    assert jobfit("submit", "job", str(tmp_path / "jobs.jsonl"), "--wait").returncode == 0
    out = jobfit("submit", "resume", str(tmp_path / "resumes.json"), "--wait")
    assert out.returncode == 0, out.stderr
    table = jobfit("matches", resumes[0]["id"], "--top", "3")
    assert table.returncode == 0, table.stderr
    assert sum(j["id"] in table.stdout for j in jobs) == 3
    cands = jobfit("candidates", jobs[0]["id"])
    assert cands.returncode == 0 and all(r["id"] in cands.stdout for r in resumes)

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "skills": "not", "schema_version": 9}) + "\n")
    refused = jobfit("submit", "resume", str(bad))
    assert refused.returncode == 2
    assert "schema_version" in refused.stderr

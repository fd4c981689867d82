"""Bulk ingest messages (``jobfit.ingest_resumes`` / ``jobfit.ingest_jobs``) on a real worker:
many documents per message, each one's outcome in the message's result, invalid ones refused
alone and recorded, a redelivery idempotent."""

from __future__ import annotations

import json
import re

import pytest
from sqlalchemy import select, text

from jobfit.shared.celery_app import INGEST_JOBS, INGEST_RESUMES
from jobfit.shared.orm import DocumentRow, FailedMessageRow, MatchRow
from jobfit.shared.schemas import (
    MAX_BULK_DOCUMENTS,
    BulkIngestResult,
    InvalidMessageError,
    MessageRejectedError,
)
from tests.integration.test_batching import count, resumes

pytestmark = pytest.mark.integration

TIMEOUT = 180
# A real, non-transient failure for one document: Postgres refuses its row.
POISON = "bulk-poison"
POISON_SQL = (
    "DROP TRIGGER IF EXISTS jobfit_test_poison ON documents",
    "CREATE OR REPLACE FUNCTION jobfit_test_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    f" IF NEW.external_id = '{POISON}' THEN RAISE EXCEPTION 'poisoned row %', NEW.external_id;"
    " END IF; RETURN NEW; END $$",
    "CREATE TRIGGER jobfit_test_poison BEFORE INSERT OR UPDATE ON documents"
    " FOR EACH ROW EXECUTE FUNCTION jobfit_test_poison()",
)
UNPOISON_SQL = (
    "DROP TRIGGER IF EXISTS jobfit_test_poison ON documents",
    "DROP FUNCTION IF EXISTS jobfit_test_poison()",
)


def test_a_bulk_message_stores_its_documents_and_answers_each(
    worker, client, clean_db, session_factory
):
    jobs = [
        {"id": f"bulk-job-{i}", "title": f"Engineer {i}", "skills_required": ["SQL"]}
        for i in range(3)
    ]
    assert [r.get(timeout=TIMEOUT) for r in client.submit_jobs(jobs, score=False)]
    docs = resumes(25, "bulk")
    sent = client.submit_resumes(docs, per_message=10)
    assert len(sent) == 3  # 10 + 10 + 5
    out = [BulkIngestResult.model_validate(r.get(timeout=TIMEOUT)) for r in sent]
    answers = [d for o in out for d in o.documents]
    assert [a.document_id for a in answers] == [d["id"] for d in docs], "in the message's order"
    assert {a.status for a in answers} == {"created"}
    assert all(a.scored == 3 and a.top == [] for a in answers), "scored; rankings read back"
    top = client.top_jobs(docs[0]["id"], k=10)
    assert sorted(m.job_id for m in top) == sorted(j["id"] for j in jobs)
    assert count(session_factory, DocumentRow) == len(docs) + len(jobs)
    assert count(session_factory, MatchRow) == len(docs) * len(jobs)
    # The same documents again, in new messages (a producer's retry): nothing new.
    again = client.submit_resumes(docs, per_message=MAX_BULK_DOCUMENTS)
    (result,) = [BulkIngestResult.model_validate(r.get(timeout=TIMEOUT)) for r in again]
    assert {a.status for a in result.documents} == {"unchanged"}
    assert sum(a.embedded for a in result.documents) == 0
    assert count(session_factory, DocumentRow) == len(docs) + len(jobs)


def test_invalid_documents_of_a_bulk_message_are_refused_alone_and_recorded(
    worker, celery_app, clean_db, session_factory
):
    documents = [
        {"id": "bulk-ok-1", "skills": ["Python"]},
        {"id": "bulk-bad", "skills": [1, 2]},
        {"skills": ["no id"]},
        {"id": "bulk-ok-2", "positions": ["Analyst"]},
    ]
    res = celery_app.send_task(INGEST_RESUMES, kwargs={"documents": documents, "score": False})
    out = BulkIngestResult.model_validate(res.get(timeout=TIMEOUT))
    assert res.state == "SUCCESS"
    assert [(a.status, a.document_id) for a in out.documents] == [
        ("created", "bulk-ok-1"),
        ("refused", "bulk-bad"),
        ("refused", None),
        ("created", "bulk-ok-2"),
    ]
    assert out.documents[1].reason is not None and "document 1: " in out.documents[1].reason
    assert "skills.0" in out.documents[1].reason
    with session_factory() as s:
        ids = set(s.execute(select(DocumentRow.external_id)).scalars())
        rows = list(s.execute(select(FailedMessageRow).order_by(FailedMessageRow.id)).scalars())
    assert ids == {"bulk-ok-1", "bulk-ok-2"}
    assert [r.task_id for r in rows] == [res.id, res.id]
    assert [re.match(r"document (\d+):", r.reason).group(1) for r in rows] == ["1", "2"]
    assert "bulk-bad" in rows[0].payload and "no id" in rows[1].payload
    # A message that is not a list of 1..MAX_BULK_DOCUMENTS documents is refused whole.
    for documents in ([], [{"id": "x"}] * (MAX_BULK_DOCUMENTS + 1), {"id": "x"}):
        res = celery_app.send_task(INGEST_JOBS, kwargs={"documents": documents})
        with pytest.raises(MessageRejectedError, match="documents must be a list"):
            res.get(timeout=TIMEOUT)
    assert worker.alive() and worker.ping()


def test_the_client_validates_every_document_before_sending_any(client):
    with pytest.raises(InvalidMessageError, match="skills"):
        client.submit_resumes([{"id": "fine"}, {"id": "bad", "skills": [1, 2]}])
    with pytest.raises(ValueError, match="per_message"):
        client.submit_jobs([{"id": "j", "title": "T"}], per_message=MAX_BULK_DOCUMENTS + 1)


def test_a_bulk_result_stays_small_whatever_its_documents_say(worker, celery_app, clean_db):
    """100 refused documents with the longest ids beyond ASCII and field names that make long
    reasons: the stored result stays under the 100 kB every result keeps to."""
    long_id = "😀" * 200
    documents = [{"id": long_id, "😀" * 150 + str(i): ["x"]} for i in range(MAX_BULK_DOCUMENTS)]
    res = celery_app.send_task(INGEST_RESUMES, kwargs={"documents": documents})
    out = BulkIngestResult.model_validate(res.get(timeout=TIMEOUT))
    assert [d.status for d in out.documents] == ["refused"] * MAX_BULK_DOCUMENTS
    assert all(d.document_id is None and d.reason for d in out.documents)
    stored = celery_app.backend.client.get(celery_app.backend.get_key_for_task(res.id))
    assert len(stored) < 100_000, len(stored)


def test_a_document_that_cannot_be_stored_fails_alone_and_is_recorded(
    worker, celery_app, clean_db, session_factory
):
    """A bulk message whose batch fails on something other than a transient error has its
    documents stored one at a time: the one Postgres refuses is ``failed`` in the result and
    recorded with its document; the others are stored and scored; the message succeeds."""
    job = {"id": "bulk-each-job", "title": "Data Engineer", "skills_required": ["SQL"]}
    documents = [
        {"id": "bulk-each-1", "skills": ["Python"]},
        {"id": POISON, "skills": ["SQL"]},
        {"id": "bulk-each-2", "positions": ["Analyst"]},
    ]
    try:
        with session_factory.begin() as s:
            for statement in POISON_SQL:
                s.execute(text(statement))
        celery_app.send_task(INGEST_JOBS, kwargs={"documents": [job]}).get(timeout=TIMEOUT)
        res = celery_app.send_task(INGEST_RESUMES, kwargs={"documents": documents})
        out = BulkIngestResult.model_validate(res.get(timeout=TIMEOUT))
    finally:
        with session_factory.begin() as s:
            for statement in UNPOISON_SQL:
                s.execute(text(statement))
    assert res.state == "SUCCESS"
    assert [(a.status, a.document_id) for a in out.documents] == [
        ("created", "bulk-each-1"),
        ("failed", POISON),
        ("created", "bulk-each-2"),
    ]
    assert out.documents[1].reason is not None and "poisoned row" in out.documents[1].reason
    assert [a.scored for a in out.documents] == [1, 0, 1]
    with session_factory() as s:
        ids = set(s.execute(select(DocumentRow.external_id)).scalars())
        (row,) = s.execute(select(FailedMessageRow)).scalars()
    assert ids == {"bulk-each-1", "bulk-each-2", job["id"]}
    assert row.task_id == res.id and "poisoned row" in row.reason
    assert json.loads(row.payload)["document"]["id"] == POISON

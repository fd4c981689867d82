"""Bad messages that reach a worker anyway: recorded with a reason, acknowledged, and the
worker keeps serving."""

from __future__ import annotations

import re
import time
import uuid

import pytest
from kombu import Connection, Exchange
from sqlalchemy import select

from jobfit.shared.celery_app import EMBED_QUEUE, INGEST_JOB, INGEST_RESUME, SCORE_JOB, SCORE_RESUME
from jobfit.shared.orm import DocumentRow, FailedMessageRow
from jobfit.shared.schemas import MAX_FIELD_BYTES, InvalidMessageError, MessageRejectedError

pytestmark = pytest.mark.integration
TIMEOUT = 60


def failed(session_factory) -> list[FailedMessageRow]:
    with session_factory() as s:
        return list(s.execute(select(FailedMessageRow).order_by(FailedMessageRow.id)).scalars())


def wait_failed(session_factory, n: int, timeout: float = TIMEOUT) -> list[FailedMessageRow]:
    deadline = time.monotonic() + timeout
    while len(rows := failed(session_factory)) < n and time.monotonic() < deadline:
        time.sleep(0.2)
    return rows


BAD_RESUMES = [
    ({"skills": ["Python"]}, "id: Field required"),
    ({"id": "r-types", "skills": [1, 2]}, "skills.0"),
    ({"id": "r-version", "schema_version": 3}, "schema_version"),
    ({"id": "r-big", "skills": ["x" * (MAX_FIELD_BYTES + 1)]}, "longer than"),
    ({"id": "r-extra", "hobbies": ["chess"]}, "hobbies: Extra inputs are not permitted"),
    ({"id": "r-nul", "career_objective": "a\x00b"}, "NUL"),
    ("{not json", "Invalid JSON"),
    (["a", "list"], "Input should be a valid dictionary"),
]


def test_invalid_documents_are_recorded_and_worker_survives(
    worker, client, celery_app, clean_db, session_factory
):
    for payload, expected in BAD_RESUMES:
        res = celery_app.send_task(INGEST_RESUME, kwargs={"document": payload})
        # A refused message is a FAILURE (Flower shows it as failed), with its reason.
        with pytest.raises(MessageRejectedError, match=re.escape(expected)):
            res.get(timeout=TIMEOUT)
        assert res.state == "FAILURE"
    # Wrong call signature: refused with the binding error, and recorded too.
    res = celery_app.send_task(INGEST_JOB, kwargs={"doc": {}, "bogus": 1})
    out = res.get(timeout=TIMEOUT, propagate=False)
    assert isinstance(out, MessageRejectedError) and "TypeError" in str(out), out

    rows = failed(session_factory)
    reasons = [r.reason for r in rows]
    for (_, expected), reason in zip(BAD_RESUMES, reasons, strict=False):
        assert expected in reason, (expected, reason)
    assert any("TypeError" in r and r_.task_name == INGEST_JOB for r_ in rows for r in [r_.reason])
    assert len(rows) == len(BAD_RESUMES) + 1
    assert all(r.task_id for r in rows)

    assert worker.alive() and worker.ping()
    good = client.submit_resume({"id": "r-good", "skills": ["Python"]}).get(timeout=TIMEOUT)
    assert good["status"] == "created"
    with session_factory() as s:
        ids = set(s.execute(select(DocumentRow.external_id)).scalars())
    assert ids == {"r-good"}, "nothing of the bad messages was stored"


def test_redelivered_bad_message_is_recorded_once(
    worker, client, celery_app, clean_db, session_factory
):
    task_id = str(uuid.uuid4())
    for _ in range(3):
        celery_app.send_task(INGEST_RESUME, kwargs={"document": {"id": ""}}, task_id=task_id)
    # One solo worker takes messages in order: once this one is done, so are the three.
    client.submit_resume({"id": "r-after"}).get(timeout=TIMEOUT)
    assert worker.ping()
    rows = failed(session_factory)
    assert len(rows) == 1 and rows[0].task_id == task_id


def test_undecodable_and_unknown_messages(worker, settings, clean_db, session_factory):
    """Raw messages no Celery client would send: garbage JSON, an unknown task, pickle."""
    with Connection(
        settings.broker.url,
        transport_options={"global_keyprefix": settings.broker.key_prefix},
    ) as conn:
        producer = conn.Producer()
        exchange = Exchange(EMBED_QUEUE, type="direct")
        common = {"exchange": exchange, "routing_key": EMBED_QUEUE, "retry": True}
        producer.publish(
            b"{definitely not json",
            content_type="application/json",
            content_encoding="utf-8",
            headers={"task": INGEST_RESUME, "id": "raw-garbage", "lang": "py"},
            **common,
        )
        producer.publish(
            [[], {}, {}],
            serializer="json",
            headers={"task": "jobfit.no_such_task", "id": "raw-unknown", "lang": "py"},
            **common,
        )
        producer.publish(
            b"\x80\x04\x95",
            content_type="application/x-python-serialize",
            content_encoding="binary",
            headers={"task": INGEST_RESUME, "id": "raw-pickle", "lang": "py"},
            **common,
        )
    rows = wait_failed(session_factory, 3)
    by_id = {r.task_id: r.reason for r in rows}
    assert set(by_id) >= {"raw-garbage", "raw-unknown", "raw-pickle"}, by_id
    assert "unknown task name 'jobfit.no_such_task'" in by_id["raw-unknown"]
    assert "x-python-serialize" in by_id["raw-pickle"]
    assert worker.alive() and worker.ping()


MALFORMED = [
    # (body, headers beyond the id, what the recorded reason says): each raised inside
    # Celery's request or its task lookup before, caught by a net over the whole handler
    (b'"just a string"', {"task": SCORE_RESUME}, "not [args, kwargs, embed]"),
    (b'{"resume_id": "r1"}', {"task": SCORE_RESUME}, "an object without args"),
    (b'[["r1"], {}, "options"]', {"task": SCORE_JOB}, "options"),
    (b'[["r1"], {}, {}]', {"task": SCORE_RESUME, "timelimit": "soon"}, "timelimit"),
    (b'[["r1"], {}, {}]', {"task": SCORE_JOB, "retries": "many"}, "retries"),
    (b"[[], {}, {}]", {"task": [INGEST_RESUME]}, "task name is a list"),
    (b'[[{"id": "r1"}], {}, {}]', {"task": INGEST_RESUME, "id": ""}, "no task id"),
]


def test_malformed_task_messages_are_recorded_and_worker_survives(
    worker, settings, clean_db, session_factory
):
    """Messages of the right task names in shapes Celery's request cannot take: recorded
    with a reason and rejected, through Celery's own paths; the worker keeps serving."""
    with Connection(
        settings.broker.url,
        transport_options={"global_keyprefix": settings.broker.key_prefix},
    ) as conn:
        producer = conn.Producer()
        for i, (body, headers, _) in enumerate(MALFORMED):
            producer.publish(
                body,
                exchange=Exchange(EMBED_QUEUE, type="direct"),
                routing_key=EMBED_QUEUE,
                content_type="application/json",
                content_encoding="utf-8",
                headers={"id": f"raw-{i}", "lang": "py", **headers},
                retry=True,
            )
    rows = wait_failed(session_factory, len(MALFORMED))
    by_id = {r.task_id: r.reason for r in rows}
    for i, (_, headers, expected) in enumerate(MALFORMED):
        task_id = str(headers.get("id", f"raw-{i}")) or None
        assert expected in by_id.get(task_id, ""), (i, expected, by_id)
    assert len(rows) == len(MALFORMED)
    assert worker.alive() and worker.ping()


def test_client_refuses_before_sending(client):
    for payload, expected in BAD_RESUMES:
        with pytest.raises(InvalidMessageError, match=expected.split(":")[0]):
            client.submit_resume(payload)

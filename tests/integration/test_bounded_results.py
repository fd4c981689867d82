"""What a large or refused message leaves in the result backend: a small record (its status,
its reason cut, the task's name and queue), never a copy of its payload
(``shared.result_backend``)."""

from __future__ import annotations

import uuid

import pytest
from celery.app.task import Context
from sqlalchemy import select

from jobfit.shared.celery_app import INGEST_JOB, INGEST_RESUME, SCORE_RESUME
from jobfit.shared.orm import FailedMessageRow
from jobfit.shared.result_backend import MAX_ERROR_CHARS, MAX_TRACEBACK_CHARS
from jobfit.shared.schemas import MessageRejectedError

pytestmark = pytest.mark.integration
TIMEOUT = 120
BIG = "z" * 5_000_000
KEY_LIMIT = 100_000


def request(task_id: str, **kwargs) -> Context:
    return Context(
        id=task_id,
        task=INGEST_RESUME,
        args=[],
        kwargs=kwargs,
        hostname="w1@h",
        retries=0,
        delivery_info={"routing_key": "embed"},
    )


def stored_bytes(app, task_id: str) -> int:
    backend = app.backend
    return int(backend.client.memory_usage(backend.get_key_for_task(task_id)) or 0)


def test_records_keep_small_arguments_and_no_copy_of_large_ones(celery_app):
    backend = celery_app.backend
    small, large = str(uuid.uuid4()), str(uuid.uuid4())
    backend.mark_as_done(small, {"status": "created"}, request=request(small, document={"id": "a"}))
    res = celery_app.AsyncResult(small)
    assert (res.state, res.kwargs, res.name, res.queue) == (
        "SUCCESS",
        {"document": {"id": "a"}},
        INGEST_RESUME,
        "embed",
    )
    req = request(large, document={"id": "x", "skills": [BIG]})
    backend.store_result(large, {"pid": 1}, "STARTED", request=req)
    assert stored_bytes(celery_app, large) < KEY_LIMIT
    backend.mark_as_failure(large, ValueError(BIG), traceback=BIG, request=req)
    res = celery_app.AsyncResult(large)
    assert stored_bytes(celery_app, large) < KEY_LIMIT
    assert (res.state, res.args, res.kwargs, res.name, res.queue) == (
        "FAILURE",
        None,
        None,
        INGEST_RESUME,
        "embed",
    )
    assert isinstance(res.result, ValueError) and len(str(res.result)) <= MAX_ERROR_CHARS
    assert "characters, cut" in str(res.result) and len(res.traceback) <= MAX_TRACEBACK_CHARS
    backend.forget(small)
    backend.forget(large)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        (INGEST_RESUME, {"document": {"id": "x", "skills": [BIG]}}),  # the batch path
        (INGEST_JOB, {"document": {"id": "j"}, BIG: 1}),  # a reason that names 5 MB
        (SCORE_RESUME, {"resume_id": BIG}),  # Celery's own request: STARTED, then FAILURE
    ],
    ids=["field", "argument-name", "scoring"],
)
def test_a_refused_5mb_message_leaves_a_small_result(
    name, kwargs, worker, celery_app, clean_db, session_factory
):
    """The message of issue 18 kept 5.4 MB in Redis for an hour; now a small FAILURE."""
    res = celery_app.send_task(name, kwargs=kwargs)
    out = res.get(timeout=TIMEOUT, propagate=False)
    assert res.state == "FAILURE" and isinstance(out, MessageRejectedError), out
    assert len(str(out)) <= MAX_ERROR_CHARS
    assert stored_bytes(celery_app, res.id) < KEY_LIMIT
    assert (res.name, res.queue, res.args, res.kwargs) == (name, "embed", None, None)
    with session_factory() as s:
        row = s.execute(
            select(FailedMessageRow).where(FailedMessageRow.task_id == res.id)
        ).scalar_one()
    assert len(row.reason) <= MAX_ERROR_CHARS and len(row.payload) <= 10_000
    assert worker.alive()

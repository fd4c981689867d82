"""Bounded redelivery on a real worker: the delivery count a message would have after its
workers were killed five times is seeded, and the next delivery is dead-lettered, recorded,
and not run; a message that already finished is not run again."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import select

from jobfit.shared import repository as repo
from jobfit.shared.celery_app import INGEST_RESUME, SCORE_RESUME
from jobfit.shared.orm import DeliveryRow, DocumentRow, FailedMessageRow
from jobfit.shared.schemas import MessageRejectedError

pytestmark = pytest.mark.integration
TIMEOUT = 60


def seed(session_factory, task_id: str, name: str, count: int, state: str) -> None:
    with session_factory.begin() as s:
        for _ in range(count):
            repo.begin_deliveries(session=s, messages=[(f"{task_id}:0", name)])
        repo.set_delivery_state(session=s, keys=[f"{task_id}:0"], state=state)


def delivery(session_factory, task_id: str) -> DeliveryRow:
    with session_factory() as s:
        return s.execute(select(DeliveryRow).where(DeliveryRow.key == f"{task_id}:0")).scalar_one()


@pytest.mark.parametrize("name", [INGEST_RESUME, SCORE_RESUME])
def test_a_message_that_keeps_losing_its_worker_is_dead_lettered(
    name, worker, celery_app, settings, clean_db, session_factory
):
    task_id = str(uuid.uuid4())
    seed(session_factory, task_id, name, settings.broker.max_deliveries, "alone")
    kwargs = (
        {"document": {"id": "r-poison", "skills": ["Python"]}}
        if name == INGEST_RESUME
        else {"resume_id": "r-poison"}
    )
    res = celery_app.send_task(name, kwargs=kwargs, task_id=task_id)
    out = res.get(timeout=TIMEOUT, propagate=False)
    assert res.state == "FAILURE" and isinstance(out, MessageRejectedError), out
    assert "dead-lettered" in str(out), out
    assert f"delivered {settings.broker.max_deliveries + 1} times" in str(out)
    d = delivery(session_factory, task_id)
    assert (d.count, d.state) == (settings.broker.max_deliveries + 1, "dead")
    with session_factory() as s:
        rows = s.execute(select(FailedMessageRow).where(FailedMessageRow.task_id == task_id))
        assert ["dead-lettered" in r.reason for r in rows.scalars()] == [True]
        assert s.execute(select(DocumentRow)).first() is None, "it was not run"
    assert worker.alive() and worker.ping()


def test_a_suspect_runs_alone_and_finishes(worker, celery_app, clean_db, session_factory):
    """Delivered once before without finishing: runs (alone), and is marked done."""
    task_id = str(uuid.uuid4())
    seed(session_factory, task_id, INGEST_RESUME, 1, "running")
    doc = {"id": "r-suspect", "skills": ["Python"]}
    out = celery_app.send_task(INGEST_RESUME, kwargs={"document": doc}, task_id=task_id).get(
        timeout=TIMEOUT
    )
    assert out["status"] == "created", out
    d = delivery(session_factory, task_id)
    assert (d.count, d.state) == (2, "done")


@pytest.mark.parametrize("name", [INGEST_RESUME, SCORE_RESUME])
def test_a_finished_task_delivered_again_is_not_run(
    name, worker, client, session_factory, clean_db
):
    doc = {"id": "r-dup", "skills": ["Python"]}
    first = client.submit_resume(doc)
    assert first.get(timeout=TIMEOUT)["status"] == "created"
    kwargs: dict = {"document": doc}
    if name == SCORE_RESUME:
        first = client.request_matches("r-dup")
        assert first.get(timeout=TIMEOUT)["status"] == "ok"
        kwargs = {"resume_id": "r-dup"}
    # The same message again (its result key is the same, so the worker's log tells).
    client.app.send_task(name, kwargs=kwargs, task_id=first.id)
    line = f"{name}[{first.id}] delivered again after it finished: not run"
    deadline = time.monotonic() + TIMEOUT
    while line not in worker.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, "the redelivery was not recognised"
        time.sleep(0.2)
    d = delivery(session_factory, first.id)
    assert (d.count, d.state) == (1, "done")

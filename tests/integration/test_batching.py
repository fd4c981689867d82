"""Cross-task batching on a real worker: many messages, one batch, each message answered; and
a worker killed mid-batch loses nothing (messages are acknowledged after the commit)."""

from __future__ import annotations

import re
import time

import pytest
from sqlalchemy import func, select

from jobfit.shared.client import JobfitClient
from jobfit.shared.orm import DeliveryRow, DocumentRow, FieldEmbeddingRow
from tests.conftest import isolated
from tools.procs import WorkerProcess

pytestmark = pytest.mark.integration

TIMEOUT = 180


def resumes(n: int, tag: str) -> list[dict]:
    """Resumes with texts of their own (nothing cached), a few sharing one skills text."""
    return [
        {
            "id": f"{tag}-{i}",
            "skills": ["Python", "SQL"] if i % 3 == 0 else [f"Skill {tag} {i}", "Go"],
            "positions": [f"Engineer {tag} {i}", "Analyst"],
            "degrees": [f"BSc {i}"],
        }
        for i in range(n)
    ]


def count(session_factory, table) -> int:
    with session_factory() as s:
        return s.execute(select(func.count()).select_from(table)).scalar_one()


def test_messages_are_batched_each_answered_and_embedded_once(
    worker, client, clean_db, session_factory
):
    docs = resumes(60, "b")
    results = [client.submit_resume(d, score=False) for d in docs]
    out = [r.get(timeout=TIMEOUT) for r in results]
    assert [o["status"] for o in out] == ["created"] * len(docs)
    assert [o["document_id"] for o in out] == [d["id"] for d in docs]
    assert count(session_factory, DocumentRow) == len(docs)
    texts = count(session_factory, FieldEmbeddingRow)
    assert sum(o["embedded"] for o in out) == texts, "each new text counted once"
    sizes = [
        int(n)
        for n in re.findall(r"batch of (\d+) jobfit.ingest_resume", worker.log_path.read_text())
    ]
    assert max(sizes) > 1, f"messages were batched: {sizes}"
    # A redelivery (same documents again) is answered from the stored rows: nothing embedded.
    again = [client.submit_resume(d, score=False).get(timeout=TIMEOUT) for d in docs[:5]]
    assert {o["status"] for o in again} == {"unchanged"}
    assert sum(o["embedded"] for o in again) == 0


def interrupt_mid_batch(
    settings, tmp_path, session_factory, tag: str, env: dict[str, str], interrupt, pause_s: float
) -> None:
    """120 resumes to a worker of batches of 16; ``interrupt(worker)`` once a first batch is
    committed and the next ones are in flight; after ``pause_s`` a new worker finishes the
    job. Every document must be stored, once."""
    own, app = isolated(settings, tag)
    client = JobfitClient(app=app)
    w = WorkerProcess(own, app, tag, tmp_path / f"{tag}.log", env=env)
    w.start()
    docs = resumes(120, tag)
    for d in docs:
        client.submit_resume(d, score=False)
    deadline = time.monotonic() + TIMEOUT
    while "batch of" not in w.log_path.read_text():  # one batch committed, the next ones in flight
        assert time.monotonic() < deadline
        time.sleep(0.05)
    interrupt(w)
    assert count(session_factory, DocumentRow) < len(docs), "interrupted before the end"
    time.sleep(pause_s)
    w.start()
    try:
        while count(session_factory, DocumentRow) < len(docs):
            assert time.monotonic() < deadline, "a message was lost"
            time.sleep(0.2)
    finally:
        w.stop()
    with session_factory() as s:
        ids = list(s.execute(select(DocumentRow.external_id)).scalars())
    assert sorted(ids) == sorted(d["id"] for d in docs), "every document once"


def test_worker_killed_mid_batch_loses_nothing(settings, clean_db, tmp_path, session_factory):
    # Redis restores an unacknowledged message once its visibility timeout has passed: a
    # short one here, so the restarted worker gets the killed worker's batch back.
    env = {"JOBFIT_BROKER__VISIBILITY_TIMEOUT_S": "4", "JOBFIT_BATCH__MAX_TASKS": "16"}
    interrupt_mid_batch(
        settings, tmp_path, session_factory, "kill", env, WorkerProcess.kill, pause_s=5
    )


def test_warm_shutdown_finishes_the_running_batch_and_hands_back_the_rest(
    settings, clean_db, tmp_path, session_factory
):
    # SIGTERM while batches are in flight: the batch running in the pipeline thread commits
    # and is acknowledged before the worker exits; the prefetched ones go back to the queue
    # unstarted. After a restart every document is stored once and no message ran twice.
    def stop(w: WorkerProcess) -> None:
        w.stop()
        assert w.proc is not None and w.proc.returncode == 0, w.log_path.read_text()[-3000:]

    env = {"JOBFIT_BATCH__MAX_TASKS": "16"}
    interrupt_mid_batch(settings, tmp_path, session_factory, "term", env, stop, pause_s=0)
    with session_factory() as s:
        counts = list(s.execute(select(DeliveryRow.count)).scalars())
    assert len(counts) == 120 and set(counts) == {1}, "no message ran twice"

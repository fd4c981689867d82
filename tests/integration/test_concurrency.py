"""Several worker processes at once: resumes and jobs racing each other are all matched."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from jobfit.shared.orm import FieldEmbeddingRow, MatchRow
from jobfit.workers.procs import WorkerProcess

pytestmark = pytest.mark.integration


@pytest.fixture()
def prefork_worker(settings, celery_app, tmp_path):
    """A second worker: prefork with two children, each loading its model after the fork."""
    w = WorkerProcess(
        settings,
        celery_app,
        "prefork",
        tmp_path / "prefork.log",
        extra=("--pool", "prefork", "--concurrency", "2"),
    )
    w.start()
    yield w
    w.stop()


def test_interleaved_resumes_and_jobs_on_three_executors(
    worker, prefork_worker, client, clean_db, session_factory
):
    n = 8
    shared_skills = ["Python", "SQL"]  # the same text in every resume, embedded concurrently
    results = []
    for i in range(n):
        results.append(
            client.submit_job(
                {"id": f"j{i}", "title": f"Engineer {i}", "skills_required": shared_skills}
            )
        )
        results.append(
            client.submit_resume(
                {"id": f"r{i}", "skills": shared_skills, "positions": [f"Developer {i}"]}
            )
        )
    summaries = [r.get(timeout=120) for r in results]
    assert {s["status"] for s in summaries} == {"created"}
    assert len({s["model_version"] for s in summaries}) == 1
    with session_factory() as s:
        matches = s.execute(select(func.count()).select_from(MatchRow)).scalar_one()
        texts = s.execute(select(func.count()).select_from(FieldEmbeddingRow)).scalar_one()
    assert matches == n * n, "every (resume, job) matched, whatever the arrival order"
    # skills text shared by all resumes; 'Skills required' shared by all jobs; per-doc titles,
    # positions and experience texts: stored once each
    assert texts == 2 + n + 2 * n
    # ...and sent to the model once each, although several workers needed them at once.
    assert sum(s["embedded"] for s in summaries) == texts
    deadline = time.monotonic() + 60  # each child loads at its start, whether or not it works
    while (log := prefork_worker.log_path.read_text()).count("loaded model") < 2:
        assert time.monotonic() < deadline, "one model per child process"
        time.sleep(0.5)
    assert log.count("loaded model") == 2
    # Both served: each logs its batch after answering its messages, so wait for the lines.
    while not all("batch of" in w.log_path.read_text() for w in (worker, prefork_worker)):
        assert time.monotonic() < deadline, "both served"
        time.sleep(0.2)


def test_a_text_reaches_the_model_once_when_workers_need_it_at_the_same_time(
    worker, prefork_worker, client, clean_db, session_factory
):
    # Identical long field texts under different ids: the first three tasks run at once on
    # three executors (once both prefork children have their model), all missing the same texts.
    deadline = time.monotonic() + 120
    while prefork_worker.log_path.read_text().count("serving model version") < 2:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    long_skills = [f"skill {i} with a long description of the work involved" for i in range(60)]
    docs = [
        {"id": f"same-{i}", "skills": long_skills, "positions": ["Engineer"], "degrees": ["BSc"]}
        for i in range(9)
    ]
    summaries = [r.get(timeout=120) for r in [client.submit_resume(d) for d in docs]]
    assert {s["status"] for s in summaries} == {"created"}
    with session_factory() as s:
        texts = s.execute(select(func.count()).select_from(FieldEmbeddingRow)).scalar_one()
    assert texts == 4  # skills, positions, degrees, experience
    assert sum(s["embedded"] for s in summaries) == texts
    # A repeated run embeds nothing new.
    again = [r.get(timeout=120) for r in [client.submit_resume(d) for d in docs]]
    assert {s["status"] for s in again} == {"unchanged"}
    assert sum(s["embedded"] for s in again) == 0

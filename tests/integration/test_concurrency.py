"""Several worker processes at once: resumes and jobs racing each other are all matched. (An
embed worker is one solo process holding one model; more executors are more workers. A prefork
embed worker is refused at its start.)"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from jobfit.shared.orm import FieldEmbeddingRow, MatchRow
from tools.procs import WorkerProcess

pytestmark = pytest.mark.integration


@pytest.fixture()
def more_workers(settings, celery_app, tmp_path):
    """Two more embed workers beside the session's one: three executors, three models."""
    workers = [
        WorkerProcess(settings, celery_app, f"more{i}", tmp_path / f"more{i}.log") for i in range(2)
    ]
    try:
        for w in workers:
            w.start()
        yield workers
    finally:
        for w in workers:
            w.stop()


def test_interleaved_resumes_and_jobs_on_three_executors(
    worker, more_workers, client, clean_db, session_factory
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
    for w in more_workers:
        assert w.log_path.read_text().count("serving model version") == 1, "one model each"


def test_a_text_reaches_the_model_once_when_workers_need_it_at_the_same_time(
    worker, more_workers, client, clean_db, session_factory
):
    # Identical long field texts under different ids: the first three tasks run at once on
    # three executors (each worker loaded its model before it answered its first ping), all
    # missing the same texts.
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


def test_a_prefork_embed_worker_is_refused(settings, celery_app, tmp_path):
    w = WorkerProcess(
        settings,
        celery_app,
        "prefork",
        tmp_path / "prefork.log",
        extra=("--pool", "prefork", "--concurrency", "2"),
    )
    with pytest.raises(RuntimeError, match="worker died"):
        w.start()
    w.stop()
    assert "runs in batches on the solo pool" in w.log_path.read_text()

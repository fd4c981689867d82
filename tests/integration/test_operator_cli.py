"""What an operator or a newcomer meets on the command line: `jobfit failures`, `jobfit
metrics`, and the errors of a wrong setup (one line with the cause and the fix, a non-zero
exit, no traceback unless `--debug`). Real processes on the test database and broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from jobfit.shared import repository as repo
from jobfit.shared.celery_app import INGEST_JOB
from jobfit.shared.client import JobfitClient
from jobfit.shared.db import transaction
from jobfit.shared.schemas import MessageRejectedError
from tests.conftest import get, isolated
from tools.procs import ROOT, WorkerProcess, free_port, settings_env

pytestmark = pytest.mark.integration

BAD_DB = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
BAD_BROKER = "redis://127.0.0.1:1/0"


def jobfit(settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobfit", *args],
        env={**os.environ, **settings_env(settings), "COLUMNS": "300", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line_error(out: subprocess.CompletedProcess[str], *words: str) -> None:
    assert out.returncode != 0, out
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), out.stderr
    assert "Traceback" not in out.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture()
def recorded(settings, session_factory, clean_db):
    older = repo.Failure("unknown task name 'x.y'", '{"a": 1}', "x.y", "t-1")
    newer = repo.Failure(
        "skills: Input should be a valid list", '{"id": "R-9"}', "jobfit.ingest_resume", "t-2"
    )
    with transaction(session_factory) as s:
        repo.record_failed_messages(session=s, failures=[older])
    time.sleep(0.01)
    with transaction(session_factory) as s:
        repo.record_failed_messages(session=s, failures=[newer])


def test_failures_lists_newest_first(settings, recorded):
    out = jobfit(settings, "failures", "--json")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["task"] for r in rows] == ["jobfit.ingest_resume", "x.y"]
    assert rows[0]["reason"].startswith("skills:") and '"R-9"' in rows[0]["payload"]
    table = jobfit(settings, "failures")
    assert table.returncode == 0 and "unknown task name" in table.stdout


def test_metrics_endpoint(settings, recorded, worker):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobfit", "metrics", "--port", str(port), "--address", "127.0.0.1"],
        env={**os.environ, **settings_env(settings)},
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body = get(f"http://127.0.0.1:{port}/metrics", timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert status == 200
    assert 'jobfit_queue_depth{queue="embed"}' in body
    assert 'jobfit_queue_depth{queue="train"}' in body
    assert "jobfit_failed_messages_total{reason=\"unknown task name 'x.y'\"} 1.0" in body
    assert 'jobfit_failed_messages_total{reason="skills"} 1.0' in body
    assert "jobfit_active_model_info{version=" in body
    assert 'jobfit_up{source="database"} 1.0' in body


def test_an_embed_worker_serves_its_batch_sizes(settings, clean_db, tmp_path):
    """Batch sizes are only known inside a worker: it serves them itself when given a port."""
    own, app = isolated(settings, "worker-metrics")
    port = free_port()
    w = WorkerProcess(
        own,
        app,
        "metrics",
        tmp_path / "w.log",
        env={"JOBFIT_METRICS__WORKER_PORT": str(port)},
    )
    w.start()
    try:
        client = JobfitClient(app=app)
        sent = [client.submit_job({"id": f"wm-{i}", "title": f"Job {i}"}) for i in range(3)]
        for r in sent:
            r.get(timeout=120)
        with pytest.raises(MessageRejectedError):
            client.app.send_task(INGEST_JOB, kwargs={"document": {"id": "no title"}}).get(120)
        deadline = time.monotonic() + 30  # a batch is counted just after its results
        while True:
            status, body = get(f"http://127.0.0.1:{port}/metrics", timeout=5)
            samples = {
                line.split(" ")[0]: float(line.split(" ")[1])
                for line in body.splitlines()
                if line.startswith("jobfit_ingest")
            }
            if samples.get("jobfit_ingest_batch_messages_sum") == 4 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
    finally:
        w.stop()
    assert status == 200
    assert samples["jobfit_ingest_batch_messages_count"] >= 2, body  # one batch or more
    assert samples["jobfit_ingest_batch_messages_sum"] == 4, body
    assert samples['jobfit_ingest_messages_total{outcome="done"}'] == 3, body
    assert samples['jobfit_ingest_messages_total{outcome="refused"}'] == 1, body


def test_wrong_database_url_is_one_line(settings):
    for cmd in (["models"], ["matches", "R-1"]):
        one_line_error(jobfit(settings, *cmd, JOBFIT_DB__URL=BAD_DB), "database", "JOBFIT_DB__URL")
    debug = jobfit(settings, "--debug", "models", JOBFIT_DB__URL=BAD_DB)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_wrong_broker_url_fails_fast_and_names_the_broker(settings):
    t0 = time.monotonic()
    out = jobfit(
        settings, "submit", "job", str(ROOT / "shared/sample/jobs.jsonl"),
        JOBFIT_BROKER__URL=BAD_BROKER,
    )  # fmt: skip
    one_line_error(out, "broker", "127.0.0.1:1", "JOBFIT_BROKER__URL")
    assert time.monotonic() - t0 < 15


def test_every_invalid_line_is_reported(settings, tmp_path: Path):
    f = tmp_path / "jobs.jsonl"
    f.write_text(
        '{"id": "J-1", "title": "ok"}\n{"id": "J-2"}\nnot json\n{"id": "J-4", "title": 5}\n'
    )
    out = jobfit(settings, "submit", "job", str(f))
    assert out.returncode == 2
    assert "line 2 (id 'J-2')" in out.stderr and "line 3" in out.stderr
    assert "line 4 (id 'J-4')" in out.stderr and "3 invalid of 4: nothing sent" in out.stderr


def test_submit_wait_counts_outcomes(settings, worker, clean_db, tmp_path):
    """Counts per outcome (the client refuses what the worker would, so a worker's refusal
    is counted by ``outcome``: tests/unit/test_producer_side.py)."""
    f = tmp_path / "jobs.jsonl"
    f.write_text('{"id": "W-1", "title": "Welder"}\n{"id": "W-2", "title": "Plumber"}\n')
    out = jobfit(settings, "submit", "job", str(f), "--wait")
    assert out.returncode == 0 and "2 created" in out.stderr, out.stderr
    again = jobfit(settings, "submit", "job", str(f), "--wait")
    assert again.returncode == 0 and "2 unchanged" in again.stderr, again.stderr


def test_retrain_and_evaluate_without_labels(settings, clean_db, session_factory):
    with session_factory.begin() as s:
        assert repo.label_count(session=s) == 0
    for cmd in (["retrain"], ["evaluate"]):
        one_line_error(jobfit(settings, *cmd), "no labels", "submit_label")


def test_retrain_wait_without_a_train_worker(settings, session_factory):
    with transaction(session_factory) as s:
        repo.upsert_labels(session=s, labels=[repo.LabelIn("R-x", "J-x", 0.5)], source="test")
    try:
        out = jobfit(settings, "retrain", "--wait")
        one_line_error(
            type(out)(out.args, out.returncode, out.stdout, out.stderr.split("\n", 1)[1]),
            "no running worker consumes the train queue",
            "jobfit worker --queues train",
        )
    finally:
        with session_factory.begin() as s:
            s.execute(text("TRUNCATE labels"))

"""Flower as operators run it (`jobfit flower`, a real process) on the test broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import AUTH, get, run_flower
from tools.procs import ROOT, settings_env

pytestmark = pytest.mark.integration


def test_flower_refuses_to_start_without_credentials(settings):
    out = subprocess.run(
        [sys.executable, "-m", "jobfit", "flower"],
        env={**os.environ, **settings_env(settings)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "no credentials" in out.stderr


@pytest.fixture()
def flower(settings, tmp_path):
    with run_flower(settings, tmp_path, AUTH) as base:
        yield base


def test_flower_with_basic_auth_shows_the_worker_and_counts_tasks(flower, worker, client, clean_db):
    assert get(f"{flower}/")[0] == 401
    assert get(f"{flower}/api/workers")[0] == 401
    assert get(f"{flower}/", auth=("ops", "wrong"))[0] == 401
    time.sleep(2)  # Flower subscribes to worker events
    results = [client.submit_job({"id": f"fj{i}", "title": f"Flower job {i}"}) for i in range(3)]
    assert all(r.get(timeout=120)["status"] == "created" for r in results)
    deadline = time.monotonic() + 30
    while True:
        status, body = get(f"{flower}/api/workers?refresh=1", auth=AUTH)
        metrics = get(f"{flower}/metrics")[1]
        counted = [
            line
            for line in metrics.splitlines()
            if line.startswith("flower_events_total")
            and 'task="jobfit.ingest_job"' in line
            and 'type="task-succeeded"' in line
        ]
        if status == 200 and worker.hostname in json.loads(body) and counted:
            break
        assert time.monotonic() < deadline, (status, metrics[-2000:])
        time.sleep(0.5)
    assert float(counted[0].rsplit(" ", 1)[1]) >= 3


def test_flower_broker_page_and_queue_lengths(flower, worker):
    """Flower reads queue lengths with its own Redis client: the URL it is given must have a
    scheme it knows (jobfit's workers use a transport class of their own)."""
    if not worker.settings.broker.url.startswith("redis"):
        pytest.skip("Flower asks RabbitMQ's management API, not run here")
    time.sleep(2)  # Flower learns the workers' queues from them
    status, body = get(f"{flower}/api/queues/length", auth=AUTH)
    assert status == 200, body
    assert "embed" in {q["name"] for q in json.loads(body)["active_queues"]}
    status, body = get(f"{flower}/broker", auth=AUTH)
    assert status == 200 and "embed" in body


def test_flower_shows_a_refused_message_as_failed(flower, worker, celery_app, clean_db):
    """A message the worker refuses is a FAILURE in Flower (its Failed filter finds it), with
    the reason, not a green SUCCESS."""
    time.sleep(2)  # Flower subscribes to worker events
    res = celery_app.send_task("jobfit.ingest_resume", kwargs={"document": {"skills": ["x"]}})
    res.get(timeout=120, propagate=False)
    deadline = time.monotonic() + 30
    while True:
        status, body = get(f"{flower}/api/task/info/{res.id}", auth=AUTH)
        info = json.loads(body) if status == 200 else {}
        if info.get("state") == "FAILURE":
            break
        assert time.monotonic() < deadline, (status, body[:2000])
        time.sleep(0.5)
    assert "MessageRejectedError" in info["exception"] and "id: Field required" in info["exception"]

"""Flower as operators run it (`jobfit flower`, a real process) on the test broker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode

import pytest

from tools.procs import ROOT, settings_env

pytestmark = pytest.mark.integration

AUTH = ("ops", "s3cret-test")


def get(url: str, auth: tuple[str, str] | None = None, timeout: float = 30) -> tuple[int, str]:
    """(status, body) of a GET, with HTTP basic auth when given."""
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    port = free_port()
    env = {
        **os.environ,
        **settings_env(settings),
        "JOBFIT_FLOWER__BASIC_AUTH": ":".join(AUTH),
        "JOBFIT_FLOWER__PORT": str(port),
        "JOBFIT_FLOWER__DB": str(tmp_path / "flower.db"),
    }
    log = (tmp_path / "flower.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobfit", "flower", "--address", "127.0.0.1"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            get(f"{base}/healthcheck", timeout=1.0)
            break
        except OSError:
            assert proc.poll() is None, (tmp_path / "flower.log").read_text()
            assert time.monotonic() < deadline, "flower did not start"
            time.sleep(0.3)
    yield base
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


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

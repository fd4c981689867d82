# ruff: noqa: F811  (the module fixtures of test_training, imported, are arguments here)
"""Watching long tasks live: a real train worker, a real embed worker and a real
``jobfit flower``. During a retrain that runs for more than a minute Flower reports the train
worker online and the task STARTED/PROGRESS with its progress fields, and
``jobfit health --hostname`` passes; after it, SUCCESS. The same for the rescore the promotion
sends to the embed worker. ``JOBFIT_SCREENSHOTS=DIR`` also saves Flower's pages mid-run as
PNGs (headless Chromium)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobfit.shared.client import read_documents
from tests.conftest import AUTH, get, run_flower
from tests.integration.test_training import (  # noqa: F401  (module fixtures, reused)
    SAMPLE,
    TIMEOUT,
    labelled,
    tapp,
    tclient,
    tfactory,
    tsettings,
    workers,
)
from tools.procs import ROOT, settings_env

pytestmark = pytest.mark.integration

# A full fine-tune of MiniLM bounded by time, not steps (a step takes 2 s on an idle 2-core
# CPU and 5 s on a busy one): the retrain outlasts a minute on any machine.
FINE_TUNE_S = float(os.environ.get("JOBFIT_LIVE_FINE_TUNE_S", "62"))
PROGRESS_FIELDS = {"stage", "done", "total", "loss", "eta_s"}


@pytest.fixture(scope="module")
def flower(tsettings, tmp_path_factory):
    with run_flower(tsettings, tmp_path_factory.mktemp("flower"), AUTH) as base:
        yield base


def api(flower: str, path: str, missing_ok: bool = False) -> dict:
    status, body = get(f"{flower}{path}", auth=AUTH, timeout=10)
    if status == 404 and missing_ok:  # a task Flower has not heard of yet
        return {}
    assert status == 200, (path, status)
    return json.loads(body)


def healthy(tsettings, hostname: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobfit", "health", "--no-model", "--hostname", hostname],
        env={**os.environ, **settings_env(tsettings)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def screenshot(flower: str, page: str, name: str) -> None:
    out = os.environ.get("JOBFIT_SCREENSHOTS")
    chromium = shutil.which("chromium")
    if not out or not chromium:
        return
    user, password = AUTH
    url = flower.replace("http://", f"http://{user}:{password}@") + page
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--window-size=1400,900", "--virtual-time-budget=4000",
         f"--screenshot={Path(out) / name}", url],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip


def watch(flower, tsettings, task_id: str, hostname: str, shots: dict[str, str] | None = None):
    """Poll Flower while the task runs: what it said about the worker and the task, and
    whether the worker's healthcheck passed mid-run."""
    seen: dict = {"states": set(), "online": [], "fields": set(), "health": None}
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        info = api(flower, f"/api/task/info/{task_id}", missing_ok=True)
        state = info.get("state")
        if state in {"SUCCESS", "FAILURE"}:
            seen["final"] = info
            return seen
        if state in {"STARTED", "PROGRESS"}:
            seen["states"].add(state)
            seen["online"].append(api(flower, "/api/workers?status=true").get(hostname))
            assert info.get("worker") == hostname
            if seen["health"] is None:  # the worker's healthcheck, mid-run
                seen["health"] = healthy(tsettings, hostname)
            if state == "PROGRESS":
                result = str(info.get("result"))
                seen["fields"] |= {
                    k for k in PROGRESS_FIELDS | {"loss", "eta_s"} if f"{k}=" in result
                }
                for page, name in (shots or {}).items():
                    screenshot(flower, page.format(task_id=task_id), name)
                shots = None
        time.sleep(0.5)
    pytest.fail(f"task {task_id} not done in {TIMEOUT}s")


def test_flower_and_health_follow_a_long_retrain_and_its_rescore(
    labelled, workers, tclient, tsettings, flower
):
    # More documents, so that the rescore after the promotion is long enough to watch.
    docs = [tclient.submit_job(j) for j in read_documents(SAMPLE / "jobs.jsonl")]
    docs += [tclient.submit_resume(r) for r in read_documents(SAMPLE / "resumes.jsonl")]
    assert all(r.get(timeout=TIMEOUT)["status"] in {"created", "unchanged"} for r in docs)
    t0 = time.monotonic()
    result = tclient.retrain(
        mode="full",
        max_steps=10_000,
        time_budget_s=FINE_TUNE_S,
        promote_margin=-1.0,
        regress_margin=1.0,  # promoted whatever it scores: the rescore follows
    )
    train = workers["train"].hostname
    seen = watch(
        flower,
        tsettings,
        result.id,
        train,
        shots={"/": "flower-dashboard.png", "/task/{task_id}": "flower-retrain-progress.png",
               "/broker": "flower-broker.png"},
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    out = result.get(timeout=TIMEOUT)
    assert out["status"] == "promoted", out
    assert elapsed > 60, f"the retrain took {elapsed:.0f}s"
    assert seen["final"]["state"] == "SUCCESS"
    assert "PROGRESS" in seen["states"]
    assert seen["online"] and all(seen["online"]), seen["online"]
    assert {"stage", "done", "total", "loss", "eta_s"} <= seen["fields"], seen["fields"]
    assert seen["health"].returncode == 0, seen["health"].stdout + seen["health"].stderr
    assert "busy: jobfit.retrain" in seen["health"].stdout
    print(f"retrain {elapsed:.0f}s")

    # The promotion sent a rescore to the embed worker: the same, there.
    embed = workers["embed"].hostname
    rescore_id = ""
    deadline = time.monotonic() + 60
    while not rescore_id and time.monotonic() < deadline:
        tasks = api(flower, "/api/tasks?taskname=jobfit.rescore")
        rescore_id = next(iter(tasks), "")
        time.sleep(0.2)
    assert rescore_id, "no rescore after the promotion"
    t1 = time.monotonic()
    seen = watch(flower, tsettings, rescore_id, embed)
    assert seen["final"]["state"] == "SUCCESS", seen["final"]
    # It embeds every text again with the new version: seconds, seen while it runs.
    assert seen["states"], "the rescore was never seen running"
    assert seen["online"] and all(seen["online"]), seen["online"]
    assert seen["health"].returncode == 0, seen["health"].stdout + seen["health"].stderr
    print(f"rescore {time.monotonic() - t1:.0f}s, seen {sorted(seen['states'])}")

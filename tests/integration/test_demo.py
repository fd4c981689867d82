"""`python -m tools demo` (`make demo`), the main job, as a newcomer runs it (with the small
model)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import private_database
from tools.procs import ROOT, RUN_ID, settings_env

pytestmark = pytest.mark.integration


def run_demo(env: dict[str, str], backend: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools", "demo", "--backend", backend, "--show", "2"],
        env={**os.environ, **env, "COLUMNS": "200"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture()
def demo_db():
    """The demo promotes a fine-tuned version: its own database keeps that from the other
    tests' worker."""
    yield from private_database("_demo")


def test_demo_on_services_fine_tunes_and_scores_every_pair(settings, demo_db, tmp_path):
    env = settings_env(settings)
    env["JOBFIT_DB__URL"] = demo_db
    env["JOBFIT_MODEL__STORE"] = str(tmp_path / "models")
    env["JOBFIT_BROKER__KEY_PREFIX"] = f"jobfit-demo-{RUN_ID}:"  # its own worker, its own queue
    out = run_demo(env, "services")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "backend: services" in out.stdout
    assert "retrain: promoted" in out.stdout
    assert "held-out resumes of the sample" in out.stdout
    assert "match rows in the database for the sample: 840 of 840" in out.stdout
    assert "Spearman" in out.stdout
    assert "-ft-" in out.stdout  # the tables name the fine-tuned version


def test_demo_falls_back_to_embedded_when_services_are_down(settings, tmp_path):
    """... and reports the version as served: on ONNX (the default on a CPU) the rows name
    ``<version>+onnx``, not the registry's version."""
    env = settings_env(settings)
    env["JOBFIT_MODEL__STORE"] = str(tmp_path / "models")
    env["JOBFIT_MODEL__BACKEND"] = "onnx"
    env["JOBFIT_BROKER__URL"] = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    env["JOBFIT_DB__URL"] = "postgresql+psycopg://postgres@127.0.0.1:1/jobfit"  # nor here
    out = run_demo(env, "auto")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "unreachable" in out.stdout
    assert "backend: embedded" in out.stdout
    assert "match rows in the database for the sample: 840 of 840" in out.stdout
    # the ranked tables name the served variant
    assert re.search(r"resume \S+ — model \S+\+onnx", out.stdout), out.stdout[-3000:]
    assert "database: embedded Postgres with pgvector" in out.stdout

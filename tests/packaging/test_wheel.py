"""The wheel as integrators install it, in fresh virtual environments: a producer (no extras:
no numpy, no torch, one import root) and a worker (``jobfit[worker]``, no ``--no-deps``
step) that scores a document the producer sent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobfit.shared.config import Settings
from tools.procs import ROOT, RUN_ID, settings_env

pytestmark = pytest.mark.integration

# The worker venv takes torch from the same pin as the Makefile (a local CPU build here).
TORCH = "torch==2.13.0"


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 900) -> str:
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd}: {out.stdout[-3000:]}{out.stderr[-3000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    # As a release is made: the sdist (the links resolved into real files), then the wheel
    # built from it.
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)])
    [whl] = dist.glob("jobfit-*.whl")
    [sdist] = dist.glob("jobfit-*.tar.gz")
    with tarfile.open(sdist) as tar:
        assert not [m.name for m in tar.getmembers() if m.issym() or m.islnk()]
    return whl


def venv(where: Path, *requirements: str) -> Path:
    run([sys.executable, "-m", "venv", str(where)])
    pip = [str(where / "bin" / "python"), "-m", "pip", "install", "-q"]
    for req in requirements:  # in order: torch first, as the Makefile does
        run([*pip, req])
    return where / "bin"


def test_the_wheel_has_one_import_root(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/", 1)[0] for n in names if ".dist-info/" not in n} == {"jobfit"}
    assert "jobfit/shared/migrations/versions/0001_initial_schema.py" in names
    assert "jobfit/shared/sample/labels.csv" in names
    assert not any(n.startswith(("jobfit/tools", "tools/", "tests/")) for n in names)


@pytest.fixture(scope="module")
def producer(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return venv(tmp_path_factory.mktemp("producer") / "venv", str(wheel))


@pytest.fixture(scope="module")
def worker_bin(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return venv(tmp_path_factory.mktemp("worker") / "venv", TORCH, f"{wheel}[worker,minilm]")


def test_producer_install_has_no_numpy_no_torch_and_one_new_top_level_name(
    producer: Path, settings: Settings
) -> None:
    py = str(producer / "python")
    installed = {
        p["name"].lower() for p in json.loads(run([py, "-m", "pip", "list", "--format=json"]))
    }
    assert not {"torch", "numpy", "sentence-transformers", "celery-batches"} & installed
    code = (
        "import sys, jobfit; from jobfit import JobfitClient;"
        "import jobfit.cli, jobfit.shared.client, jobfit.shared.repository;"
        "bad = [m for m in ('numpy', 'torch', 'sentence_transformers') if m in sys.modules];"
        "assert not bad, bad; print(JobfitClient.__module__)"
    )
    assert run([py, "-c", code]).strip() == "jobfit.shared.client"
    # Top-level import names the wheel added: only jobfit.
    site = run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    dist_info = next(Path(site).glob("jobfit-*.dist-info"))
    paths = [line.split(",")[0] for line in (dist_info / "RECORD").read_text().splitlines()]
    tops = {p.split("/")[0] for p in paths if not p.startswith("..")}  # ../bin: the script
    assert tops == {"jobfit", dist_info.name}
    schema = json.loads(run([str(producer / "jobfit"), "schema"]))
    assert "ResumeDocument" in json.dumps(schema)
    env = {**os.environ, **settings_env(settings)}
    out = run([str(producer / "jobfit"), "health", "--no-model", "--workers", "0"], env=env)
    assert "broker" in out and "database" in out
    commands = {
        line.strip("│ ").split(" ")[0]
        for line in run([str(producer / "jobfit"), "--help"]).splitlines()
    }
    assert {"submit", "matches", "health", "retrain"} <= commands
    assert not {"worker", "flower", "model"} & commands  # the worker extra's commands


@pytest.fixture()
def wheel_worker(worker_bin: Path, settings: Settings, tmp_path: Path) -> Iterator[str]:
    own = settings.model_copy(deep=True)
    own.broker.key_prefix = f"{settings.broker.key_prefix}wheel:"
    env = {**os.environ, **settings_env(own)}
    hostname = f"wheel@{RUN_ID}"
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen(
        [str(worker_bin / "jobfit"), "worker", "--queues", "embed", "--hostname", hostname],
        env=env,
        cwd=tmp_path,  # not the repository: only what the wheel installed
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield own.broker.key_prefix
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_worker_install_scores_what_a_producer_install_sent(
    producer: Path, wheel_worker: str, settings: Settings, tmp_path: Path
) -> None:
    own = settings.model_copy(deep=True)
    own.broker.key_prefix = wheel_worker
    env = {**os.environ, **settings_env(own)}
    script = (
        "from jobfit import JobfitClient\n"
        "c = JobfitClient()\n"
        "c.submit_job({'id': 'wheel-job', 'title': 'Data Engineer',"
        " 'skills_required': ['SQL', 'Python']}).get(timeout=300)\n"
        "r = c.submit_resume({'id': 'wheel-resume', 'skills': ['Python', 'SQL']})"
        ".get(timeout=300)\n"
        "print(r['status'], r['scored'] >= 1, 'wheel-job' in [t['id'] for t in r['top']])\n"
        # The read path: Postgres only, no worker round trip, no numpy or torch (other tests'
        # documents may share this database: pick the pair out of the rankings).
        "(m,) = [x for x in c.top_jobs('wheel-resume', k=100) if x.job_id == 'wheel-job']\n"
        "(n,) = [x for x in c.top_candidates('wheel-job', k=100)"
        " if x.resume_id == 'wheel-resume']\n"
        "print(m.job_id, n.resume_id, m.score == n.score, sorted(m.pair_scores))\n"
        "import sys; assert 'numpy' not in sys.modules and 'torch' not in sys.modules\n"
    )
    t0 = time.monotonic()
    out = run([str(producer / "python"), "-c", script], env=env, timeout=600)
    assert out.split() == [
        "created",
        "True",
        "True",
        "wheel-job",
        "wheel-resume",
        "True",
        "['skills']",  # the one pair type both have
    ], out
    matches = run(
        [str(producer / "jobfit"), "matches", "wheel-resume"], env={**env, "COLUMNS": "200"}
    )
    assert "wheel-job" in matches, matches
    assert time.monotonic() - t0 < 600

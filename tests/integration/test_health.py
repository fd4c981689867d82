"""`jobfit health` against real services: passes with everything up, fails clearly without."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from tools.procs import ROOT, free_port, settings_env

pytestmark = pytest.mark.integration


def health(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobfit", "health", *args],
        env={**os.environ, **env, "COLUMNS": "200"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_health_passes_with_everything_up(settings, worker):
    out = health(settings_env(settings), "--hostname", worker.hostname)
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("broker", "database", "model", "workers"):
        assert f"ok   {name}" in out.stdout
    assert worker.hostname in out.stdout and "at head" in out.stdout


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_health_fails_clearly_when_redis_stops(settings, tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        env = {**settings_env(settings), "JOBFIT_BROKER__URL": f"redis://127.0.0.1:{port}/0"}
        deadline = time.monotonic() + 10
        while (up := health(env, "--workers", "0")).returncode != 0:
            assert time.monotonic() < deadline, up.stdout
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    down = health(env, "--workers", "0", "--no-model")
    assert down.returncode == 1
    assert f"FAIL broker    redis://127.0.0.1:{port}/0 unreachable" in down.stdout
    assert "ok   database" in down.stdout


def test_health_fails_clearly_without_postgres_or_behind_the_schema(settings, tmp_path):
    env = {
        **settings_env(settings),
        "JOBFIT_DB__URL": f"postgresql://postgres@127.0.0.1:{free_port()}/x",
    }
    out = health(env, "--workers", "0")
    assert out.returncode == 1
    assert "FAIL database" in out.stdout and "unreachable" in out.stdout
    # A database that exists but was never migrated.
    empty = {
        **settings_env(settings),
        "JOBFIT_DB__URL": "postgresql://postgres@127.0.0.1:5432/postgres",
    }
    out = health(empty, "--workers", "0")
    assert out.returncode == 1 and "run `jobfit db upgrade`" in out.stdout

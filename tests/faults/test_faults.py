"""The fault suite: each scenario of ``tools/faults.py`` on real processes — worker kills, a
Redis restart, a Postgres outage, a killed retrain, hostile messages — and the counts it must
show. ``make test`` runs the scenarios at their ``QUICK`` sizes; ``make test-faults``
(``pytest --full-faults``) at their ``FULL`` sizes (5 kills, 10,000 hostile messages), which
``make bench-faults`` also runs and writes as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from jobfit.shared.config import Settings
from tools import faults, hostile

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def run(
    name: str, settings: Settings, minilm_path: Path, tmp_path: Path, size: faults.Sizes
) -> dict[str, Any]:
    out = faults.SCENARIOS[name](settings, minilm_path, tmp_path, Console(stderr=True), size)
    print(name, size, out)  # shown with -rA, and on failure
    return out


def assert_exactly_once(out: dict[str, Any]) -> None:
    assert out["scored"] == out["valid_resumes"], out
    assert out["lost"] == 0 and out["duplicated"] == 0, out
    assert out["crashed"] == 0, out


def test_embed_worker_killed_mid_stream(settings, minilm_path, tmp_path, size):
    out = run("kill_embed_worker", settings, minilm_path, tmp_path, size)
    assert out["kills"] == size.embed_kills >= 2, "a worker that took over is killed too"
    assert_exactly_once(out)


def test_redis_restart_mid_stream(settings, minilm_path, tmp_path, size):
    out = run("restart_redis", settings, minilm_path, tmp_path, size)
    assert_exactly_once(out)
    assert out["secrets_in_logs"] == 0


def test_postgres_down_mid_stream(settings, minilm_path, tmp_path, size):
    out = run("stop_postgres", settings, minilm_path, tmp_path, size)
    assert_exactly_once(out)
    assert out["resent"] == 0, "the outage alone must not need the producer's resend"
    assert out["secrets_in_logs"] == 0


def test_train_worker_killed_mid_training(settings, minilm_path, tmp_path, size):
    out = run("kill_train_worker", settings, minilm_path, tmp_path, size)
    assert out["active_unchanged_after_kill"] and out["versions_unchanged_after_kill"], out
    assert out["partial_model_dirs_in_place"] == 0, out
    assert out["redelivered_retrain"] in {"promoted", "candidate"}, out
    assert out["versions_after_redelivery"] == 1, "the redelivered retrain ran exactly once"
    assert out["crashed"] == 0


def test_hostile_messages(settings, minilm_path, tmp_path, size):
    out = run("hostile_messages", settings, minilm_path, tmp_path, size)
    assert out["hostile"] == size.hostile
    assert out["hand_written"] >= len(hostile.raw_kinds()), "every hand-written kind is sent"
    assert out["rejected_recorded"] == out["rejected_expected"], out
    assert out["unaccounted"] == 0, out
    assert out["hostile_valid_stored"] == out["hostile_valid_documents"], out
    assert out["worker_alive"] and out["crashed"] == 0, out
    assert out["verbatim"], "hostile text in valid documents is stored as sent"
    assert_exactly_once(out)

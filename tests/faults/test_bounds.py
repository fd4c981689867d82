"""The fault suite's hardening scenarios (issue 18), in a file of their own so ``make test``
runs them beside the other scenarios: Redis memory under a stream of 5 MB hostile messages,
and a killed embed worker's messages delivered again within the lease while a retrain that
outlasts it is delivered once."""

from __future__ import annotations

import pytest

from tests.faults.test_faults import assert_exactly_once, run
from tools import faults

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def test_large_hostile_messages_leave_redis_memory_bounded(settings, minilm_path, tmp_path, size):
    out = run("large_messages", settings, minilm_path, tmp_path, size)
    assert out["rejected_recorded"] == out["large"] == size.large, out
    assert out["failure_results"] == out["task_results"], "each task call keeps its outcome"
    assert out["after_over_before_mb"] <= faults.LARGE_AFTER_OVER_BEFORE_MB, out
    assert out["keys_over_100kb"] == 0, out
    assert out["largest_key_bytes"] <= faults.LARGE_KEY_LIMIT_BYTES, out
    assert out["worker_alive"], out
    assert_exactly_once(out)


def test_killed_embed_worker_redelivered_while_a_retrain_runs_once(
    settings, minilm_path, tmp_path, size
):
    out = run("kill_embed_during_retrain", settings, minilm_path, tmp_path, size)
    assert out["held_at_kill"] > 0 and out["redelivered"] == out["held_at_kill"], out
    # within the lease and a sweep or two (the goal on the defaults: 90 s)
    assert out["redelivered_s"] <= min(
        faults.REDELIVERY_GOAL_S, 1.5 * out["visibility_timeout_s"] + 10
    )
    assert out["retrain_running_at_redelivery"], "the retrain ran past the redelivery"
    assert out["retrain_deliveries"] == 1, out
    assert out["retrain_status"] == "candidate", out  # promote=False: no rescore after it
    assert_exactly_once(out)

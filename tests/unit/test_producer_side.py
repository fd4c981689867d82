"""Producers install jobfit without torch: the client side must never import it."""

from __future__ import annotations

import subprocess
import sys


def test_client_and_cli_do_not_import_torch():
    code = (
        "import sys, jobfit, jobfit.cli, jobfit.shared.client, jobfit.shared.repository;"
        "from jobfit.shared.celery_app import create_celery_app;"
        "c = create_celery_app(with_tasks=False); jobfit.JobfitClient;"
        "bad = [m for m in ('torch', 'sentence_transformers', 'numpy') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_celery_config_is_safe_by_default():
    from jobfit.shared.celery_app import create_celery_app
    from jobfit.shared.config import Settings

    conf = create_celery_app(Settings(), with_tasks=False).conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 2 * Settings().batch.max_tasks  # two batches
    assert conf.worker_send_task_events and conf.task_send_sent_event
    # A killed worker's messages come back within about a minute (leases: a live worker
    # renews those it holds, so a long retrain is not delivered twice).
    options = conf.broker_transport_options
    assert options["visibility_timeout"] == 60
    assert options["unacked_restore_interval"] == 10 and options["unacked_restore_throttle"] == 1
    assert conf.broker_transport == "jobfit.shared.redis_transport:Transport"
    assert conf.result_backend.startswith("jobfit.shared.result_backend:RedisBackend+redis://")
    assert conf.result_expires <= 24 * 3600


def test_each_task_result_is_one_outcome():
    from jobfit.shared.cli import outcome
    from jobfit.shared.schemas import MessageRejectedError

    assert outcome(MessageRejectedError("id: Field required")) == "rejected"
    assert outcome(RuntimeError("boom")) == "failed"
    assert outcome({"status": "created", "scored": 2}) == "created"

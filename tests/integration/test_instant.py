"""The instant backend (the benchmark's stand-in for a model) through a real worker, and what
a batch leaves behind per message: each message's result as Celery stores it (written for the
whole batch at once: ``tasks.results``), its events, and its ack (written for the whole loop
turn at once: ``shared.redis_transport``), so nothing stays in the broker's unacked set."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from jobfit.shared.client import JobfitClient
from jobfit.shared.config import Settings
from tests.conftest import TEST_BROKER, isolated, private_database, producer_app
from tests.integration.test_batching import resumes
from tools.procs import WorkerProcess

pytestmark = pytest.mark.integration

TIMEOUT = 120


@pytest.fixture()
def instant_settings(settings: Settings) -> Iterator[Settings]:
    """The session's settings on a database of their own (the instant version's registry row
    stays out of the other tests'), queues of their own, the instant backend."""
    for url in private_database("_instant"):
        own, _ = isolated(settings, "instant", backend="instant")
        own.db.url = url
        yield own


def test_instant_worker_answers_each_message_as_celery_does(
    instant_settings: Settings, tmp_path: Path
) -> None:
    own = instant_settings
    app = producer_app(own)
    w = WorkerProcess(own, app, "instant", tmp_path / "instant.log")
    w.start()
    try:
        client = JobfitClient(app=app)
        docs = resumes(40, "inst")
        results = [client.submit_resume(d, score=False) for d in docs]
        out = [r.get(timeout=TIMEOUT) for r in results]
        assert {o["status"] for o in out} == {"created"}
        assert all(o["model_version"].endswith("+instant") for o in out)
        for r, d in zip(results, docs, strict=True):
            assert r.status == "SUCCESS"
            assert r.name == "jobfit.ingest_resume"
            assert r.kwargs["document"]["id"] == d["id"]
            assert r.worker == w.hostname
            assert r.queue == "embed"
            assert r.date_done is not None
        log = w.log_path.read_text()
        assert "batch of" in log and "results could not be stored" not in log
        if not TEST_BROKER.startswith("redis"):
            return
        # Every ack written (on the loop's next turn): no message left unacknowledged.
        broker = redis.Redis.from_url(TEST_BROKER)
        deadline = time.monotonic() + 10
        while broker.hlen(f"{app.conf.broker_transport_options['global_keyprefix']}unacked"):
            assert time.monotonic() < deadline, "acks not written"
            time.sleep(0.1)
    finally:
        w.stop()

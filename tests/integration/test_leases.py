"""Leases on Redis (``shared.redis_transport``): a worker renews the messages it holds, so a
task that runs longer than the visibility timeout is never delivered a second time, while the
messages of a worker that stopped renewing come back one timeout later."""

from __future__ import annotations

import re
import time
import uuid
from itertools import pairwise

import pytest
from kombu import Connection, Exchange, Queue
from sqlalchemy import select

from jobfit.shared.client import JobfitClient
from jobfit.shared.orm import DeliveryRow
from jobfit.shared.redis_transport import TRANSPORT
from tests.conftest import REDIS_URL, isolated
from tests.integration.test_batching import resumes
from tools.procs import WorkerProcess

pytestmark = pytest.mark.integration
TIMEOUT = 180


def connection(prefix: str, timeout_s: int) -> Connection:
    return Connection(  # type: ignore[no-untyped-call]
        REDIS_URL,
        transport=TRANSPORT,
        transport_options={"global_keyprefix": prefix, "visibility_timeout": timeout_s},
    )


def test_renewed_messages_stay_and_unrenewed_ones_come_back(settings):
    """Two held messages, one acknowledged; the other renewed past three timeouts stays
    with its holder, then comes back once the holder stops renewing. The acknowledged one is
    not brought back by a renewal."""
    prefix = f"{settings.broker.key_prefix}lease-{uuid.uuid4().hex[:6]}:"
    queue = Queue("q", Exchange("q", type="direct"), routing_key="q")  # type: ignore[no-untyped-call]
    with connection(prefix, 2) as holder_conn, connection(prefix, 2) as other_conn:
        holder, other = holder_conn.default_channel, other_conn.default_channel
        producer = holder_conn.Producer()
        for body in ("a", "b"):
            producer.publish(body, exchange=queue.exchange, routing_key="q", declare=[queue])
        first, second = holder.basic_get("q"), holder.basic_get("q")
        assert {first.payload, second.payload} == {"a", "b"}
        first.ack()
        deadline = time.monotonic() + 7  # three timeouts and more
        while time.monotonic() < deadline:
            assert holder.qos.renew_leases() >= 1
            other.qos.restore_visible(num=None, interval=1)
            assert other.client.llen("q") == 0, "a renewed message was put back"
            time.sleep(0.5)
        index = holder.client.zrange("unacked_index", 0, -1)
        assert index == [second.delivery_tag.encode()], "the acknowledged one stays gone"
        time.sleep(2.5)  # no renewal for longer than the timeout
        other.qos.restore_visible(num=None, interval=1)
        assert other.client.llen("q") == 1, "the unrenewed message came back"
        assert other.basic_get("q").payload == second.payload
        other.client.delete("q", "unacked", "unacked_index", "_kombu.binding.q")


def test_batches_longer_than_the_timeout_are_delivered_once(
    settings, clean_db, tmp_path, session_factory
):
    """A worker whose messages wait longer than a 2 s visibility timeout (queued before it
    starts, with long texts, batches of up to 128, two batches reserved: the later messages
    wait for the earlier batches) is delivered each message once."""
    own, app = isolated(settings, "lease")
    env = {"JOBFIT_BROKER__VISIBILITY_TIMEOUT_S": "2", "JOBFIT_BATCH__MAX_TASKS": "128"}
    # A long text of its own for each (a batch of 128 takes seconds to embed), all queued
    # first: a worker that keeps up with its producer runs small batches (an idle one does
    # not wait to gather), and would hold nothing for long.
    docs = [
        {**d, "career_objective": f"{i} " + " ".join(f"objective {i} part {j}" for j in range(60))}
        for i, d in enumerate(resumes(384, "lease"))
    ]
    sent = [JobfitClient(app=app).submit_resume(d, score=False) for d in docs]
    w = WorkerProcess(own, app, "lease", tmp_path / "lease.log", env=env)
    w.start()
    try:
        assert {r.get(timeout=TIMEOUT)["status"] for r in sent} == {"created"}
    finally:
        w.stop()
    batches = re.findall(
        r"batch of (\d+) jobfit.ingest_resume: .* ([\d.]+)s$", w.log_path.read_text(), re.M
    )
    # Two batches reserved: a message of the next one is held while one runs and while its
    # own runs, longer than a timeout and a sweep (without leases, an earlier version of this
    # test: 860 deliveries of 512 messages).
    runtimes = [float(s) for _, s in batches]
    held_s = max(a + b for a, b in pairwise(runtimes))
    assert held_s > 3, f"too quick to test leases: {batches}"
    # Every delivery is in a batch: a message put back while waiting is delivered again
    # (and found done: "delivered again after it finished", not counted in deliveries).
    delivered = sum(int(n) for n, _ in batches)
    assert delivered == len(docs), f"{delivered} deliveries of {len(docs)} messages"
    with session_factory() as s:
        counts = list(s.execute(select(DeliveryRow.count)).scalars())
    assert len(counts) == len(docs) and set(counts) == {1}

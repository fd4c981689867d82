"""What only a worker knows, as Prometheus metrics the worker serves itself: the size of its
ingest batches and what became of their messages. The rest (queue depths, the active
version, failures, matches, embeddings) is read where it lives by ``jobfit metrics``
(``shared.metrics``), one target however many workers run.

Off unless ``JOBFIT_METRICS__WORKER_PORT`` is set (compose sets it for the embed workers and
Prometheus scrapes them there).

| metric | labels | what |
|---|---|---|
| ``jobfit_ingest_batch_messages`` | | histogram: messages per ingest batch |
| ``jobfit_ingest_messages_total`` | outcome | done, refused, failed, requeued, duplicate |
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram, start_http_server

from jobfit.shared.config import Settings

log = logging.getLogger(__name__)

BATCH_MESSAGES = Histogram(
    "jobfit_ingest_batch_messages",
    "Messages per ingest batch.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
INGEST_MESSAGES = Counter(
    "jobfit_ingest_messages", "Ingest messages by outcome.", labelnames=["outcome"]
)


def serve(settings: Settings) -> None:
    """Serve this worker's metrics over HTTP if a port is configured (a daemon thread)."""
    port, address = settings.metrics.worker_port, settings.metrics.worker_address
    if not port:
        return
    try:
        start_http_server(port, addr=address)
    except OSError as exc:  # e.g. the port is taken: the worker works on without them
        log.error("worker metrics not served on %s:%d: %s", address, port, exc)
        return
    log.info("worker metrics on %s:%d/metrics", address, port)

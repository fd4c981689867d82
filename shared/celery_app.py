"""The Celery app, made from settings. Producers and workers build it the same way; only
workers import the task modules (``include``), so a producer never imports torch."""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.entity import Queue

from jobfit.shared.config import Settings, get_settings
from jobfit.shared.redis_transport import TRANSPORT as REDIS_TRANSPORT
from jobfit.shared.redis_transport import sweep_interval_s
from jobfit.shared.result_backend import BACKEND as REDIS_BACKEND

EMBED_QUEUE = "embed"
TRAIN_QUEUE = "train"

# Stable task names: producers in any language send these by name.
INGEST_RESUME = "jobfit.ingest_resume"
INGEST_JOB = "jobfit.ingest_job"
# Bulk: up to ``schemas.MAX_BULK_DOCUMENTS`` documents of one kind per message.
INGEST_RESUMES = "jobfit.ingest_resumes"
INGEST_JOBS = "jobfit.ingest_jobs"
SCORE_RESUME = "jobfit.score_resume"
SCORE_JOB = "jobfit.score_job"
RESCORE = "jobfit.rescore"
SUBMIT_LABEL = "jobfit.submit_label"
RETRAIN = "jobfit.retrain"
EVALUATE = "jobfit.evaluate"

TASK_MODULES = [
    "jobfit.tasks.ingest",
    "jobfit.tasks.score",
    "jobfit.tasks.train",
    "jobfit.tasks.signals",
]


class JobfitCelery(Celery):
    """A Celery app that carries jobfit's settings, so tasks read them from ``self.app``."""

    settings: Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration jobfit runs with (documented choices, one place)."""
    broker = settings.broker
    transport_options: dict[str, Any] = {
        # A lease: a worker renews the messages it holds (shared.redis_transport); those of
        # a killed worker come back this long after its last renewal.
        "visibility_timeout": broker.visibility_timeout_s,
        # Look for them as often as leases are renewed (a sixth of the timeout, 1 to 10 s),
        # on every sweep (kombu's default throttle skips 9 of 10).
        "unacked_restore_interval": sweep_interval_s(broker.visibility_timeout_s),
        "unacked_restore_throttle": 1,
    }
    if broker.key_prefix:
        transport_options["global_keyprefix"] = broker.key_prefix
    backend_options = dict(transport_options)
    redis_broker = broker.url.startswith(("redis://", "rediss://", "unix://"))
    backend = broker.backend_url
    if backend.startswith(("redis://", "rediss://")):
        backend = f"{REDIS_BACKEND}+{backend}"  # its records bounded (shared.result_backend)
    if not redis_broker:
        transport_options = {}  # Redis-only options (RabbitMQ isolates with vhosts)
    return {
        "broker_url": broker.url,
        # kombu's Redis transport with a fix for broker restarts (see shared.redis_transport)
        "broker_transport": REDIS_TRANSPORT if redis_broker else None,
        "result_backend": backend,
        "broker_transport_options": transport_options,
        "result_backend_transport_options": backend_options,
        "broker_connection_retry_on_startup": True,
        # JSON only: a pickle payload is refused before it is deserialised.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Scores live in Postgres; results are small summaries that expire (unread ones do
        # not pile up in Redis), bounded whatever the message held (no copy of a refused or
        # large message's arguments: shared.result_backend). A result write that hits a
        # broker restart is retried.
        "result_expires": broker.result_expires_s,
        "result_extended": True,
        "result_backend_always_retry": True,
        "result_backend_max_retries": 20,
        # Producers: a publish that hits a broker restart is retried for about a minute
        # (then the caller gets the error) instead of failing at once.
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 20,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 3,
        },
        # Workers reconnect to the broker for as long as it takes.
        "broker_connection_max_retries": None,
        # At-least-once: ack after the rows are committed; a killed worker's task is
        # redelivered (Redis: visibility_timeout_s after its worker stopped renewing its lease,
        # or at once on a warm shutdown; RabbitMQ: when the connection closes), and
        # one that keeps killing workers is dead-lettered after broker.max_deliveries
        # (tasks.delivery). Failed tasks are acked: they are recorded in failed_messages.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        # Ingest messages are batched across tasks: a worker reserves up to two batches per
        # process (all unacknowledged until the batch's rows are committed): the one running
        # and the next one, gathered meanwhile (workers.batching). Workers that only train run
        # with 1 (``jobfit worker --queues train``).
        "worker_prefetch_multiplier": 2 * settings.batch.max_tasks,
        # Operators watch tasks in Flower.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "task_queues": [Queue(EMBED_QUEUE), Queue(TRAIN_QUEUE)],
        "task_default_queue": EMBED_QUEUE,
        "task_routes": {
            "jobfit.ingest_*": {"queue": EMBED_QUEUE},
            "jobfit.score_*": {"queue": EMBED_QUEUE},
            RESCORE: {"queue": EMBED_QUEUE},
            SUBMIT_LABEL: {"queue": TRAIN_QUEUE},
            RETRAIN: {"queue": TRAIN_QUEUE},
            EVALUATE: {"queue": TRAIN_QUEUE},
        },
        "worker_consumer": "jobfit.tasks.consumer:RecordingConsumer",
        # Model loads are slow: don't let the parent kill a child that is still loading.
        "worker_proc_alive_timeout": 300,
        "timezone": "UTC",
    }


def create_celery_app(settings: Settings | None = None, *, with_tasks: bool = True) -> JobfitCelery:
    """Build the app. ``with_tasks=False`` for producers (no task modules, no torch)."""
    settings = settings or get_settings()
    app = JobfitCelery("jobfit", include=TASK_MODULES if with_tasks else [])
    app.settings = settings
    app.conf.update(celery_config(settings))
    if not with_tasks:
        app.conf.worker_consumer = "celery.worker.consumer:Consumer"
    return app

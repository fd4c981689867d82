"""jobfit's own Prometheus metrics, read on each scrape from where the truth is: queue
depths from the broker, the active model version, failures, scored matches and embedded texts
from Postgres. ``jobfit metrics`` serves them (an exporter beside the workers: one scrape
target however many workers run). Batch sizes are only known inside the workers: they serve
them themselves (``tasks.worker_metrics``).

| metric | labels | what |
|---|---|---|
| ``jobfit_queue_depth`` | queue | messages waiting in the queue (not yet reserved) |
| ``jobfit_active_model_info`` | version | 1 for the active version |
| ``jobfit_failed_messages_total`` | reason | messages recorded in failed_messages, by reason kind |
| ``jobfit_stale_messages_total`` | kind | documents not applied: older than the stored revision |
| ``jobfit_matches_scored_total`` | model_version | stored (resume, job) scores |
| ``jobfit_texts_embedded_total`` | model_version | stored field-text embeddings |
| ``jobfit_up`` | source | 1 if the broker / database answered this scrape |
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from jobfit.shared import repository as repo
from jobfit.shared.celery_app import EMBED_QUEUE, TRAIN_QUEUE
from jobfit.shared.orm import FieldEmbeddingRow, MatchRow, ModelVersionRow

QUEUES = (EMBED_QUEUE, TRAIN_QUEUE)


def queue_depths(app: Any, queues: tuple[str, ...] = QUEUES) -> dict[str, int]:
    """Messages waiting in each queue, through kombu (Redis or RabbitMQ alike)."""
    with app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=3)
        depths = {}
        for q in queues:
            channel = conn.channel()
            try:  # a queue nobody declared yet (Redis: an empty one) is not found: 0 waiting
                depths[q] = int(channel.queue_declare(queue=q, passive=True).message_count)
            except conn.channel_errors:
                depths[q] = 0
            finally:
                channel.close()
        return depths


def counts_by_version(session: Session, table: Any) -> dict[str, int]:
    rows = session.execute(
        select(ModelVersionRow.version, func.count())
        .select_from(table)
        .join(ModelVersionRow, table.model_version_id == ModelVersionRow.id)
        .group_by(ModelVersionRow.version)
    )
    return {version: int(n) for version, n in rows}


class JobfitCollector(Collector):
    """Reads every metric at scrape time; a source that does not answer is ``jobfit_up 0``
    and its metrics are left out of that scrape."""

    def __init__(self, app: Any, factory: sessionmaker[Session]) -> None:
        self.app, self.factory = app, factory

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily(
            "jobfit_up", "Whether a source answered this scrape.", labels=["source"]
        )
        try:
            depths = queue_depths(self.app)
        except Exception:
            up.add_metric(["broker"], 0)
        else:
            up.add_metric(["broker"], 1)
            depth = GaugeMetricFamily(
                "jobfit_queue_depth", "Messages waiting in a queue.", labels=["queue"]
            )
            for queue, n in depths.items():
                depth.add_metric([queue], n)
            yield depth
        try:
            yield from self._database()
        except Exception:
            up.add_metric(["database"], 0)
        else:
            up.add_metric(["database"], 1)
        yield up

    def _database(self) -> list[Any]:
        with self.factory() as session:
            active = repo.active_model_version(session=session)
            failures = repo.failure_counts(session=session)
            stale = repo.stale_counts(session=session)
            matches = counts_by_version(session, MatchRow)
            texts = counts_by_version(session, FieldEmbeddingRow)
        info = GaugeMetricFamily(
            "jobfit_active_model_info", "The active model version (1).", labels=["version"]
        )
        if active is not None:
            info.add_metric([active.version], 1)
        failed = CounterMetricFamily(
            "jobfit_failed_messages",
            "Messages recorded in failed_messages, by reason kind.",
            labels=["reason"],
        )
        for reason, n in failures.items():
            failed.add_metric([reason], n)
        not_applied = CounterMetricFamily(
            "jobfit_stale_messages",
            "Documents not applied: their revision not newer than the stored one, by kind.",
            labels=["kind"],
        )
        for kind in ("resume", "job"):
            not_applied.add_metric([kind], stale.get(kind, 0))
        scored = CounterMetricFamily(
            "jobfit_matches_scored", "Stored match scores.", labels=["model_version"]
        )
        for version, n in matches.items():
            scored.add_metric([version], n)
        embedded = CounterMetricFamily(
            "jobfit_texts_embedded", "Stored field-text embeddings.", labels=["model_version"]
        )
        for version, n in texts.items():
            embedded.add_metric([version], n)
        return [info, failed, not_applied, scored, embedded]

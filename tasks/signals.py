"""Worker lifecycle: the model loaded before the first message, in the process that runs the
tasks; database connections closed on the way out. Listed in the app's
``include`` so that every worker connects these handlers."""

from __future__ import annotations

from typing import Any

from celery import signals

from jobfit.tasks import worker_metrics
from jobfit.tasks.base import serves_embed
from jobfit.workers.runtime import get_runtime


@signals.worker_ready.connect
def _load_model_when_ready(sender: Any = None, **_: Any) -> None:
    """An embed worker runs its tasks in this process (the solo pool, which the ingest
    batches require): load and warm the model before work. A train worker loads models
    when a task asks for one."""
    if sender is None:
        return
    if serves_embed(sender.app):
        get_runtime(sender.app).model()
    worker_metrics.serve(sender.app.settings)


@signals.worker_shutdown.connect
@signals.worker_process_shutdown.connect
def _close_connections(sender: Any = None, **_: Any) -> None:
    """Close this process's database connections on the way out."""
    from celery import current_app

    get_runtime(getattr(sender, "app", None) or current_app).dispose()

"""jobfit's task pool: Celery's solo pool, with each task run in the worker's work thread
(``workers.batching``) instead of on the event loop.

A solo worker runs a task in the thread that also sends heartbeats and events and answers
pings: during a retrain or a rescore of several minutes it went silent, Flower showed it
offline with the task PENDING, and its healthcheck failed. Here the event loop only hands the
task to the work thread and goes on: heartbeats, ``task-started`` and pings keep flowing, and
the task's ``PROGRESS`` states reach Flower while it runs.

What stays as in the solo pool: one process, one task at a time (ingest batches and other
tasks share the one work thread, in arrival order), the model loaded in the process that runs
the tasks. Celery's request callbacks (accepted: ``task-started``; done: the acknowledgement,
``task-succeeded``/``task-failed``) run on the event loop, as with the batches, so the broker
connection is only ever used from the loop's thread and a message is acknowledged after its
task returned. A task still running when the worker is killed, or when a warm shutdown gives
up waiting for it, is not acknowledged: the broker delivers it again (bounded by
``broker.max_deliveries``, ``tasks.delivery``).

Selected by ``jobfit worker`` (its default ``--pool solo``) through Celery's ``worker_pool``
setting. Without an event loop (Celery's in-memory transport) tasks run inline, as solo.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery.concurrency.base import apply_target
from celery.concurrency.solo import TaskPool as SoloPool

from jobfit.tasks.consumer import get_pipeline
from jobfit.workers.batching import BatchPipeline, Job

POOL = "jobfit.tasks.pool:TaskPool"


class TaskPool(SoloPool):
    """The solo pool, its tasks run off the event loop (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pipeline: BatchPipeline | None = None
        self.on_apply = self._apply

    def register_with_event_loop(self, loop: Any) -> None:
        self.pipeline = get_pipeline(self.app)
        self.pipeline.attach(loop.call_soon)

    def _apply(
        self,
        target: Callable[..., Any],
        args: Any = (),
        kwargs: Any = None,
        callback: Callable[..., Any] | None = None,
        accept_callback: Callable[..., Any] | None = None,
        **options: Any,
    ) -> None:
        pipeline = self.pipeline
        if pipeline is None or pipeline.closed:  # no event loop: inline, as the solo pool
            if pipeline is None:
                apply_target(target, args, kwargs, callback, accept_callback, **options)
            return  # stopping: left unacknowledged, delivered again

        def run(_: list[Any]) -> None:
            apply_target(
                target,
                args,
                kwargs,
                pipeline.on_loop(callback),
                pipeline.on_loop(accept_callback),
                **options,
            )

        # A job of its own (never merged with another): the key is unique to it.
        pipeline.submit(Job(object(), [None], run, _ignore))


def _ignore(_: Any) -> None:
    """The callbacks of a pool task are Celery's own, passed to ``apply_target``."""

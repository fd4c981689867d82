"""Progress of long tasks as Celery task state, which Flower and ``--wait`` show."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task

PROGRESS = "PROGRESS"

log = logging.getLogger(__name__)


class StateReporter:
    """progress(stage, done, total, **info) -> task state, at most every ``every_s``."""

    def __init__(self, task: Task, every_s: float = 1.0) -> None:
        self.task = task
        self.every_s = every_s
        self._last = 0.0

    def __call__(self, stage: str, done: int, total: int, **info: Any) -> None:
        now = time.monotonic()
        if done < total and now - self._last < self.every_s:
            return
        self._last = now
        meta = {"stage": stage, "done": int(done), "total": int(total)}
        meta.update({k: v for k, v in info.items() if isinstance(v, str | int | float | None)})
        if not self.task.request.id:  # called directly (tests, CLI) there is no state to set
            return
        self.task.update_state(state=PROGRESS, meta=meta)
        # Flower builds its task view from events, not from the result backend: a
        # ``task-progress`` event makes its state PROGRESS and the fields its Result, shown
        # on the task's page while it runs (``task-succeeded`` then replaces them).
        summary = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in meta.items()
        )
        try:
            self.task.send_event("task-progress", result=summary, **meta)
        except Exception:  # events are for watching: never fail a task over them
            log.warning("could not send a progress event", exc_info=True)

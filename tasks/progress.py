"""Progress of long tasks as Celery task state, which Flower and ``--wait`` show."""

from __future__ import annotations

import time
from typing import Any

from celery import Task

PROGRESS = "PROGRESS"


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
        if self.task.request.id:  # called directly (tests, CLI) there is no state to set
            self.task.update_state(state=PROGRESS, meta=meta)

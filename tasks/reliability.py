"""What keeps delivery at-least-once and bounded, shared by every task:

- ``with_retries``: transient infrastructure errors (database or broker unreachable) are
  retried in process with exponential backoff and jitter, the message still unacknowledged;
  invalid input is never retried.
- ``record_failures``: rejected messages go to ``failed_messages`` with their reason, retried
  like the rest (a rejection that cannot be recorded is not acknowledged either).
- deliveries: each message is counted as it starts (table ``deliveries``, keyed by task id and
  retry number). One that keeps coming back without finishing (its worker was killed each
  time: out of memory, segfault) is dead-lettered after ``broker.max_deliveries`` instead of
  killing workers forever, which is what ``task_reject_on_worker_lost`` alone would do.

Celery has retries (``autoretry_for``) but no delivery bound on Redis, so the count is ours.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import InterfaceError, OperationalError

from jobfit.shared import repository as repo
from jobfit.shared.db import transaction
from jobfit.workers.runtime import get_runtime

log = logging.getLogger(__name__)

TRANSIENT = (
    OperationalError,
    InterfaceError,
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
)

R = TypeVar("R")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: ``base * 2**attempt`` capped at ``cap`` seconds, each
    delay drawn from its upper half; ``retries`` retries after the first try (about two
    minutes in all with the defaults: outlasts a database restart or failover)."""

    base: float = 2.0
    cap: float = 60.0
    retries: int = 8

    def delay(self, attempt: int) -> float:
        d = min(self.base * 2**attempt, self.cap)
        return random.uniform(d / 2, d)  # noqa: S311 (jitter, not a secret)


BACKOFF = Backoff()


def with_retries(fn: Callable[[], R], what: str = "task", backoff: Backoff = BACKOFF) -> R:
    """``fn()``, retrying transient errors with backoff; the last error is raised."""
    for attempt in range(backoff.retries + 1):
        try:
            return fn()
        except TRANSIENT as exc:
            if attempt == backoff.retries:
                raise
            delay = backoff.delay(attempt)
            log.warning("%s: %s, retry %d in %.1fs", what, type(exc).__name__, attempt + 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def record_failures(app: Any, failures: Sequence[repo.Failure]) -> bool:
    """Record rejected messages (one transaction, retried). False if it could not be done:
    the caller then leaves the messages unacknowledged, so the rejection is not lost."""
    if not failures:
        return True
    for f in failures:
        log.warning("rejected message %s (%s): %s", f.task_id, f.task_name, f.reason)

    def write() -> None:
        with transaction(get_runtime(app).session_factory) as session:
            repo.record_failed_messages(session=session, failures=failures)

    try:
        with_retries(write, "recording rejected messages")
        return True
    except Exception:
        log.exception("could not record %d rejected message(s)", len(failures))
        return False


def delivery_key(task_id: str, retries: int | None) -> str:
    return f"{task_id}:{retries or 0}"


def begin_deliveries(app: Any, messages: Sequence[tuple[str, str]]) -> list[repo.Delivery]:
    """Count this delivery of each (key, task name)."""

    def write() -> list[repo.Delivery]:
        with transaction(get_runtime(app).session_factory) as session:
            return repo.begin_deliveries(session=session, messages=messages)

    return with_retries(write, "counting deliveries")


def set_delivery_state(app: Any, keys: Sequence[str], state: str) -> None:
    """Best effort: a state that is not written only makes a later redelivery count once more."""
    if not keys:
        return

    def write() -> None:
        with transaction(get_runtime(app).session_factory) as session:
            repo.set_delivery_state(session=session, keys=keys, state=state)

    try:
        with_retries(write, f"marking deliveries {state}")
    except Exception:
        log.exception("could not mark %d deliveries %s", len(keys), state)


def max_deliveries(app: Any) -> int:
    return int(app.settings.broker.max_deliveries)


def exhausted(app: Any, d: repo.Delivery) -> bool:
    """Delivered more times than allowed without finishing once."""
    return d.state != "done" and d.count > max_deliveries(app)


def dead_letter_reason(app: Any, d: repo.Delivery) -> str:
    return (
        f"delivered {d.count} times without finishing (its worker was lost each time); "
        f"more than broker.max_deliveries={max_deliveries(app)}: dead-lettered, not run again"
    )

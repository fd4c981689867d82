"""What keeps delivery at-least-once and bounded, the same for every task (a single task is
a batch of one):

- the one retry policy, ``with_retries``: transient infrastructure errors (database or broker
  unreachable) are retried in process with exponential backoff and jitter, the message still
  unacknowledged; when they outlast it the message goes back to the queue. Invalid input is
  never retried. (Not Celery's ``autoretry_for``: a retry there is a new message, with a new
  delivery count, and batches cannot use it.)
- ``record_failures``: rejected messages go to ``failed_messages`` with their reason, retried
  like the rest (a rejection that cannot be recorded is not acknowledged either).
- ``triage``: each message is counted as it starts (table ``deliveries``, keyed by task id and
  retry number) and sorted: first deliveries run; one that came back without finishing may be
  what killed its worker and runs alone; one that keeps coming back (its worker was killed
  each time: out of memory, segfault) is dead-lettered after ``broker.max_deliveries``
  instead of killing workers forever, which is what ``task_reject_on_worker_lost`` alone
  would do; one that already finished (its ack was lost) is not run again.

Celery has no delivery bound on Redis, so the count is ours.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import InterfaceError, OperationalError

from jobfit.shared import repository as repo
from jobfit.shared.db import transaction
from jobfit.shared.result_backend import MAX_ERROR_CHARS, cut
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
T = TypeVar("T")


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


def failure(reason: str, payload: Any, task_name: str | None, task_id: str | None) -> repo.Failure:
    """A rejected message as ``failed_messages`` stores it (the payload as short JSON, the
    reason cut as a result's error is)."""
    try:
        text = json.dumps(payload, default=repr, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = repr(payload)
    return repo.Failure(
        cut(reason, MAX_ERROR_CHARS), text[: repo.MAX_FAILED_PAYLOAD], task_name, task_id
    )


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


@dataclass
class Triage(Generic[T]):
    """Messages sorted by what their deliveries say; see ``sort_deliveries``."""

    fresh: list[T] = field(default_factory=list)
    suspects: list[T] = field(default_factory=list)
    dead: list[tuple[T, str]] = field(default_factory=list)
    done: list[T] = field(default_factory=list)


def triage(app: Any, messages: Sequence[tuple[T, str, str]]) -> Triage[T]:
    """Count this delivery of each ``(message, delivery key, task name)`` (one transaction,
    retried: a transient error that outlasts the retries is raised) and sort the messages
    by what the counts say (``sort_deliveries``)."""

    def write() -> list[repo.Delivery]:
        with transaction(get_runtime(app).session_factory) as session:
            return repo.begin_deliveries(session=session, messages=[(k, n) for _, k, n in messages])

    deliveries = with_retries(write, "counting deliveries")
    limit = int(app.settings.broker.max_deliveries)
    return sort_deliveries([m for m, _, _ in messages], deliveries, limit)


def sort_deliveries(
    messages: Sequence[T], deliveries: Sequence[repo.Delivery], max_deliveries: int
) -> Triage[T]:
    """``fresh``: first deliveries, to run together; ``suspects``: back without finishing
    (they may be what killed the worker), to run one at a time after them, those not yet
    tried alone first, then by fewest deliveries; ``dead``: back more than
    ``max_deliveries`` times, dead-lettered with the reason; ``done``: finished before (their
    ack was lost), acknowledged without running."""
    out: Triage[T] = Triage()
    suspects: list[tuple[bool, int, int, T]] = []
    for msg, d in zip(messages, deliveries, strict=True):
        if d.state == "done":
            out.done.append(msg)
        elif d.count > max_deliveries:
            reason = (
                f"delivered {d.count} times without finishing (its worker was lost each time); "
                f"more than broker.max_deliveries={max_deliveries}: dead-lettered, not run again"
            )
            out.dead.append((msg, reason))
        elif d.count == 1:
            out.fresh.append(msg)
        else:
            suspects.append((d.state == "alone", d.count, len(suspects), msg))
    out.suspects = [msg for *_, msg in sorted(suspects, key=lambda s: s[:3])]
    return out


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

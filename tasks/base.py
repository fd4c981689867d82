"""The one task base. Every jobfit task validates its message with the one validator
(``shared.schemas.validate_message``), counts its deliveries and retries transient errors the
same way (``tasks.delivery``), and records what it rejects or fails on in
``failed_messages``. Invalid input ends in a FAILURE (``MessageRejectedError``) and is
acknowledged, never retried.

Single-message tasks (scoring, training) run through Celery's own request and trace; the
ingest tasks add a batching strategy on top (``tasks.ingest``, ``tasks.consumer``).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

from celery import Task
from celery.exceptions import Reject, Retry

from jobfit.shared import repository as repo
from jobfit.shared.celery_app import EMBED_QUEUE
from jobfit.shared.result_backend import MAX_ERROR_CHARS, cut
from jobfit.shared.schemas import InvalidMessageError, MessageRejectedError
from jobfit.tasks.delivery import (
    TRANSIENT,
    delivery_key,
    failure,
    record_failures,
    set_delivery_state,
    triage,
    with_retries,
)

log = logging.getLogger(__name__)


class JobfitTask(Task):
    """Counts each delivery (a single task is a triage of one), dead-letters a message that
    keeps losing its worker, retries transient infrastructure errors in process and then puts
    the message back on the queue; records final failures."""

    # A refused message is an expected failure: Celery logs it without a traceback.
    throws = (MessageRejectedError,)

    def bind_message(self, args: Any, kwargs: Any) -> dict[str, Any]:
        """A message's arguments by name, as the task function takes them (defaults filled
        in); InvalidMessageError if they do not fit its signature."""
        try:
            bound = self._signature().bind(*args, **kwargs)
        except TypeError as exc:  # its text names the arguments: cut (a name can be megabytes)
            raise InvalidMessageError(cut(f"TypeError: {exc}", MAX_ERROR_CHARS)) from None
        bound.apply_defaults()
        return dict(bound.arguments)

    def _signature(self) -> inspect.Signature:
        """The task function's signature, made once per task (an ingest batch binds every
        message's arguments to it)."""
        sig: inspect.Signature | None = self.__dict__.get("_jobfit_signature")
        if sig is None:
            sig = inspect.signature(self.run)
            self.__dict__["_jobfit_signature"] = sig
        return sig

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        req = self.request
        if req.called_directly or req.id is None:
            return super().__call__(*args, **kwargs)
        key = delivery_key(req.id, req.retries)
        try:
            sorted_ = triage(self.app, [(key, key, self.name)])
        except TRANSIENT as exc:  # the database is still down: back to the queue
            raise Reject(exc, requeue=True) from exc
        if sorted_.done:  # redelivered after it finished (e.g. its ack was lost)
            log.info("%s[%s] delivered again after it finished: not run", self.name, req.id)
            return {"status": "duplicate", "reason": "already done; this delivery is ignored"}
        if sorted_.dead:
            [(_, reason)] = sorted_.dead
            self._record_or_requeue(reason, args, kwargs)
            set_delivery_state(self.app, [key], "dead")
            raise MessageRejectedError(reason)
        if sorted_.suspects:  # it runs alone anyway; a later delivery knows it was tried so
            set_delivery_state(self.app, [key], "alone")
        run = super().__call__
        try:
            result = with_retries(lambda: self._answer(run, args, kwargs), self.name)
        except TRANSIENT as exc:
            # Not marked done: it comes back as a suspect (and is bounded like one).
            log.warning(
                "%s[%s]: %r outlasted the retries: back to the queue", self.name, req.id, exc
            )
            raise Reject(exc, requeue=True) from exc
        except (Reject, Retry):
            raise
        except Exception as exc:  # failed for good: recorded (or back to the queue)
            if not isinstance(exc, MessageRejectedError):  # recorded when it was refused
                self._record_or_requeue(f"{type(exc).__name__}: {exc}", args, kwargs)
            set_delivery_state(self.app, [key], "done")
            raise
        set_delivery_state(self.app, [key], "done")
        return result

    def _answer(self, run: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        """Run the task; invalid input is recorded and refused (MessageRejectedError: the
        task's FAILURE), or, if it cannot be recorded (database down), put back on the queue
        rather than lost."""
        try:
            self.bind_message(args, kwargs)
            return run(*args, **kwargs)
        except InvalidMessageError as exc:
            reason = cut(str(exc), MAX_ERROR_CHARS)
            self._record_or_requeue(reason, args, kwargs)
            raise MessageRejectedError(reason) from exc

    def _record_or_requeue(self, reason: str, args: Any, kwargs: Any) -> None:
        """Record this message in ``failed_messages``; if that cannot be done (the database
        is still down after the retries), put it back on the queue instead of letting it be
        acknowledged unrecorded."""
        if not record_failures(self.app, [self.failure_of(reason, args, kwargs, self.request.id)]):
            raise Reject(reason, requeue=True)

    def failure_of(self, reason: str, args: Any, kwargs: Any, task_id: str | None) -> repo.Failure:
        """A rejected or failed message of this task, as ``failed_messages`` stores it."""
        return failure(reason, {"args": args, "kwargs": kwargs}, self.name, task_id)


def serves_embed(app: Any) -> bool:
    """Whether this worker consumes the embed queue (and so holds a model and runs ingest
    batches); a train worker loads models only when a task asks for one."""
    consume = app.amqp.queues.consume_from
    return not consume or EMBED_QUEUE in consume

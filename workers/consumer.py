"""The worker's message consumer, extended so that a message the worker cannot even turn into
a task (undecodable body, unknown task name, not a Celery message) is recorded in
``failed_messages`` as well as logged and acknowledged, as Celery already does."""

from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer
from vine import promise


def _headers(message: Any) -> tuple[str | None, str | None]:
    headers = getattr(message, "headers", None) or {}
    return headers.get("task"), headers.get("id")


def _body(message: Any) -> str:
    body = getattr(message, "body", b"")
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body).decode("utf-8", "replace")
    return repr(body)


# Errors of a message whose body has the wrong shape (e.g. a JSON string where Celery expects
# [args, kwargs, embed]): raised while Celery builds the request, where Celery (and
# celery-batches) let them through, and the worker stops with "Unrecoverable error".
MALFORMED = (ValueError, TypeError, KeyError, IndexError, AttributeError)


class RecordingConsumer(Consumer):
    def stop(self) -> None:
        """Warm shutdown: the ingest batch in progress finishes and is acknowledged while the
        connection is still open (Celery calls this before closing it); queued ones are left
        for redelivery."""
        from jobfit.tasks.pipeline import close_pipeline

        close_pipeline(self.app)
        super().stop()

    def create_task_handler(self, promise: Any = promise) -> Any:
        handler = super().create_task_handler(promise)

        def on_task_received(message: Any) -> Any:
            try:
                return handler(message)
            except MALFORMED as exc:
                reason = f"malformed task message: {type(exc).__name__}: {exc}"
                if self._recorded(message, reason) and not message.acknowledged:
                    message.ack()
                return None

        return on_task_received

    def _recorded(self, message: Any, reason: str) -> bool:
        """Record the message; if that cannot be done (database down after the retries),
        put it back on the queue instead of letting Celery acknowledge it."""
        from jobfit.tasks.embed import record_failure

        name, task_id = _headers(message)
        if record_failure(
            self.app, reason=reason, payload=_body(message), task_name=name, task_id=task_id
        ):
            return True
        message.reject(requeue=True)
        return False

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        if self._recorded(message, f"undecodable message ({message.content_type}): {exc}"):
            super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        if self._recorded(message, "not a Celery task message"):
            super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        name, _ = _headers(message)
        if self._recorded(message, f"unknown task name {name!r}"):
            super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        if self._recorded(message, f"invalid task message: {exc}"):
            super().on_invalid_task(body, message, exc)

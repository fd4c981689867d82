"""Celery's Redis result backend, its records bounded: what a hostile or oversized message
leaves in Redis is a small record, whatever the message held.

With ``result_extended`` (Flower and ``AsyncResult`` show a task's name, worker, queue and
retries) Celery stores the message's arguments in each of its result records (STARTED,
PROGRESS, SUCCESS, FAILURE), in full: a rejected 5 MB message was kept whole in Redis for the
result's lifetime (an hour), and a stream of them pinned gigabytes. Here a record keeps
the arguments only when the task did not fail and they encode to at most
``MAX_ARGUMENTS_BYTES`` (``args`` and ``kwargs`` are null otherwise: the payload of a refused
or failed message is in ``failed_messages``, cut to 10,000 characters); an exception's text
and a traceback are cut to ``MAX_ERROR_CHARS`` and ``MAX_TRACEBACK_CHARS``. The status, the
result of a success, the task name, worker, queue, retries and dates are kept as Celery
writes them.

Selected by ``shared.celery_app`` for ``redis://`` / ``rediss://`` result backends (Celery's
``<backend class>+<url>`` form); the batch writes of ``tasks.results`` apply the same
``result_arguments``.
"""

from __future__ import annotations

import json
from typing import Any

from celery import states
from celery.app.task import Context
from celery.backends.redis import RedisBackend as CeleryRedisBackend

BACKEND = "jobfit.shared.result_backend:RedisBackend"
MAX_ARGUMENTS_BYTES = 4096
MAX_ERROR_CHARS = 2000
MAX_TRACEBACK_CHARS = 8000


def cut(text: str, limit: int) -> str:
    """``text``, or its first part and how long it was when it is over ``limit``."""
    if len(text) <= limit:
        return text
    note = f"... [{len(text):,} characters, cut]"
    return text[: max(limit - len(note), 0)] + note


def encoded_size(value: Any) -> int:
    """Characters of ``value`` as JSON (what the JSON result serializer writes, near enough)."""
    try:
        return len(json.dumps(value, default=repr, ensure_ascii=False))
    except (TypeError, ValueError, RecursionError):
        return MAX_ARGUMENTS_BYTES + 1


def keeps_arguments(state: str, args: Any, kwargs: Any) -> bool:
    """Whether a record in this state keeps the message's arguments: not for a failure (the
    payload is in ``failed_messages``), nor when they are larger than ``MAX_ARGUMENTS_BYTES``."""
    if state in states.EXCEPTION_STATES:
        return False
    return encoded_size([args, kwargs]) <= MAX_ARGUMENTS_BYTES


def result_arguments(state: str, request: Any) -> tuple[Any, Any]:
    """The ``args`` and ``kwargs`` a result record of ``request`` in ``state`` stores."""
    args, kwargs = getattr(request, "args", None), getattr(request, "kwargs", None)
    if keeps_arguments(state, args, kwargs):
        return args, kwargs
    return None, None


class RedisBackend(CeleryRedisBackend):  # type: ignore[misc]
    """Celery's Redis backend; every record it stores is bounded (module docstring)."""

    def store_result(
        self,
        task_id: Any,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        if request is not None and not keeps_arguments(
            state, getattr(request, "args", None), getattr(request, "kwargs", None)
        ):
            request = Context(vars(request), args=None, kwargs=None)
        if isinstance(traceback, str):
            traceback = cut(traceback, MAX_TRACEBACK_CHARS)
        return super().store_result(task_id, result, state, traceback, request, **kwargs)

    def prepare_exception(self, exc: BaseException, serializer: Any = None) -> Any:
        prepared = super().prepare_exception(exc, serializer)
        if not isinstance(prepared, dict):  # a pickling serializer: jobfit accepts JSON only
            return prepared
        message = prepared.get("exc_message")
        if encoded_size(message) > MAX_ERROR_CHARS:
            texts = message if isinstance(message, list | tuple) else [message]
            short = [cut(t if isinstance(t, str) else repr(t), MAX_ERROR_CHARS) for t in texts]
            prepared["exc_message"] = [cut(" ".join(short), MAX_ERROR_CHARS)]
        return prepared

"""The worker's message consumer (``worker_consumer``), and the batching strategy of the
ingest tasks.

The consumer records in ``failed_messages`` a message the worker cannot even turn into a task
(undecodable body, unknown task name, not a Celery message, a body or headers of the wrong
shape), as well as logging and acknowledging it as Celery does; and on a warm shutdown it lets
the batch in progress finish. A malformed message is recognised by explicit checks where
Celery would read it (``task_envelope`` before the task is looked up, ``task_call`` before a
request is built) and goes through Celery's own rejection paths (``InvalidTaskError``); any
other error raised while a message is handled is a bug, and stops the worker loudly.

The batching strategy is what Celery calls for each message of a batch task
(``Task.Strategy``), on the worker's event loop: it decodes the message (task protocol 2:
headers ``id``/``task``/``retries``, body ``[args, kwargs, embed]``) into the task's request
context, buffers it, and hands the buffer to the batch pipeline (``workers.batching``) when it
holds ``batch.max_tasks`` messages or every ``batch.max_wait_s`` (their ``task-received``
events go then, together), or at once when the pipeline is idle: on the event loop's next turn
(what arrived in the same turn joins), and when a batch of its returns with messages buffered.
A batch so waits to be gathered only while another one runs (or, at most ``batch.max_wait_s``,
for the timer to find the pipeline free after another task's batch). Measured: the 50 ms
window of an idle worker was an eighth of the pipeline's time on a 372-document bulk load, and
the whole of a lone document's wait. When a batch returns, its messages are acknowledged, or
put back on the queue, through the promises Celery gave with each message, on the event loop:
after their rows are committed. The ETA, expiry, rate limit and revocation of a message are
not looked at (producers send ingest messages plainly).

Batches need the solo pool: the pipeline thread runs beside the event loop of the process
that holds the model. A worker that consumes the embed queue with another pool is refused at
its start rather than run the batches some other way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import partial
from typing import Any

from celery import signals
from celery.app.task import Context
from celery.concurrency.solo import TaskPool as SoloPool
from celery.exceptions import ImproperlyConfigured, InvalidTaskError
from celery.utils.saferepr import saferepr
from celery.worker.consumer import Consumer
from celery.worker.strategy import hybrid_to_proto2
from kombu.exceptions import ContentDisallowed, DecodeError
from vine import promise

from jobfit.shared.result_backend import cut
from jobfit.tasks.base import serves_embed
from jobfit.tasks.delivery import failure, record_failures
from jobfit.workers.batching import BatchPipeline, Job, run_items

log = logging.getLogger(__name__)

BATCH_STRATEGY = f"{__name__}:batch_strategy"
# How much of a message's argsrepr / kwargsrepr a task event carries (Celery's producers cut
# them to this; a hand-made message may not).
MAX_REPR = 1024


def _headers(message: Any) -> tuple[str | None, str | None]:
    """The task name and id headers, as text (a hostile message may put anything there)."""
    headers = getattr(message, "headers", None)
    if not isinstance(headers, dict):
        return None, None
    name, task_id = headers.get("task"), headers.get("id")
    return (
        None if name is None else str(name),
        None if task_id is None else str(task_id),
    )


def _body(message: Any) -> str:
    body = getattr(message, "body", b"")
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body).decode("utf-8", "replace")
    return repr(body)


def _repr(given: Any, value: Any) -> str:
    """A task event's view of arguments: the producer's repr, or ours, at most ``MAX_REPR``."""
    if given:
        return cut(str(given), MAX_REPR)
    return cut(saferepr(value, maxlen=MAX_REPR), MAX_REPR)


# --- what a task message must hold ----------------------------------------------------------


def task_envelope(message: Any) -> str | None:
    """What is wrong with a message's task name or id where Celery's consumer reads them
    (the headers; the body of a protocol 1 message), or None. Celery looks the name up in a
    dict and reports an unknown task by its id: a name that is not a string, or a missing
    id, raised there. Headers that are not an object, an undecodable body, a body with no
    task name: Celery rejects those itself (None here)."""
    headers = message.headers
    if not isinstance(headers, dict):
        return None
    if "task" in headers:
        fields = headers
    else:  # protocol 1: the task name and id are in the body
        try:
            fields = message.decode()
        except (DecodeError, ContentDisallowed):
            return None
        if not isinstance(fields, dict) or "task" not in fields:
            return None
    if not isinstance(fields["task"], str):
        return f"the task name is a {type(fields['task']).__name__}, not a string"
    task_id = fields.get("id")
    if not isinstance(task_id, str) or not task_id:
        return "the message has no task id (a non-empty string)"
    return None


def task_call(
    message: Any, body: Any
) -> tuple[list[Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A task message's args, kwargs, embedded options and headers (task protocol 2; a
    protocol 1 or hybrid body converted as Celery converts it), checked for what Celery's
    request and its execution read from them. ``InvalidTaskError`` if the message cannot be
    a task call (Celery's consumer records and rejects it); an undecodable body raises
    kombu's ``DecodeError`` or ``ContentDisallowed``, which it handles too."""
    if body is None:  # protocol 2: the body is decoded here (kombu keeps it for Celery)
        body = message.decode()
        if isinstance(body, dict) and "args" not in body:
            raise InvalidTaskError("the body is an object without args (not [args, kwargs, embed])")
    if isinstance(body, dict):  # protocol 1, or a hybrid: Celery's own conversion
        body, headers, _, _ = hybrid_to_proto2(message, body)
    else:
        headers = message.headers
    if not isinstance(body, list | tuple) or len(body) != 3:
        raise InvalidTaskError(f"the body is a {type(body).__name__}, not [args, kwargs, embed]")
    args, kwargs, embed = body
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        raise InvalidTaskError("task arguments must be a list and keyword arguments an object")
    if embed is not None and not isinstance(embed, dict):
        raise InvalidTaskError("the body's options (its third item) must be an object")
    if not isinstance(headers.get("id"), str) or not headers["id"]:
        raise InvalidTaskError("the message has no task id (a non-empty string)")
    retries = headers.get("retries")
    if retries is not None and (type(retries) is not int or retries < 0):
        raise InvalidTaskError("retries must be a non-negative integer")
    limits = headers.get("timelimit")
    if limits and not (
        isinstance(limits, list | tuple)
        and len(limits) == 2
        and all(t is None or type(t) in (int, float) for t in limits)
    ):
        raise InvalidTaskError("timelimit must be [hard, soft] seconds")
    return list(args), kwargs, embed or {}, headers


def checked_message(strategy: Callable[..., Any], message: Any, body: Any, *args: Any) -> Any:
    """Celery's strategy for a task, for a message that passed ``task_call``."""
    task_call(message, body)
    return strategy(message, body, *args)


class RecordingConsumer(Consumer):
    def stop(self) -> None:
        """Warm shutdown: the ingest batch in progress finishes and is acknowledged while the
        connection is still open (Celery calls this before closing it); queued ones are left
        for redelivery."""
        close_pipeline(self.app)
        super().stop()

    def create_task_handler(self, promise: Any = promise) -> Any:
        handler = super().create_task_handler(promise)

        def on_task_received(message: Any) -> Any:
            reason = task_envelope(message)
            if reason is None:
                return handler(message)
            # Celery would raise looking the task up, or reporting it unknown: rejected here.
            reason = f"malformed task message: {reason}"
            if self._recorded(message, reason):
                log.error("%s: rejected", reason)
                message.reject_log_error(log, self.connection_errors)
            return None

        return on_task_received

    def update_strategies(self) -> None:
        """Every task's strategy checks a message's shape before Celery builds its request
        (``task_call``); a batch task's strategy builds its requests with that check."""
        super().update_strategies()
        for name, task in self.app.tasks.items():
            if task.Strategy != BATCH_STRATEGY:
                self.strategies[name] = partial(checked_message, self.strategies[name])

    def _recorded(self, message: Any, reason: str) -> bool:
        """Record the message; if that cannot be done (database down after the retries),
        put it back on the queue instead of letting Celery acknowledge it."""
        name, task_id = _headers(message)
        if record_failures(self.app, [failure(reason, _body(message), name, task_id)]):
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


# --- the batching strategy ---------------------------------------------------------------


def message_request(message: Any, body: Any, hostname: str) -> Context:
    """A task message as its task's request context (what ``Task.request`` is for a task
    Celery runs itself): headers, the body's embedded options, args and kwargs. Raises as
    ``task_call`` does."""
    args, kwargs, embed, headers = task_call(message, body)
    props = message.properties or {}
    return Context(
        {
            **headers,
            **embed,
            "args": args,
            "kwargs": kwargs,
            "delivery_info": message.delivery_info,
            "hostname": hostname,
            "reply_to": props.get("reply_to"),
            "correlation_id": props.get("correlation_id") or headers["id"],
            "called_directly": False,
        }
    )


@dataclass
class Received:
    """One message of a batch: its request, and how to acknowledge it or put it back."""

    request: Context
    ack: Callable[[], None]
    requeue: Callable[[], None]


class Batcher:
    """One batch task's buffer on one consumer (made again when the consumer restarts)."""

    def __init__(self, task: Any, consumer: Any, pipeline: BatchPipeline | None) -> None:
        self.task, self.consumer, self.pipeline = task, consumer, pipeline
        self.max_tasks = int(task.app.settings.batch.max_tasks)
        self.max_wait_s = float(task.app.settings.batch.max_wait_s)
        self.max_documents = int(task.app.settings.batch.max_documents)
        self.buffer: list[Received] = []
        self.documents = 0  # in the buffer: a bulk message counts its documents
        self.timer: Any = None
        self.soon = False  # a flush is due on the loop's next turn (the pipeline was idle)

    def on_message(
        self, message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **_: Any
    ) -> None:
        """Celery's per-message call (``ack``/``reject``: promises that act on the loop)."""
        consumer = self.consumer
        try:
            request = message_request(message, body, consumer.hostname)
        except (DecodeError, ContentDisallowed) as exc:  # not JSON, or not accepted (pickle)
            consumer.on_decode_error(message, exc)
            return
        except InvalidTaskError as exc:
            consumer.on_invalid_task(body, message, exc)
            return
        documents = self.task.documents_in(request)
        if self.buffer and self.documents + documents > self.max_documents:
            self.flush()  # a batch never passes max_documents, unless one message does
        errors = consumer.connection_errors
        self.buffer.append(
            Received(request, partial(ack, log, errors), partial(reject, log, errors, True))
        )
        self.documents += documents
        signals.task_received.send(sender=consumer, request=request)
        if self.timer is None:
            self.timer = consumer.timer.call_repeatedly(self.max_wait_s, self.flush)
        # A full batch goes at once: ``max_tasks`` messages, or ``max_documents`` documents.
        if len(self.buffer) >= self.max_tasks or self.documents >= self.max_documents:
            self.flush()
        else:
            self.flush_soon_if_idle()

    def flush_soon_if_idle(self) -> None:
        """An idle pipeline gets the buffer on the loop's next turn, not at the timer."""
        if self.soon or self.pipeline is None or not self.buffer or not self.pipeline.idle:
            return
        self.soon = True
        self.consumer.hub.call_soon(self._flush_if_idle)

    def _flush_if_idle(self) -> None:
        self.soon = False
        if self.buffer and self.pipeline is not None and self.pipeline.idle:
            self.flush()

    def flush(self) -> None:
        """Hand the buffer to the pipeline; an idle timer stops until the next message."""
        if not self.buffer:
            self.discard()
            return
        batch, documents, self.buffer, self.documents = self.buffer, self.documents, [], 0
        self._received(batch)

        def on_return(requeue: Collection[str] | None) -> None:
            # None: the batch raised; every message goes back.
            for r in batch:
                (r.requeue if requeue is None or r.request.id in requeue else r.ack)()
            self.flush_soon_if_idle()  # what arrived while it ran

        if self.pipeline is None:  # no event loop (in-memory broker): here, in this thread
            on_return(run_items(self._run, batch))
            return
        # Not submitted (the worker is stopping): left unacknowledged, delivered again.
        self.pipeline.submit(Job(self.task, batch, self._run, on_return, documents))

    def _received(self, batch: list[Received]) -> None:
        """A ``task-received`` event for each message of the batch, sent as the batch is
        handed on (at most ``batch.max_wait_s`` after the first arrived), in one go: the
        consumer's dispatcher buffers task events and publishes what it holds on the loop's
        next turn, so events sent one message at a time, as Celery's strategy does, cost a
        publish each (measured: a quarter of the pipeline's own per-message time)."""
        eventer = self.consumer.event_dispatcher
        if eventer is None or not eventer.enabled or not self.task.send_events:
            return
        for r in batch:
            request = r.request
            eventer.send(
                "task-received",
                uuid=request.id,
                name=self.task.name,
                args=_repr(getattr(request, "argsrepr", None), request.args),
                kwargs=_repr(getattr(request, "kwargsrepr", None), request.kwargs),
                retries=request.retries or 0,
            )

    def _run(self, batch: list[Received]) -> Collection[str]:
        return self.task.run_batch([r.request for r in batch])  # type: ignore[no-any-return]

    def discard(self) -> None:
        """Stop the timer; what is buffered is dropped unacknowledged (the broker delivers it
        again: on a consumer restart, its channel is gone)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.buffer, self.documents = [], 0


def batch_strategy(task: Any, app: Any, consumer: Any) -> Callable[..., None]:
    """The ``Strategy`` of a batch task: Celery calls it at each consumer start, for every
    task, and the handler it returns for each of that task's messages."""
    previous: Batcher | None = getattr(task, "_jobfit_batcher", None)
    if previous is not None:
        previous.discard()
    if not isinstance(consumer.pool, SoloPool):
        if serves_embed(app):
            raise ImproperlyConfigured(
                f"{task.name} runs in batches on the solo pool, beside the event loop of the"
                f" process that holds the model; this worker has the"
                f" {type(consumer.pool).__module__.rsplit('.', 1)[-1]} pool: run embed"
                " workers with --pool solo (the default), one process per model"
            )
        return partial(_not_here, task)
    # Without an event loop (Celery's in-memory broker, the embedded demo) a batch runs in
    # the thread that flushes it; with one, in the pipeline thread beside the loop.
    pipeline = None
    if consumer.hub is not None:
        pipeline = get_pipeline(app)
        pipeline.attach(consumer.hub.call_soon)
    batcher = Batcher(task, consumer, pipeline)
    task._jobfit_batcher = batcher
    return batcher.on_message


def _not_here(
    task: Any, message: Any, body: Any, ack: Any, reject: Any, *_: Any, **__: Any
) -> None:
    """An ingest message routed to a worker that does not serve the embed queue: back to the
    queue for an embed worker."""
    log.error("%s is for embed workers (solo pool): put back", task.name)
    reject(log, (), True)


def get_pipeline(app: Any) -> BatchPipeline:
    """This process's pipeline (one per worker process, shared by the ingest tasks)."""
    pipeline: BatchPipeline | None = getattr(app, "_jobfit_pipeline", None)
    if pipeline is None or pipeline.closed:
        batch = app.settings.batch
        pipeline = BatchPipeline(int(batch.max_tasks), int(batch.max_documents))
        app._jobfit_pipeline = pipeline
    return pipeline


def close_pipeline(app: Any) -> None:
    pipeline: BatchPipeline | None = getattr(app, "_jobfit_pipeline", None)
    if pipeline is not None:
        pipeline.close()

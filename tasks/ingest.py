"""Ingest tasks, batched across messages.

``jobfit.ingest_resume`` / ``jobfit.ingest_job`` keep their names and arguments
(``document, score=True``): producers do not see the batching. ``jobfit.ingest_resumes`` /
``jobfit.ingest_jobs`` (``documents, score=True``) carry up to ``MAX_BULK_DOCUMENTS`` documents
in one message, for bulk producers: one delivery, one result (``BulkIngestResult``: each
document's outcome, in order) and one Flower event per message instead of per document. A
document of a bulk message that is invalid is refused alone (recorded, and said in the
result); the others are stored. On an embed worker the
messages that arrive within ``batch.max_wait_s`` (at most ``batch.max_tasks``; the prefetch is
set to match) run as one batch (the strategy in ``tasks.consumer`` gathers them; the pipeline
thread of ``workers.batching`` runs them): every document stored and the new texts of all of
them embedded in one transaction (one ``encode``, packed by length), then the batch scored in
a second one (``workers.service.ingest_batch``). Each message is validated, counted and
retried as every task's is (``tasks.base``, ``tasks.delivery``), and gets its own result and
its own Flower events; all of them are acknowledged after the batch returns, so a killed
worker's batch is delivered again and redone idempotently.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from celery import shared_task
from celery.app.task import Context

from jobfit.shared.celery_app import INGEST_JOB, INGEST_JOBS, INGEST_RESUME, INGEST_RESUMES
from jobfit.shared.result_backend import MAX_ERROR_CHARS, cut
from jobfit.shared.schemas import (
    MAX_BULK_DOCUMENTS,
    BulkIngestResult,
    Document,
    IngestResult,
    InvalidMessageError,
    JobDocument,
    MessageRejectedError,
    ResumeDocument,
    validate_message,
)
from jobfit.tasks import worker_metrics
from jobfit.tasks.base import JobfitTask
from jobfit.tasks.consumer import BATCH_STRATEGY
from jobfit.tasks.delivery import (
    TRANSIENT,
    Triage,
    delivery_key,
    failure,
    record_failures,
    set_delivery_state,
    triage,
    with_retries,
)
from jobfit.tasks.results import Outcome, store_results
from jobfit.workers import service
from jobfit.workers.runtime import WorkerRuntime, get_runtime

log = logging.getLogger(__name__)

# A bulk message's result stays well under the size every stored result keeps to (README
# "Faults and security": 100 kB): per document, a reason of at most 300 ASCII characters and
# an id whose JSON is at most 210 characters (else no id: its position tells it).
BULK_REASON_CHARS = 300
BULK_ID_JSON_CHARS = 210


@dataclass
class Item:
    """One message of a batch and what became of it: its documents' ``results``, an
    ``error`` (it failed, or was refused: ``MessageRejectedError``), or ``duplicate`` (it
    had finished before). A bulk message's documents that were invalid are in ``refused``
    (position: reason and the document as sent); ``positions`` are the others'; ``failed``:
    those that could not be stored when its documents were stored one by one."""

    request: Context
    docs: list[Document] = field(default_factory=list)
    score: bool = True
    bulk: bool = False
    positions: list[int] = field(default_factory=list)
    refused: dict[int, tuple[str, Any]] = field(default_factory=dict)
    results: list[IngestResult] = field(default_factory=list)
    failed: list[tuple[str, Any]] = field(default_factory=list)  # reason, document
    error: BaseException | None = None
    duplicate: bool = False

    @property
    def id(self) -> str:
        return str(self.request.id)

    @property
    def key(self) -> str:
        return delivery_key(self.id, self.request.retries)

    @property
    def result(self) -> dict[str, Any] | None:
        """The message's answer: its document's result, or a bulk message's list of them."""
        if self.error is not None or len(self.results) != len(self.docs):
            return None
        if not self.bulk:
            return self.results[0].model_dump()
        # Small whatever the message carried: no ``top`` (read with ``top_jobs`` /
        # ``top_candidates``) and short reasons (whole in ``failed_messages``).
        answers = {
            i: r.model_copy(
                update={
                    "top": [],
                    "reason": _short(r.reason),
                    "document_id": _short_id(r.document_id),
                }
            )
            for i, r in zip(self.positions, self.results, strict=True)
        }
        answers |= {
            i: IngestResult(status="refused", document_id=_document_id(raw), reason=_short(reason))
            for i, (reason, raw) in self.refused.items()
        }
        return BulkIngestResult(documents=[answers[i] for i in sorted(answers)]).model_dump()

    @property
    def summary(self) -> Any:
        """What Flower shows of the answer: a bulk message's counts by status (read off its
        results, without building the answer a second time)."""
        if not self.bulk or self.error is not None or len(self.results) != len(self.docs):
            return self.result
        statuses = [r.status for r in self.results] + ["refused"] * len(self.refused)
        return {status: statuses.count(status) for status in sorted(set(statuses))}


def _short(reason: str | None) -> str | None:
    """A reason in at most ``BULK_REASON_CHARS`` ASCII characters (what is not ASCII,
    escaped: JSON would spend up to 12 bytes on one such character)."""
    if reason is None:
        return None
    return cut(reason.encode("ascii", "backslashreplace").decode("ascii"), BULK_REASON_CHARS)


def _short_id(value: Any) -> str | None:
    """A document's id where its JSON form is short (the position tells the document in
    any case: a 200-character id beyond ASCII is ~2.4 kB of JSON)."""
    if not isinstance(value, str) or len(json.dumps(value)) > BULK_ID_JSON_CHARS:
        return None
    return value


def _document_id(raw: Any) -> str | None:
    """The id a refused document gave, if it gave one that is a short string."""
    return _short_id(raw.get("id") if isinstance(raw, dict) else None)


class IngestBatch(JobfitTask):
    """A batch task: ingest messages of one kind, run by ``run_batch`` (never one by one)."""

    abstract = True
    Strategy = BATCH_STRATEGY
    document_model: type[ResumeDocument] | type[JobDocument]
    bulk = False  # messages of ``documents`` (a list), not one ``document``

    def documents_in(self, request: Context) -> int:
        """How many documents the message carries, as far as can be told before it is
        parsed (the batcher's measure of a batch: a bulk message counts its list's length)."""
        if not self.bulk:
            return 1
        kwargs = request.kwargs if isinstance(request.kwargs, dict) else {}
        args = request.args if isinstance(request.args, list | tuple) else ()
        documents = kwargs.get("documents", args[0] if args else None)
        return max(1, len(documents)) if isinstance(documents, list) else 1

    def parse(self, request: Context) -> Item:
        """The message's documents and score flag; refused (its error) if invalid. A bulk
        message is refused only if it is not a list of 1 to ``MAX_BULK_DOCUMENTS``; its
        invalid documents are refused one by one."""
        item = Item(request, bulk=self.bulk)
        try:
            arguments = self.bind_message(request.args, request.kwargs)
            score = arguments["score"]
            if not isinstance(score, bool):
                raise InvalidMessageError(
                    f"score must be true or false, got {type(score).__name__}"
                )
            item.score = score
            if not self.bulk:
                item.docs = [validate_message(self.document_model, arguments["document"])]
                return item
            documents = arguments["documents"]
            if not isinstance(documents, list) or not 1 <= len(documents) <= MAX_BULK_DOCUMENTS:
                raise InvalidMessageError(
                    f"documents must be a list of 1 to {MAX_BULK_DOCUMENTS} documents, got"
                    f" {type(documents).__name__}"
                    + (f" of {len(documents)}" if isinstance(documents, list) else "")
                )
            for i, raw in enumerate(documents):
                try:
                    item.docs.append(validate_message(self.document_model, raw))
                    item.positions.append(i)
                except InvalidMessageError as exc:
                    item.refused[i] = (cut(f"document {i}: {exc}", MAX_ERROR_CHARS), raw)
        except InvalidMessageError as exc:
            item.error = MessageRejectedError(cut(str(exc), MAX_ERROR_CHARS))
        return item

    def run_batch(self, requests: Sequence[Context]) -> set[str]:
        """Process one batch; returns the ids of the messages to put back on the queue
        (transient errors outlasted the retries, or a rejection could not be recorded); the
        others are answered and acknowledged."""
        t0 = time.monotonic()
        items = [self.parse(r) for r in requests]
        self._events(items, "task-started")
        valid = [it for it in items if it.error is None]
        try:
            sorted_ = triage(self.app, [(it, it.key, self.name) for it in valid])
        except TRANSIENT as exc:
            sorted_ = Triage()
            for it in valid:
                it.error = exc
        for it, reason in sorted_.dead:
            it.error = MessageRejectedError(reason)
        for it in sorted_.done:
            log.info("%s[%s] delivered again after it finished: not run", self.name, it.id)
            it.duplicate = True
        self._record_refused(sorted_.fresh + sorted_.suspects)
        fresh = [it for it in sorted_.fresh if it.error is None]
        suspects = [it for it in sorted_.suspects if it.error is None]
        rt = get_runtime(self.app)
        if fresh:
            self._ingest(rt, fresh, one_by_one_on_error=True)
        for it in suspects:  # one at a time, those last tried alone last
            set_delivery_state(self.app, [it.key], "alone")
            self._ingest(rt, [it], one_by_one_on_error=it.bulk)
        requeue = {it.id for it in items if isinstance(it.error, TRANSIENT)}
        failures = [
            self.failure_of(self._reason(it), it.request.args, it.request.kwargs, it.id)
            for it in items
            if it.id not in requeue and it.error is not None
        ]
        if not record_failures(self.app, failures):
            requeue |= {str(f.task_id) for f in failures}
        # A bulk message's documents that failed alone: their rows are not stored, the
        # message's are (its delivery is done): recorded, or logged if that cannot be done;
        # the message's result says it either way.
        record_failures(
            self.app,
            [
                failure(reason, {"document": raw}, self.name, it.id)
                for it in items
                if it.id not in requeue
                for reason, raw in it.failed
            ],
        )
        set_delivery_state(self.app, [it.key for it, _ in sorted_.dead], "dead")
        self._answer_all(items, requeue)
        runtime = time.monotonic() - t0
        # Each message's share of its batch (the batch's time is not any one message's).
        self._events(items, "task-done", runtime=runtime / max(len(items), 1))
        self._count(items, requeue)
        log.info(
            "batch of %d %s: %d refused, %d failed, %d requeued, %.3fs",
            len(items),
            self.name,
            sum(isinstance(it.error, MessageRejectedError) for it in items),
            sum(
                it.error is not None
                and not isinstance(it.error, MessageRejectedError)
                and it.id not in requeue
                for it in items
            ),
            len(requeue),
            runtime,
        )
        return requeue

    def _record_refused(self, items: Sequence[Item]) -> None:
        """Record the refused documents of bulk messages, each with what it was, before
        anything of those messages is stored: a message whose refusals cannot be recorded
        (the database is down after the retries) goes back to the queue unrun."""
        refused = [it for it in items if it.refused]
        failures = [
            failure(reason, {"document": raw}, self.name, it.id)
            for it in refused
            for reason, raw in it.refused.values()
        ]
        if not record_failures(self.app, failures):
            for it in refused:
                # Transient (``delivery.TRANSIENT``): put back, run when it can be recorded.
                it.error = ConnectionError("its refused documents could not be recorded")

    def _ingest(
        self, rt: WorkerRuntime, items: list[Item], one_by_one_on_error: bool = False
    ) -> None:
        """Ingest items together (their deliveries marked done with their rows), setting each
        one's results, or its error. A batch that fails on anything but a transient error is
        redone one message at a time, so one bad document fails alone (a bulk message's
        documents, one at a time too)."""
        docs = [(doc, it.score) for it in items for doc in it.docs]
        try:
            results = with_retries(
                lambda: service.ingest_batch(
                    factory=rt.session_factory,
                    ctx=rt.model(),
                    docs=docs,
                    done_keys=[it.key for it in items],
                ),
                f"batch of {len(items)}",
            )
        except Exception as exc:
            if one_by_one_on_error and len(items) > 1 and not isinstance(exc, TRANSIENT):
                log.exception("batch of %d failed; processing its messages one by one", len(items))
                for it in items:
                    self._ingest(rt, [it], one_by_one_on_error=True)
                return
            if one_by_one_on_error and items[0].bulk and not isinstance(exc, TRANSIENT):
                log.exception("bulk message %s failed; its documents one by one", items[0].id)
                self._ingest_each(rt, items[0])
                return
            log.warning("%d message(s) failed: %r", len(items), exc)
            for it in items:
                it.error = exc
            return
        start = 0
        for it in items:  # each message's documents' results, in its order
            it.results = results[start : start + len(it.docs)]
            start += len(it.docs)

    def _ingest_each(self, rt: WorkerRuntime, item: Item) -> None:
        """A bulk message's documents one at a time, each in its own transactions; one that
        fails is ``failed`` in the message's result. The delivery is done after the last."""
        for doc in item.docs:
            try:
                (result,) = with_retries(
                    lambda doc=doc: service.ingest_batch(  # type: ignore[misc]
                        factory=rt.session_factory, ctx=rt.model(), docs=[(doc, item.score)]
                    ),
                    f"document {doc.id!r}",
                )
            except TRANSIENT as exc:
                item.error = exc  # the message goes back; what was stored is redone as is
                return
            except Exception as exc:
                log.warning("%s[%s]: document %r failed: %r", self.name, item.id, doc.id, exc)
                reason = cut(f"{type(exc).__name__}: {exc}", MAX_ERROR_CHARS)
                result = IngestResult(status="failed", document_id=doc.id, reason=reason)
                item.failed.append((reason, doc.model_dump(mode="json")))
            item.results.append(result)
        set_delivery_state(self.app, [item.key], "done")  # best effort, as for every batch

    def _answer_all(self, items: Sequence[Item], requeue: set[str]) -> None:
        """Each message's result in the result backend, the batch's together (one round trip
        on Redis: ``tasks.results``). The rows are committed by now: results that cannot be
        written (the backend is down after the retries) are logged, not a reason to run the
        batch again (its redelivery would be a duplicate)."""
        outcomes = [
            Outcome(it.request, it.result, it.error)
            for it in items
            if it.id not in requeue and not it.duplicate and not it.request.ignore_result
        ]  # a duplicate's first answer stands
        if not outcomes:
            return
        try:
            with_retries(
                lambda: store_results(self.app, self.backend, outcomes),
                f"storing {len(outcomes)} results",
            )
        except Exception:
            log.exception("%s: %d results could not be stored", self.name, len(outcomes))

    @staticmethod
    def _count(items: Sequence[Item], requeue: set[str]) -> None:
        """This batch in the worker's metrics (``tasks.worker_metrics``)."""
        worker_metrics.BATCH_MESSAGES.observe(len(items))
        for it in items:
            if it.id in requeue:
                outcome = "requeued"
            elif it.duplicate:
                outcome = "duplicate"
            elif isinstance(it.error, MessageRejectedError):
                outcome = "refused"
            else:
                outcome = "failed" if it.error is not None else "done"
            worker_metrics.INGEST_MESSAGES.labels(outcome).inc()

    @staticmethod
    def _reason(item: Item) -> str:
        if isinstance(item.error, MessageRejectedError):
            return str(item.error)
        return f"{type(item.error).__name__}: {item.error}"

    def _events(self, items: Sequence[Item], kind: str, runtime: float = 0.0) -> None:
        """Per-message task events, so Flower shows each message's state."""
        if not items or not self.app.conf.worker_send_task_events:
            return
        try:
            # A pooled broker connection: a new one per call cost a connect and a close per
            # batch, twice.
            with (
                self.app.pool.acquire(block=True) as conn,
                self.app.events.Dispatcher(
                    conn,
                    hostname=items[0].request.hostname,
                    buffer_group=["task"],  # the batch's events in one message (task.multi)
                    buffer_limit=len(items) + 1,
                ) as dispatcher,
            ):
                for it in items:
                    if kind == "task-started":
                        dispatcher.send("task-started", uuid=it.id)
                    elif it.error is not None:
                        exception = cut(repr(it.error), MAX_ERROR_CHARS)
                        dispatcher.send("task-failed", uuid=it.id, exception=exception)
                    else:
                        result = "already done: not run" if it.duplicate else it.summary
                        dispatcher.send(
                            "task-succeeded", uuid=it.id, result=repr(result), runtime=runtime
                        )
                dispatcher.flush()
        except Exception:  # events are for watching: never fail a batch over them
            log.warning("could not send task events", exc_info=True)


class ResumeBatch(IngestBatch):
    abstract = True
    document_model = ResumeDocument


class JobBatch(IngestBatch):
    abstract = True
    document_model = JobDocument


class ResumesBatch(ResumeBatch):
    abstract = True
    bulk = True


class JobsBatch(JobBatch):
    abstract = True
    bulk = True


def _batched_only(task: IngestBatch) -> NoReturn:
    raise NotImplementedError(
        f"{task.name} runs in batches on an embed worker: send it (delay, send_task)"
    )


@shared_task(bind=True, base=ResumeBatch, name=INGEST_RESUME)
def ingest_resume(self: ResumeBatch, document: Any, score: Any = True) -> dict[str, Any]:
    """Store a resume, embed its fields and (by default) score it against every stored job.
    The signature is the message's: ``(document, score=True)``."""
    _batched_only(self)


@shared_task(bind=True, base=JobBatch, name=INGEST_JOB)
def ingest_job(self: JobBatch, document: Any, score: Any = True) -> dict[str, Any]:
    """Store a job, embed its fields and (by default) score every stored resume against it.
    The signature is the message's: ``(document, score=True)``."""
    _batched_only(self)


@shared_task(bind=True, base=ResumesBatch, name=INGEST_RESUMES)
def ingest_resumes(self: ResumesBatch, documents: Any, score: Any = True) -> dict[str, Any]:
    """Store up to ``MAX_BULK_DOCUMENTS`` resumes, as ``ingest_resume`` stores one; the
    result lists each one's outcome (``BulkIngestResult``). The signature is the message's:
    ``(documents, score=True)``."""
    _batched_only(self)


@shared_task(bind=True, base=JobsBatch, name=INGEST_JOBS)
def ingest_jobs(self: JobsBatch, documents: Any, score: Any = True) -> dict[str, Any]:
    """Store up to ``MAX_BULK_DOCUMENTS`` jobs, as ``ingest_job`` stores one; the result
    lists each one's outcome (``BulkIngestResult``). The signature is the message's:
    ``(documents, score=True)``."""
    _batched_only(self)

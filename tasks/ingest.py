"""Ingest tasks, batched across messages (celery-batches).

``jobfit.ingest_resume`` / ``jobfit.ingest_job`` keep their names and arguments
(``document, score=True``): producers do not see the batching. On the worker, the messages
that arrive within ``batch.max_wait_s`` (at most ``batch.max_tasks``; the prefetch is set to
match) run as one batch: every document stored and the new texts of all of them embedded in
one transaction (one ``encode``, packed by length), then the batch scored in a second one
(one bulk upsert). Each message gets its own result and its own Flower events; all of them
are acknowledged after the batch returns, so a killed worker's batch is delivered again and
redone idempotently.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from celery import shared_task
from celery.concurrency.solo import TaskPool as SoloPool
from celery.worker.request import Request
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task
from pydantic import ValidationError

from jobfit.shared import repository as repo
from jobfit.shared.celery_app import INGEST_JOB, INGEST_RESUME
from jobfit.shared.db import transaction
from jobfit.shared.schemas import (
    IngestResult,
    JobDocument,
    ResumeDocument,
    describe_validation_error,
)
from jobfit.tasks.embed import failure
from jobfit.tasks.pipeline import BatchPipeline, Job, get_pipeline
from jobfit.tasks.reliability import (
    TRANSIENT,
    begin_deliveries,
    dead_letter_reason,
    delivery_key,
    exhausted,
    record_failures,
    set_delivery_state,
    with_retries,
)
from jobfit.workers import service
from jobfit.workers.runtime import WorkerRuntime, get_runtime

log = logging.getLogger(__name__)


def _signature(document: Any, score: bool = True) -> None:
    """The arguments of an ingest message."""


@dataclass
class Item:
    """One message of a batch, parsed."""

    request: SimpleRequest
    doc: ResumeDocument | JobDocument | None = None
    score: bool = True
    result: dict[str, Any] | None = None


def _key(item: Item) -> str:
    return delivery_key(item.request.id, (item.request.request_dict or {}).get("retries"))


def parse(request: SimpleRequest, model: type[ResumeDocument] | type[JobDocument]) -> Item:
    """Bind and validate a message's arguments; ``result`` is set when it is rejected."""
    item = Item(request)
    reason: str
    try:
        bound = inspect.signature(_signature).bind(*request.args, **request.kwargs)
        bound.apply_defaults()
        score = bound.arguments["score"]
        if not isinstance(score, bool):
            raise TypeError(f"score must be true or false, got {type(score).__name__}")
        data = bound.arguments["document"]
        item.doc = (
            model.model_validate_json(data)
            if isinstance(data, str | bytes)
            else model.model_validate(data)
        )
        item.score = score
        return item
    except ValidationError as exc:
        reason = describe_validation_error(exc)
    except (TypeError, ValueError, RecursionError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    item.result = IngestResult(status="rejected", reason=reason).model_dump()
    return item


def ingest_items(rt: WorkerRuntime, items: Sequence[Item]) -> None:
    """Store, embed and score the valid items; sets each item's result and marks their
    deliveries done in the last transaction (with the rows). Two transactions: documents +
    embeddings, then scores (begun after the documents are committed, so of a resume and a
    job ingested at the same time at least one side sees the other)."""
    ctx = rt.model()
    docs = [it.doc for it in items if it.doc is not None]
    done = [_key(it) for it in items]
    with transaction(rt.session_factory) as session:
        stored = service.ingest_documents(session=session, ctx=ctx, docs=docs)
        to_score = sorted({row.id for (row, _, _), d in zip(stored, items, strict=True) if d.score})
        if not to_score:
            repo.set_delivery_state(session=session, keys=done, state="done")
    rows = {row.id: row for row, _, _ in stored}
    per_doc: Counter[int] = Counter()
    if to_score:
        with transaction(rt.session_factory) as session:
            repo.set_delivery_state(session=session, keys=done, state="done")
            batch = [rows[i] for i in to_score]
            if batch[0].kind == "resume":
                jobs = repo.list_documents(session=session, kind="job")
                service.score_pairs(
                    session=session, ctx=ctx, resumes=batch, jobs=jobs, per_doc=per_doc
                )
            else:
                resumes = repo.list_documents(session=session, kind="resume")
                service.score_pairs(
                    session=session, ctx=ctx, resumes=resumes, jobs=batch, per_doc=per_doc
                )
    scored_once: set[int] = set()
    for (row, status, embedded), item in zip(stored, items, strict=True):
        # A document twice in one batch: its matches count for its first message.
        scored = per_doc[row.id] if item.score and row.id not in scored_once else 0
        scored_once.add(row.id)
        item.result = IngestResult(
            status=status,
            document_id=row.external_id,
            embedded=embedded,
            scored=scored,
            model_version=ctx.version,
        ).model_dump()


class IngestBatch(Batches):
    """A batch of ingest messages of one kind."""

    abstract = True
    acks_late = True
    document_model: type[ResumeDocument] | type[JobDocument]
    _pipeline: BatchPipeline | None = None

    def Strategy(self, task: Any, app: Any, consumer: Any) -> Any:
        """celery-batches' message handler; on a solo worker with an event loop, the batches
        then run in the process's pipeline thread (tasks.pipeline), beside the loop."""
        handler = super().Strategy(task, app, consumer)
        self._pipeline = None
        if consumer.hub is not None and isinstance(consumer.pool, SoloPool):
            self._pipeline = get_pipeline(app)
            self._pipeline.attach(consumer.hub.call_soon)
        return handler

    @property
    def flush_every(self) -> int:
        return int(self.app.settings.batch.max_tasks)

    @property
    def flush_interval(self) -> float:
        return float(self.app.settings.batch.max_wait_s)

    def flush(self, requests: Collection[Request]) -> Any:
        """As celery-batches does (acks late: when the batch function returns), in batches of
        at most ``flush_every``, except that the messages a batch hands back (``requeue``:
        transient errors outlasted the retries, or a rejection that could not be recorded)
        go back to the queue instead of being acknowledged, and all of them do if the batch
        function raised."""
        reqs = list(requests)
        for i in range(0, len(reqs), self.flush_every):
            self._submit(reqs[i : i + self.flush_every])

    def _submit(self, requests: list[Request]) -> None:
        simple = [SimpleRequest.from_request(r) for r in requests]

        def on_return(result: Any) -> None:
            requeue = set(result["requeue"]) if isinstance(result, dict) else None
            for req in requests:
                if requeue is None or req.id in requeue:
                    req.reject(requeue=True)
                else:
                    req.acknowledge()

        if self._pipeline is not None:
            # Not submitted (the worker is stopping): left unacknowledged, delivered again.
            self._pipeline.submit(Job(self, simple, self._run_traced, on_return))
            return
        self._pool.apply_async(apply_batches_task, (self, (simple,), 0, None), callback=on_return)

    def _run_traced(self, simple: list[SimpleRequest]) -> Any:
        """The batch function as celery-batches runs it (task signals, request context)."""
        return apply_batches_task(self, (simple,), 0, None)

    def run_batch(self, requests: Sequence[SimpleRequest]) -> dict[str, Any]:
        """Process one batch: ``{"valid": n, "requeue": [task ids not to acknowledge]}``."""
        t0 = time.time()
        items = [parse(r, self.document_model) for r in requests]
        self._events(items, "task-started")
        failures = [self._failure(it, str(it.result["reason"])) for it in items if it.result]
        valid = [it for it in items if it.result is None]
        failed: dict[str, BaseException] = {}
        requeue: list[str] = []
        try:
            fresh, suspects, dead = self._triage(valid)
        except TRANSIENT as exc:
            fresh, suspects, dead = [], [], []
            failed = {it.request.id: exc for it in valid}
            requeue = list(failed)
        for it, reason in dead:
            it.result = IngestResult(status="rejected", reason=reason).model_dump()
            failures.append(self._failure(it, reason))
        rt = get_runtime(self.app)
        if fresh:
            failed |= self._ingest(rt, fresh, alone_on_error=True)
        for it in suspects:  # one at a time, those last tried alone last
            set_delivery_state(self.app, [_key(it)], "alone")
            failed |= self._ingest(rt, [it])
        requeue += [rid for rid, exc in failed.items() if isinstance(exc, TRANSIENT)]
        for it in valid:
            error = failed.get(it.request.id)
            if error is not None and it.request.id not in requeue:
                failures.append(self._failure(it, f"{type(error).__name__}: {error}"))
        if not record_failures(self.app, failures):
            requeue += [f.task_id for f in failures if f.task_id]
        set_delivery_state(self.app, [_key(it) for it, _ in dead], "dead")
        for it in items:
            error = failed.get(it.request.id)
            if it.request.id in requeue:
                continue
            if error is not None:
                if not it.request.ignore_result:
                    self.backend.mark_as_failure(it.request.id, error, request=it.request)
            elif not it.request.ignore_result:
                self.backend.mark_as_done(it.request.id, it.result, request=it.request)
        runtime = time.time() - t0
        self._events(items, "task-done", runtime=runtime, failed=failed)
        log.info(
            "batch of %d %s: %d valid, %d failed, %d requeued, %.3fs",
            len(items),
            self.name,
            len(valid),
            len(failed),
            len(requeue),
            runtime,
        )
        return {"valid": len(valid), "requeue": sorted(set(requeue))}

    def _triage(self, valid: list[Item]) -> tuple[list[Item], list[Item], list[tuple[Item, str]]]:
        """Count this delivery of each message: first deliveries (and redeliveries of ones
        already done) run as one batch; a message that came back without finishing runs
        alone, after them, since it may be what killed the worker; one that came back too
        often is dead-lettered."""
        deliveries = begin_deliveries(self.app, [(_key(it), self.name) for it in valid])
        fresh, suspects, dead = [], [], []
        for it, d in zip(valid, deliveries, strict=True):
            if exhausted(self.app, d):
                dead.append((it, dead_letter_reason(self.app, d)))
            elif d.count == 1 or d.state == "done":
                fresh.append(it)
            else:
                suspects.append((d.state == "alone", d.count, it))
        suspects.sort(key=lambda s: (s[0], s[1]))
        return fresh, [it for *_, it in suspects], dead

    def _ingest(
        self, rt: WorkerRuntime, items: list[Item], alone_on_error: bool = False
    ) -> dict[str, BaseException]:
        """Ingest items together (marked done with their rows); returns the failed ones. A
        batch that fails on anything but a transient error is redone one message at a time,
        so one bad document fails alone."""
        try:
            with_retries(lambda: ingest_items(rt, items), f"batch of {len(items)}")
        except Exception as exc:
            if not alone_on_error or len(items) == 1 or isinstance(exc, TRANSIENT):
                log.warning("%d message(s) failed: %r", len(items), exc)
                return {it.request.id: exc for it in items}
            log.exception("batch of %d failed; processing its messages one by one", len(items))
            failed: dict[str, BaseException] = {}
            for it in items:
                failed |= self._ingest(rt, [it])
            return failed
        return {}

    def _failure(self, item: Item, reason: str) -> repo.Failure:
        return failure(
            reason,
            {"args": item.request.args, "kwargs": item.request.kwargs},
            self.name,
            item.request.id,
        )

    def _events(
        self,
        items: Sequence[Item],
        kind: str,
        runtime: float = 0.0,
        failed: dict[str, BaseException] | None = None,
    ) -> None:
        """Per-message task events, so Flower shows each message's state."""
        if not items or not self.app.conf.worker_send_task_events:
            return
        try:
            with (
                self.app.connection_for_write() as conn,
                self.app.events.Dispatcher(
                    conn,
                    hostname=items[0].request.hostname,
                    buffer_group=["task"],  # the batch's events in one message (task.multi)
                    buffer_limit=len(items) + 1,
                ) as dispatcher,
            ):
                for it in items:
                    rid = it.request.id
                    if kind == "task-started":
                        dispatcher.send("task-started", uuid=rid)
                    elif failed and rid in failed:
                        dispatcher.send("task-failed", uuid=rid, exception=repr(failed[rid]))
                    else:
                        dispatcher.send(
                            "task-succeeded", uuid=rid, result=repr(it.result), runtime=runtime
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


@shared_task(bind=True, base=ResumeBatch, name=INGEST_RESUME)
def ingest_resume(self: ResumeBatch, requests: list[SimpleRequest]) -> dict[str, Any]:
    """Store resumes, embed their fields and (by default) score each against every stored
    job. Message arguments: ``(document, score=True)``."""
    return self.run_batch(requests)


@shared_task(bind=True, base=JobBatch, name=INGEST_JOB)
def ingest_job(self: JobBatch, requests: list[SimpleRequest]) -> dict[str, Any]:
    """Store jobs, embed their fields and (by default) score every stored resume against
    each. Message arguments: ``(document, score=True)``."""
    return self.run_batch(requests)

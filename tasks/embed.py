"""Tasks of the ``embed`` queue: thin adapters. Validate the message, open one transaction,
call one service function, own the retries. Bad input is recorded and acknowledged.
(Ingest, batched across messages, is in ``tasks.ingest``.)"""

from __future__ import annotations

import json
import logging
from typing import Any, TypeVar

from celery import Task, shared_task, signals
from celery.exceptions import Reject
from pydantic import BaseModel, ValidationError

from jobfit.shared import repository as repo
from jobfit.shared.celery_app import (
    EMBED_QUEUE,
    RESCORE,
    SCORE_JOB,
    SCORE_RESUME,
)
from jobfit.shared.db import transaction
from jobfit.shared.schemas import (
    CandidatesRequest,
    MatchRequest,
    RescoreRequest,
    ScoreResult,
    describe_validation_error,
)
from jobfit.tasks.progress import StateReporter
from jobfit.tasks.reliability import (
    BACKOFF,
    TRANSIENT,
    begin_deliveries,
    dead_letter_reason,
    delivery_key,
    exhausted,
    record_failures,
    set_delivery_state,
)
from jobfit.workers import service
from jobfit.workers.model import base_version
from jobfit.workers.runtime import get_runtime

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


class JobfitTask(Task):
    """Retries transient infrastructure errors with backoff (``tasks.reliability``), never
    invalid input; counts each delivery and dead-letters a message that keeps losing its
    worker; records final failures."""

    autoretry_for = TRANSIENT
    retry_backoff = int(BACKOFF.base)
    retry_backoff_max = int(BACKOFF.cap)
    retry_jitter = True
    max_retries = BACKOFF.retries

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        req = self.request
        if req.called_directly or req.id is None:
            return super().__call__(*args, **kwargs)
        key = delivery_key(req.id, req.retries)
        try:
            [d] = begin_deliveries(self.app, [(key, self.name)])
        except TRANSIENT as exc:  # the database is still down: back to the queue
            raise Reject(exc, requeue=True) from exc
        if exhausted(self.app, d):
            reason = dead_letter_reason(self.app, d)
            record_failure(
                self.app,
                reason=reason,
                payload={"args": args, "kwargs": kwargs},
                task_name=self.name,
                task_id=req.id,
            )
            set_delivery_state(self.app, [key], "dead")
            return {"status": "rejected", "reason": reason}
        if d.state == "done":  # redelivered after it finished (e.g. its ack was lost)
            log.info("%s[%s] delivered again after it finished: not run", self.name, req.id)
            return {"status": "duplicate", "reason": "already done; this delivery is ignored"}
        try:
            return super().__call__(*args, **kwargs)
        finally:  # returned, failed or retried: not a lost worker
            set_delivery_state(self.app, [key], "done")

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        record_failure(
            self.app,
            reason=f"{type(exc).__name__}: {exc}",
            payload={"args": args, "kwargs": kwargs},
            task_name=self.name,
            task_id=task_id,
        )


def record_failure(
    app: Any, *, reason: str, payload: Any, task_name: str | None, task_id: str | None
) -> bool:
    """Record one rejected message (retried; False if it could not be recorded)."""
    return record_failures(app, [failure(reason, payload, task_name, task_id)])


def failure(reason: str, payload: Any, task_name: str | None, task_id: str | None) -> repo.Failure:
    return repo.Failure(reason, _short(payload), task_name, task_id)


def _short(payload: Any) -> str:
    try:
        return json.dumps(payload, default=repr, ensure_ascii=False)[: repo.MAX_FAILED_PAYLOAD]
    except (TypeError, ValueError, RecursionError):
        return repr(payload)[: repo.MAX_FAILED_PAYLOAD]


def _validate(task: Task, model: type[M], data: Any) -> tuple[M | None, str | None]:
    """Parse a message (a JSON object, or a JSON string of one); record it when invalid."""
    try:
        if isinstance(data, str | bytes):
            return model.model_validate_json(data), None
        return model.model_validate(data), None
    except ValidationError as exc:
        reason = describe_validation_error(exc)
    except (ValueError, TypeError, RecursionError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    if not record_failure(
        task.app, reason=reason, payload=data, task_name=task.name, task_id=task.request.id
    ):  # not recorded (database down): back to the queue rather than lost
        raise Reject(reason, requeue=True)
    return None, reason


@shared_task(bind=True, base=JobfitTask, name=SCORE_RESUME)
def score_resume(self: Task, resume_id: Any, job_ids: Any = None) -> dict[str, Any]:
    """Score one stored resume against the given jobs (all stored jobs by default)."""
    req, reason = _validate(self, MatchRequest, {"resume_id": resume_id, "job_ids": job_ids})
    if req is None:
        return ScoreResult(status="rejected", reason=reason).model_dump()
    rt = get_runtime(self.app)
    ctx = rt.model()
    with transaction(rt.session_factory) as session:
        out = service.score_resume(
            session=session, ctx=ctx, resume_id=req.resume_id, job_ids=req.job_ids
        )
    return _score_result(out, ctx.version, f"no resume {req.resume_id!r}")


@shared_task(bind=True, base=JobfitTask, name=SCORE_JOB)
def score_job(self: Task, job_id: Any) -> dict[str, Any]:
    """Score every stored resume against one stored job."""
    req, reason = _validate(self, CandidatesRequest, {"job_id": job_id})
    if req is None:
        return ScoreResult(status="rejected", reason=reason).model_dump()
    rt = get_runtime(self.app)
    ctx = rt.model()
    with transaction(rt.session_factory) as session:
        out = service.score_job(session=session, ctx=ctx, job_id=req.job_id)
    return _score_result(out, ctx.version, f"no job {req.job_id!r}")


@shared_task(bind=True, base=JobfitTask, name=RESCORE)
def rescore(self: Task, request: Any = None) -> dict[str, Any]:
    """Score every stored (resume, job) with the version this worker serves (after a
    promotion: the new one), in batches of resumes, one transaction each, with progress.
    Pairs already scored with that version are skipped, so a redelivery redoes nothing."""
    req, reason = _validate(self, RescoreRequest, request or {})
    if req is None:
        return ScoreResult(status="rejected", reason=reason).model_dump()
    rt = get_runtime(self.app)
    ctx = rt.model(refresh=True)
    if req.version is not None and req.version != base_version(ctx.version):
        # This worker could not switch (yet): leave the rescore to one that serves it.
        return ScoreResult(
            status="rejected",
            model_version=ctx.version,
            reason=f"this worker serves {ctx.version}, not {req.version}",
        ).model_dump()
    report = StateReporter(self)
    with transaction(rt.session_factory) as session:
        resume_ids = [r.external_id for r in repo.list_documents(session=session, kind="resume")]
    scored = embedded = 0
    for start in range(0, len(resume_ids), req.batch_size):
        batch = resume_ids[start : start + req.batch_size]
        with transaction(rt.session_factory) as session:
            resumes = repo.list_documents(session=session, kind="resume", external_ids=batch)
            jobs = repo.list_documents(session=session, kind="job")
            s, e = service.score_pairs(session=session, ctx=ctx, resumes=resumes, jobs=jobs)
        scored, embedded = scored + s, embedded + e
        report("rescoring", start + len(batch), len(resume_ids), model_version=ctx.version)
    return ScoreResult(
        status="ok", scored=scored, embedded=embedded, model_version=ctx.version
    ).model_dump()


def _score_result(out: tuple[int, int] | None, version: str, missing: str) -> dict[str, Any]:
    if out is None:
        return ScoreResult(status="not_found", model_version=version, reason=missing).model_dump()
    return ScoreResult(
        status="ok", scored=out[0], embedded=out[1], model_version=version
    ).model_dump()


def _serves_embed(app: Any) -> bool:
    """Only workers that consume the embed queue hold a model (a train worker loads models
    when a task asks for one)."""
    consume = app.amqp.queues.consume_from
    return not consume or EMBED_QUEUE in consume


@signals.worker_ready.connect
def _load_model_when_ready(sender: Any = None, **_: Any) -> None:
    """Solo/threads pools run tasks in this process: load and warm the model before work."""
    pool = getattr(sender, "pool", None)
    if sender is None or "prefork" in type(pool).__module__ or not _serves_embed(sender.app):
        return
    get_runtime(sender.app).model()


@signals.worker_process_init.connect
def _load_model_in_child(**_: Any) -> None:
    """Prefork: each child loads its own model, after the fork (never CUDA in the parent)."""
    from celery import current_app

    if _serves_embed(current_app):
        get_runtime(current_app).model()


@signals.worker_shutdown.connect
@signals.worker_process_shutdown.connect
def _close_connections(sender: Any = None, **_: Any) -> None:
    """Close this process's database connections on the way out."""
    from celery import current_app

    get_runtime(getattr(sender, "app", None) or current_app).dispose()

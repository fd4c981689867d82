"""Scoring tasks of the ``embed`` queue: validate the message, open one transaction, call one
service function. Delivery accounting, retries and the recording of bad input are the base's
(``tasks.base``)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from jobfit.shared import repository as repo
from jobfit.shared.celery_app import RESCORE, SCORE_JOB, SCORE_RESUME
from jobfit.shared.db import transaction
from jobfit.shared.model_store import base_version
from jobfit.shared.schemas import (
    CandidatesRequest,
    MatchRequest,
    RescoreRequest,
    ScoreResult,
    validate_message,
)
from jobfit.tasks.base import JobfitTask
from jobfit.tasks.progress import StateReporter
from jobfit.workers import service
from jobfit.workers.runtime import get_runtime


@shared_task(bind=True, base=JobfitTask, name=SCORE_RESUME)
def score_resume(self: JobfitTask, resume_id: Any, job_ids: Any = None) -> dict[str, Any]:
    """Score one stored resume against the given jobs (all stored jobs by default)."""
    req = validate_message(MatchRequest, {"resume_id": resume_id, "job_ids": job_ids})
    rt = get_runtime(self.app)
    ctx = rt.model()
    with transaction(rt.session_factory) as session:
        out = service.score_resume(
            session=session, ctx=ctx, resume_id=req.resume_id, job_ids=req.job_ids
        )
    return _score_result(out, ctx.version, f"no resume {req.resume_id!r}")


@shared_task(bind=True, base=JobfitTask, name=SCORE_JOB)
def score_job(self: JobfitTask, job_id: Any) -> dict[str, Any]:
    """Score every stored resume against one stored job."""
    req = validate_message(CandidatesRequest, {"job_id": job_id})
    rt = get_runtime(self.app)
    ctx = rt.model()
    with transaction(rt.session_factory) as session:
        out = service.score_job(session=session, ctx=ctx, job_id=req.job_id)
    return _score_result(out, ctx.version, f"no job {req.job_id!r}")


# How often a rescore for a version a worker does not serve yet comes back (one model reload
# interval apart) before it fails.
RESCORE_RETRIES = 12


@shared_task(bind=True, base=JobfitTask, name=RESCORE)
def rescore(self: JobfitTask, request: Any = None) -> dict[str, Any]:
    """Score every stored (resume, job) with the version this worker serves (after a
    promotion: the new one), in batches of resumes, one transaction each, with progress.
    Pairs already scored with that version are skipped, so a redelivery redoes nothing."""
    req = validate_message(RescoreRequest, request or {})
    rt = get_runtime(self.app)
    ctx = rt.model(refresh=True)
    if req.version is not None and req.version != base_version(ctx.version):
        # This worker could not switch (yet): the rescore comes back after the next reload
        # (to this worker or one that serves the version), for about a minute, then fails.
        raise self.retry(
            exc=LookupError(f"this worker serves {ctx.version}, not {req.version}"),
            countdown=self.app.settings.model.reload_interval_s,
            max_retries=RESCORE_RETRIES,
        )
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

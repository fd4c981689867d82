"""Scoring tasks of the ``embed`` queue: validate the message, open one transaction, call one
service function. Delivery accounting, retries and the recording of bad input are the base's
(``tasks.base``)."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from sqlalchemy.orm import Session, sessionmaker

from jobfit.shared import repository as repo
from jobfit.shared.celery_app import RESCORE, SCORE_JOB, SCORE_RESUME
from jobfit.shared.db import transaction
from jobfit.shared.model_store import base_version
from jobfit.shared.schemas import (
    CandidatesRequest,
    MatchRequest,
    RescoreRequest,
    ScoreResult,
    TopMatch,
    validate_message,
)
from jobfit.tasks.base import JobfitTask
from jobfit.tasks.progress import StateReporter
from jobfit.workers import matching
from jobfit.workers.embedding import ModelContext, document_vectors
from jobfit.workers.runtime import get_runtime


@shared_task(bind=True, base=JobfitTask, name=SCORE_RESUME)
def score_resume(self: JobfitTask, resume_id: Any, job_ids: Any = None) -> dict[str, Any]:
    """Score one stored resume against the given jobs (all stored jobs by default)."""
    req = validate_message(MatchRequest, {"resume_id": resume_id, "job_ids": job_ids})
    rt = get_runtime(self.app)
    ctx = rt.model()
    with transaction(rt.session_factory) as session:
        out = matching.score_resume(
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
        out = matching.score_job(session=session, ctx=ctx, job_id=req.job_id)
    return _score_result(out, ctx.version, f"no job {req.job_id!r}")


# How often a rescore for a version a worker does not serve yet comes back (one model reload
# interval apart) before it fails.
RESCORE_RETRIES = 12


@shared_task(bind=True, base=JobfitTask, name=RESCORE)
def rescore(self: JobfitTask, request: Any = None) -> dict[str, Any]:
    """Score the stored documents with the version this worker serves (after a promotion:
    the new one; ``scoring.mode``: every pair, or every document's vectors and its top K),
    in batches, one transaction each, with progress in Flower. What that version already
    wrote is skipped, so a redelivery redoes nothing."""
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
    if ctx.scoring.mode == "top_k":
        scored, embedded = _rebuild_top_k(rt.session_factory, ctx, req.batch_size, report)
    else:
        scored, embedded = _rescore_all(rt.session_factory, ctx, req.batch_size, report)
    return ScoreResult(
        status="ok", scored=scored, embedded=embedded, model_version=ctx.version
    ).model_dump()


def _rescore_all(
    factory: sessionmaker[Session], ctx: ModelContext, batch_size: int, report: StateReporter
) -> tuple[int, int]:
    """``all`` mode: every stored (resume, job), in batches of resumes."""
    with transaction(factory) as session:
        resume_ids = [r.external_id for r in repo.list_documents(session=session, kind="resume")]
    scored = embedded = 0
    for start in range(0, len(resume_ids), batch_size):
        batch = resume_ids[start : start + batch_size]
        with transaction(factory) as session:
            resumes = repo.list_documents(session=session, kind="resume", external_ids=batch)
            jobs = repo.list_documents(session=session, kind="job")
            s, e = matching.score_pairs(session=session, ctx=ctx, resumes=resumes, jobs=jobs)
        scored, embedded = scored + s, embedded + e
        report("rescoring", start + len(batch), len(resume_ids), model_version=ctx.version)
    return scored, embedded


def _rebuild_top_k(
    factory: sessionmaker[Session], ctx: ModelContext, batch_size: int, report: StateReporter
) -> tuple[int, int]:
    """``top_k`` mode: every document's vectors under this version first (its index fills),
    then every document's own top K from them, in batches, each a transaction. A redelivery
    skips the vectors and pairs already written."""
    key, version = ctx.vectors_key, ctx.model_version_id
    with transaction(factory) as session:
        ids_of = {k: repo.document_ids(session=session, kind=k) for k in ("resume", "job")}
    total = {k: len(v) for k, v in ids_of.items()}
    embedded = done = 0
    for kind in ("resume", "job"):
        after = 0
        while True:
            with transaction(factory) as session:
                ids = repo.stale_vector_ids(
                    session=session,
                    model_version_id=version,
                    kind=kind,
                    key=key,
                    after=after,
                    limit=batch_size,
                )
                if not ids:
                    break
                after = ids[-1]
                rows = list(repo.documents_by_id(session=session, ids=ids).values())
                embedded += document_vectors(session=session, ctx=ctx, rows=rows)[1]
            done += len(ids)
            report("embedding", done, sum(total.values()), model_version=ctx.version)
    scored = done = 0
    for kind in ("resume", "job"):
        ids = ids_of[kind]
        for start in range(0, len(ids), batch_size):
            with transaction(factory) as session:
                rows = list(
                    repo.documents_by_id(
                        session=session, ids=ids[start : start + batch_size]
                    ).values()
                )
                s, e = matching.match_top_k(session=session, ctx=ctx, rows=rows, reverse=False)
            scored, embedded, done = scored + s, embedded + e, done + len(rows)
            report("ranking", done, sum(total.values()), model_version=ctx.version)
    return scored, embedded


def _score_result(
    out: tuple[int, int, list[TopMatch]] | None, version: str, missing: str
) -> dict[str, Any]:
    if out is None:
        return ScoreResult(status="not_found", model_version=version, reason=missing).model_dump()
    return ScoreResult(
        status="ok", scored=out[0], embedded=out[1], model_version=version, top=out[2]
    ).model_dump()

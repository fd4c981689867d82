"""Tasks of the ``train`` queue: labels in, retraining, evaluation. Long tasks report
progress as Celery task state ``PROGRESS`` (Flower shows it; ``jobfit retrain --wait`` draws
it as a progress bar)."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task

from shared import registry
from shared.celery_app import EVALUATE, RESCORE, RETRAIN, SUBMIT_LABEL
from shared.db import transaction
from shared.schemas import EvaluateRequest, LabelMessage, RetrainRequest
from tasks.embed import JobfitTask, _validate
from tasks.progress import StateReporter
from workers import retraining
from workers.runtime import get_runtime

log = logging.getLogger(__name__)


@shared_task(bind=True, base=JobfitTask, name=SUBMIT_LABEL)
def submit_label(self: Task, label: Any) -> dict[str, Any]:
    """Store a match label; it joins the next training set (idempotent: latest wins)."""
    msg, reason = _validate(self, LabelMessage, label)
    if msg is None:
        return {"status": "rejected", "reason": reason}
    with transaction(get_runtime(self.app).session_factory) as session:
        registry.upsert_labels(
            session=session,
            labels=[registry.LabelIn(msg.resume_id, msg.job_id, msg.score)],
            source=msg.source,
        )
    return {"status": "stored", "resume_id": msg.resume_id, "job_id": msg.job_id}


@shared_task(bind=True, base=JobfitTask, name=RETRAIN)
def retrain(self: Task, request: Any = None) -> dict[str, Any]:
    """Fine-tune a new version, evaluate it next to the active one, promote the winner, and
    then ask the embed workers to rescore the stored matches."""
    req, reason = _validate(self, RetrainRequest, request or {})
    if req is None:
        return {"status": "rejected", "reason": reason}
    rt = get_runtime(self.app)
    try:
        out = retraining.retrain(
            settings=rt.settings,
            factory=rt.session_factory,
            request=req,
            progress=StateReporter(self),
        )
    except retraining.NotEnoughDataError as exc:
        return {"status": "rejected", "reason": str(exc)}
    if out["status"] == "promoted" and rt.settings.train.rescore_after_promotion:
        self.app.send_task(RESCORE, kwargs={"request": {"version": out["version"]}})
    return out


@shared_task(bind=True, base=JobfitTask, name=EVALUATE)
def evaluate(self: Task, request: Any = None) -> dict[str, Any]:
    """Metrics of a version (default: the active one) on the stored evaluation split."""
    req, reason = _validate(self, EvaluateRequest, request or {})
    if req is None:
        return {"status": "rejected", "reason": reason}
    rt = get_runtime(self.app)
    try:
        out = retraining.evaluate(
            settings=rt.settings,
            factory=rt.session_factory,
            request=req,
            progress=StateReporter(self),
        )
    except (retraining.NotEnoughDataError, LookupError) as exc:
        return {"status": "rejected", "reason": str(exc)}
    return {"status": "ok", **out}

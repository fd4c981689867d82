"""Tasks of the ``train`` queue: labels in, retraining, evaluation. Long tasks report
progress as Celery task state ``PROGRESS`` (Flower shows it; ``jobfit retrain --wait`` draws
it as a progress bar)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Task, shared_task
from pydantic import BaseModel

from jobfit.shared import repository as repo
from jobfit.shared.celery_app import EVALUATE, RESCORE, RETRAIN, SUBMIT_LABEL
from jobfit.shared.db import transaction
from jobfit.shared.schemas import (
    EvaluateRequest,
    InvalidMessageError,
    LabelMessage,
    RetrainRequest,
    validate_message,
)
from jobfit.tasks.base import JobfitTask
from jobfit.tasks.progress import StateReporter
from jobfit.workers.runtime import get_runtime
from jobfit.workers.training import promotion
from jobfit.workers.training.data import NotEnoughDataError

M = TypeVar("M", bound=BaseModel)


log = logging.getLogger(__name__)


@shared_task(bind=True, base=JobfitTask, name=SUBMIT_LABEL)
def submit_label(self: Task, label: Any) -> dict[str, Any]:
    """Store a match label; it joins the next training set (idempotent: latest wins)."""
    msg = validate_message(LabelMessage, label)
    with transaction(get_runtime(self.app).session_factory) as session:
        repo.upsert_labels(
            session=session,
            labels=[repo.LabelIn(msg.resume_id, msg.job_id, msg.score)],
            source=msg.source,
        )
    return {"status": "stored", "resume_id": msg.resume_id, "job_id": msg.job_id}


@shared_task(bind=True, base=JobfitTask, name=RETRAIN)
def retrain(self: Task, request: Any = None) -> dict[str, Any]:
    """Fine-tune a new version, evaluate it next to the active one, promote the winner, and
    then ask the embed workers to rescore the stored matches."""
    out = _run(self, RetrainRequest, request, promotion.retrain)
    if out["status"] == "promoted" and self.app.settings.train.rescore_after_promotion:
        try:
            self.app.send_task(RESCORE, kwargs={"request": {"version": out["version"]}})
        except Exception:  # the promotion is committed: its answer stands (`jobfit rescore`)
            log.exception("could not ask for the rescore of %s", out["version"])
            out["rescore"] = "not requested: run `jobfit rescore`"
    return out


@shared_task(bind=True, base=JobfitTask, name=EVALUATE)
def evaluate(self: Task, request: Any = None) -> dict[str, Any]:
    """Metrics of a version (default: the active one) on the stored evaluation split."""
    return {"status": "ok", **_run(self, EvaluateRequest, request, promotion.evaluate)}


def _run(
    task: Task, model: type[M], request: Any, call: Callable[..., dict[str, Any]]
) -> dict[str, Any]:
    """Validate the request, call the service with progress as task state; a request the
    data cannot satisfy (too few labels, unknown version) is refused like an invalid one."""
    req = validate_message(model, request or {})
    rt = get_runtime(task.app)
    try:
        return call(
            settings=rt.settings,
            factory=rt.session_factory,
            request=req,
            progress=StateReporter(task),
        )
    except (NotEnoughDataError, LookupError) as exc:
        raise InvalidMessageError(str(exc)) from exc

"""Retrain, evaluate, register, promote: what the ``train`` queue's tasks call.

A trained model is saved into the model store (``trainers.save_atomically``) and registered
as a candidate (with its learned pair weights); it never touches the active version. It is
judged next to the active version on held-out resumes and on held-out jobs, and promoted
only if it wins on the evaluator's declared primary metric, in the evaluator's declared
direction, by the configured margin on the requested split, and is worse on no split by more
than the regression margin (``judge_candidate``). The decision, with the checks that refused
it, is stored on the candidate's row (``params["promotion"]``).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from jobfit.shared import repository as repo
from jobfit.shared.config import Settings
from jobfit.shared.db import transaction
from jobfit.shared.model_store import check_model_dir, version_of
from jobfit.shared.schemas import EvaluateRequest, RetrainRequest
from jobfit.shared.splits import SPLITS, SplitName
from jobfit.workers.embedders.base import ModelSpec, resolve_device
from jobfit.workers.training.data import MIN_EVAL, TrainingData, require_data
from jobfit.workers.training.encoding import Progress, load_model
from jobfit.workers.training.evaluation import MatchEvaluator, describe, metrics_key
from jobfit.workers.training.trainers import (
    TMP_PREFIX,
    TrainParams,
    base_name,
    save_atomically,
    sweep_tmp,
    train,
)

log = logging.getLogger(__name__)


def _figure(metrics: Mapping[str, Any] | None, metric: str) -> float:
    """A stored metric as a float; NaN where it is missing or stored as null."""
    value = None if metrics is None else metrics.get(metric)
    return float(value) if value is not None else float("nan")


def should_promote(
    candidate: Mapping[str, float],
    active: Mapping[str, float] | None,
    margin: float,
    *,
    metric: str,
    greater_is_better: bool,
) -> tuple[bool, str]:
    """The gain rule: the candidate must beat the active version on ``metric`` (an
    evaluator's declared primary metric), in its declared direction, by ``margin``, on the
    same evaluation data."""
    c = _figure(candidate, metric)
    if not math.isfinite(c):
        return False, f"candidate has no {metric}"
    if active is None:
        return True, f"no active version was judged on this data (candidate {c:.4f})"
    a = _figure(active, metric)
    if not math.isfinite(a):
        return True, f"active version has no finite {metric} (candidate {c:.4f})"
    if greater_is_better and c > a + margin:
        return True, f"{metric} {c:.4f} > active {a:.4f} + margin {margin}"
    if not greater_is_better and c < a - margin:
        return True, f"{metric} {c:.4f} < active {a:.4f} - margin {margin}"
    better = "higher" if greater_is_better else "lower"
    return False, (
        f"{metric} {c:.4f} does not beat active {a:.4f} by margin {margin} ({better} is better)"
    )


def regresses(
    c: float, a: float, margin: float, metric: str, greater_is_better: bool
) -> tuple[bool, str]:
    """The guard rule: is the candidate's ``c`` worse than the active version's ``a`` on
    ``metric`` by more than ``margin``? (No active figure: it cannot be worse.)"""
    if not math.isfinite(a):
        return False, "no active figure to compare"
    if not math.isfinite(c):
        return True, f"candidate has no {metric}"
    worse = a - c if greater_is_better else c - a
    if worse > margin:
        return True, f"{metric} {c:.4f} is worse than active {a:.4f} by more than {margin}"
    return False, f"{metric} {c:.4f} vs active {a:.4f}: within {margin}"


@dataclass(frozen=True)
class Decision:
    """Whether a candidate may become active, why, and which checks refused it (each named
    ``held-out resumes`` / ``held-out jobs``); stored on its registry row."""

    promoted: bool
    reason: str
    refused_by: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "promoted": self.promoted,
            "reason": self.reason,
            "refused_by": list(self.refused_by),
        }


def check_name(split: str) -> str:
    return f"held-out {split}s"


def judge_candidate(
    candidate: Mapping[SplitName, Mapping[str, Any]],
    active: Mapping[SplitName, Mapping[str, Any]] | None,
    *,
    primary: SplitName,
    margin: float,
    regress_margin: float,
    metric: str,
    greater_is_better: bool,
) -> Decision:
    """The promotion rule over every split judged (metrics by split): the candidate must
    beat the active version on the ``primary`` split by ``margin`` (``should_promote``) and
    be worse on no split by more than ``regress_margin`` (``regresses``). Every check that
    fails is named, so a registry row says which refused it."""
    active = active or {}
    wins, why = should_promote(
        candidate.get(primary, {}),
        active.get(primary),
        margin,
        metric=metric,
        greater_is_better=greater_is_better,
    )
    reasons = [f"{check_name(primary)}: {why}"]
    refused = [] if wins else [check_name(primary)]
    for split, metrics in candidate.items():
        c, a = _figure(metrics, metric), _figure(active.get(split), metric)
        worse, why = regresses(c, a, regress_margin, metric, greater_is_better)
        if worse:
            reasons.append(f"{check_name(split)}: {why}")
            if check_name(split) not in refused:
                refused.append(check_name(split))
        elif split != primary:
            reasons.append(f"{check_name(split)}: {why}")
    return Decision(not refused, "; ".join(reasons), tuple(refused))


def ensure_configured_version(settings: Settings, factory: sessionmaker[Session]) -> str:
    """The registry's active version; with an empty registry, the configured model."""
    with transaction(factory) as session:
        active = repo.active_model_version(session=session)
        if active is not None:
            return active.version
    spec = ModelSpec.from_settings(settings.model)
    check_model_dir(spec.path)
    from jobfit.workers.embedders.torch import SentenceTransformerEmbedder

    dim = SentenceTransformerEmbedder(spec).dim
    with transaction(factory) as session:
        model = repo.ModelInfo(version_of(spec.path), spec.name, str(spec.path), dim)
        row = repo.ensure_model_version(session=session, model=model)
        return row.version


def _version_info(factory: sessionmaker[Session], version: str) -> tuple[str, str, str]:
    with transaction(factory) as session:
        row = repo.get_version(session=session, version=version)
        return row.version, row.name, row.path


def evaluate_version(
    *,
    settings: Settings,
    factory: sessionmaker[Session],
    version: str,
    data: TrainingData,
    split: SplitName,
    progress: Progress,
    model: Any = None,
) -> dict[str, Any]:
    """Metrics of ``version`` on one split's held-out matches, scored as served (the
    version's pair weights, or the configured override), computed once per evaluation set
    and stored under the version."""
    key = metrics_key(split, data.eval_hash(split))
    with transaction(factory) as session:
        row = repo.get_version(session=session, version=version)
        stored = (row.metrics or {}).get(key)
        path = row.path
        weights = settings.scoring.served_weights(
            repo.pair_weights(session=session, version=version)
        )
    if stored is not None:
        return dict(stored)
    if model is None:
        device = resolve_device(settings.train.device)
        model = load_model(Path(path), device, settings.model.max_seq_length)
    t0 = time.perf_counter()
    evaluator = MatchEvaluator(data.held_out[split], weights=weights)
    # A metric that cannot be computed (NDCG with one held-out job per resume) is stored as
    # null: JSON has no NaN.
    metrics: dict[str, Any] = {
        k: v if math.isfinite(v) else None for k, v in evaluator(model, progress=progress).items()
    }
    metrics["eval_s"] = round(time.perf_counter() - t0, 2)
    metrics["evaluated_at"] = datetime.now(UTC).isoformat()
    with transaction(factory) as session:
        repo.set_metrics(session=session, version=version, key=key, metrics=metrics)
    log.info("evaluated %s on %s: %s", version, key, describe(metrics))
    return metrics


def judged_splits(data: TrainingData, primary: SplitName) -> list[SplitName]:
    """The splits a candidate is judged on: the primary one, and every other with enough
    held-out matches to rank."""
    return [s for s in SPLITS if s == primary or len(data.held_out.get(s, [])) >= MIN_EVAL]


def retrain(
    *,
    settings: Settings,
    factory: sessionmaker[Session],
    request: RetrainRequest,
    progress: Progress,
) -> dict[str, Any]:
    """Fine-tune from the active (or requested) version, register, judge on held-out
    resumes and held-out jobs, maybe promote; the decision is stored on the row."""
    store = settings.model.store
    sweep_tmp(store)
    parent = request.base_version or ensure_configured_version(settings, factory)
    parent_version, parent_name, parent_path = _version_info(factory, parent)
    data = require_data(factory, request.split)
    with transaction(factory) as session:
        parent_weights = repo.pair_weights(session=session, version=parent_version)
    params = TrainParams(
        mode=request.mode or settings.train.mode,
        target=settings.train.target,
        epochs=request.epochs or settings.train.epochs,
        max_steps=request.max_steps,
        time_budget_s=request.time_budget_s,
        max_seq_length=settings.model.max_seq_length,
        head_epochs=request.head_epochs or TrainParams.head_epochs,
    )
    device = resolve_device(settings.train.device)
    progress("loading", 0, 1, parent=parent_version)
    model = load_model(Path(parent_path), device, settings.model.max_seq_length)
    t0 = time.perf_counter()
    work_dir = store / f"{TMP_PREFIX}work-{uuid.uuid4().hex}"
    try:
        result = train(
            model,
            data.train,
            params,
            work_dir=work_dir,
            extra_pairs=data.extra_pairs,
            init_weights=parent_weights,
            progress=progress,
        )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    model = result.model
    train_s = time.perf_counter() - t0
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    name = f"{base_name(parent_name)}-ft-{stamp}-{uuid.uuid4().hex[:6]}"
    path = save_atomically(model, store, name)
    version = version_of(path)
    dim = int(model.get_embedding_dimension() or 0)
    with transaction(factory) as session:
        repo.insert_model_version(
            session=session,
            model=repo.ModelInfo(version, name, str(path), dim),
            status=repo.ModelStatus.CANDIDATE,
            parent_version=parent_version,
            params={
                **params.as_dict(),
                repo.PAIR_WEIGHTS: result.pair_weights,
                "train_info": result.info,
                "split": request.split,
                "data_hash": data.data_hash(),
                "train_matches": len(data.train),
                "extra_pairs": len(data.extra_pairs),
                "train_s": round(train_s, 2),
                "device": device,
            },
        )
    log.info("registered candidate %s (%s, %.1fs)", version, params.mode, train_s)

    judge = partial(
        evaluate_version, settings=settings, factory=factory, data=data, progress=progress
    )
    splits = judged_splits(data, request.split)
    candidate = {s: judge(version=version, split=s, model=model) for s in splits}
    with transaction(factory) as session:
        active_row = repo.active_model_version(session=session)
        active_version = active_row.version if active_row else None
    active = {s: judge(version=active_version, split=s) for s in splits} if active_version else None
    decision = judge_candidate(
        candidate,
        active,
        primary=request.split,
        margin=_or(request.promote_margin, settings.train.promote_margin),
        regress_margin=_or(request.regress_margin, settings.train.regress_margin),
        metric=MatchEvaluator.primary_metric,
        greater_is_better=MatchEvaluator.greater_is_better,
    )
    promoted = bool(request.promote and decision.promoted)
    reason = decision.reason if request.promote else f"promotion not requested; {decision.reason}"
    with transaction(factory) as session:
        repo.record_promotion(
            session=session,
            version=version,
            decision={**decision.as_dict(), "promoted": promoted, "reason": reason},
        )
        if promoted:
            repo.promote(session=session, version=version)
    log.info("%s %s: %s", "promoted" if promoted else "kept candidate", version, reason)
    return {
        "status": "promoted" if promoted else "candidate",
        "version": version,
        "parent_version": parent_version,
        "active_version": version if promoted else active_version,
        "reason": reason,
        "refused_by": list(decision.refused_by),
        "metrics": candidate[request.split],
        "metrics_by_split": candidate,
        "active_metrics": active[request.split] if active else None,
        "pair_weights": result.pair_weights,
        "train_s": round(train_s, 2),
        "train_matches": len(data.train),
        "mode": params.mode,
    }


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def evaluate(
    *,
    settings: Settings,
    factory: sessionmaker[Session],
    request: EvaluateRequest,
    progress: Progress,
) -> dict[str, Any]:
    """Metrics of a version (default: the active one) on the stored evaluation split."""
    version = request.version or ensure_configured_version(settings, factory)
    data = require_data(factory, request.split)
    metrics = evaluate_version(
        settings=settings,
        factory=factory,
        version=version,
        data=data,
        split=request.split,
        progress=progress,
    )
    return {"version": version, "split": request.split, "metrics": metrics}

"""Retrain, evaluate, register, promote: what the ``train`` queue's tasks call.

A trained model is written to a temporary directory in the model store and renamed into
place only once complete, then registered as a candidate: a killed run leaves at most a
``.tmp-*`` directory (swept by the next run) and never touches the active version.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from jobfit.shared import registry
from jobfit.shared import repository as repo
from jobfit.shared.config import Settings
from jobfit.shared.db import transaction
from jobfit.shared.orm import ModelVersionRow
from jobfit.shared.schemas import EvaluateRequest, RetrainRequest
from jobfit.shared.splits import SplitName
from jobfit.workers import training
from jobfit.workers.model import ModelSpec, check_model_dir, resolve_device, version_of
from jobfit.workers.training import Progress, TrainingData

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
STALE_TMP_S = 6 * 3600
MIN_TRAIN, MIN_EVAL = 2, 3


class NotEnoughDataError(ValueError):
    """Too few labelled matches (with stored documents) to train or to judge a model."""


def base_name(name: str) -> str:
    """``all-MiniLM-L6-v2-ft-20261127-081500-ab12cd`` -> ``all-MiniLM-L6-v2``."""
    return re.sub(r"-ft-\d{8}-\d{6}-[0-9a-f]{6}$", "", name)


def sweep_tmp(store: Path, max_age_s: float = STALE_TMP_S) -> list[Path]:
    """Remove temporary model directories left by killed runs."""
    removed = []
    if store.is_dir():
        for d in store.glob(f"{TMP_PREFIX}*"):
            if d.is_dir() and time.time() - d.stat().st_mtime > max_age_s:
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
    return removed


def save_atomically(model: Any, store: Path, name: str) -> Path:
    """Save into ``store/.tmp-<uuid>``, then rename to ``store/<name>``."""
    store.mkdir(parents=True, exist_ok=True)
    tmp = store / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    try:
        model.save(str(tmp))
        shutil.rmtree(tmp / "checkpoints", ignore_errors=True)
        check_model_dir(tmp)
        final = store / name
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def ensure_configured_version(settings: Settings, factory: sessionmaker[Session]) -> str:
    """The registry's active version; with an empty registry, the configured model."""
    with transaction(factory) as session:
        active = repo.active_model_version(session=session)
        if active is not None:
            return active.version
    spec = ModelSpec.from_settings(settings.model)
    check_model_dir(spec.path)
    from jobfit.workers.model import SentenceTransformerEmbedder

    dim = SentenceTransformerEmbedder(spec).dim
    with transaction(factory) as session:
        row = repo.ensure_model_version(
            session=session,
            version=version_of(spec.path),
            name=spec.name,
            path=str(spec.path),
            dim=dim,
        )
        return row.version


def _version_info(factory: sessionmaker[Session], version: str) -> tuple[str, str, str]:
    with transaction(factory) as session:
        row = registry.get_version(session=session, version=version)
        return row.version, row.name, row.path


def load_data(factory: sessionmaker[Session], split: SplitName) -> TrainingData:
    with transaction(factory) as session:
        data = training.load_training_data(session=session, split=split)
    if len(data.train) < MIN_TRAIN or len(data.eval) < MIN_EVAL:
        raise NotEnoughDataError(
            f"split {split!r}: {len(data.train)} training and {len(data.eval)} evaluation "
            f"labelled matches with stored documents (need {MIN_TRAIN} and {MIN_EVAL}); "
            f"{data.pending_labels} labels wait for their documents"
        )
    return data


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
    """Metrics of ``version`` on the stored evaluation split, computed once per evaluation
    set and stored under the version."""
    key = training.metrics_key(split, data.eval_hash())
    with transaction(factory) as session:
        row = registry.get_version(session=session, version=version)
        stored = (row.metrics or {}).get(key)
        path = row.path
    if stored is not None:
        return dict(stored)
    if model is None:
        device = resolve_device(settings.train.device)
        model = training.load_model(Path(path), device, settings.model.max_seq_length)
    t0 = time.perf_counter()
    metrics: dict[str, Any] = training.evaluate(model, data.eval, progress=progress)
    metrics["eval_s"] = round(time.perf_counter() - t0, 2)
    metrics["evaluated_at"] = datetime.now(UTC).isoformat()
    with transaction(factory) as session:
        registry.set_metrics(session=session, version=version, key=key, metrics=metrics)
    log.info("evaluated %s on %s: %s", version, key, training.describe(metrics))
    return metrics


def retrain(
    *,
    settings: Settings,
    factory: sessionmaker[Session],
    request: RetrainRequest,
    progress: Progress,
) -> dict[str, Any]:
    """Fine-tune from the active (or requested) version, register, judge, maybe promote."""
    store = settings.model.store
    sweep_tmp(store)
    parent = request.base_version or ensure_configured_version(settings, factory)
    parent_version, parent_name, parent_path = _version_info(factory, parent)
    data = load_data(factory, request.split)
    params = training.TrainParams(
        mode=request.mode or settings.train.mode,
        epochs=request.epochs or settings.train.epochs,
        max_steps=request.max_steps,
        max_seq_length=settings.model.max_seq_length,
        **({"head_epochs": request.head_epochs} if request.head_epochs else {}),
    )
    pairs = training.pair_examples(data.train, data.extra_pairs)
    device = resolve_device(settings.train.device)
    progress("loading", 0, 1, parent=parent_version)
    model = training.load_model(Path(parent_path), device, settings.model.max_seq_length)
    t0 = time.perf_counter()
    work_dir = store / f"{TMP_PREFIX}work-{uuid.uuid4().hex}"
    try:
        model = training.train(model, pairs, params, work_dir=work_dir, progress=progress)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    train_s = time.perf_counter() - t0
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    name = f"{base_name(parent_name)}-ft-{stamp}-{uuid.uuid4().hex[:6]}"
    path = save_atomically(model, store, name)
    version = version_of(path)
    dim = int(model.get_embedding_dimension() or 0)
    with transaction(factory) as session:
        registry.register_model_version(
            session=session,
            version=version,
            name=name,
            path=str(path),
            dim=dim,
            parent_version=parent_version,
            params={
                **params.as_dict(),
                "split": request.split,
                "data_hash": data.data_hash(),
                "train_matches": len(data.train),
                "train_pairs": len(pairs),
                "extra_pairs": len(data.extra_pairs),
                "train_s": round(train_s, 2),
                "device": device,
            },
        )
    log.info("registered candidate %s (%s, %.1fs)", version, params.mode, train_s)

    def judge(v: str, loaded: Any = None) -> dict[str, Any]:
        return evaluate_version(
            settings=settings,
            factory=factory,
            version=v,
            data=data,
            split=request.split,
            progress=progress,
            model=loaded,
        )

    candidate = judge(version, model)
    with transaction(factory) as session:
        active_row = repo.active_model_version(session=session)
        active_version = active_row.version if active_row else None
    active = judge(active_version) if active_version else None
    margin = (
        request.promote_margin
        if request.promote_margin is not None
        else settings.train.promote_margin
    )
    wins, reason = training.should_promote(candidate, active, margin)
    promoted = bool(request.promote and wins)
    if promoted:
        with transaction(factory) as session:
            registry.promote(session=session, version=version)
        log.info("promoted %s: %s", version, reason)
    return {
        "status": "promoted" if promoted else "candidate",
        "version": version,
        "parent_version": parent_version,
        "active_version": version if promoted else active_version,
        "reason": reason if request.promote else f"promotion not requested; {reason}",
        "metrics": candidate,
        "active_metrics": active,
        "train_s": round(train_s, 2),
        "train_matches": len(data.train),
        "train_pairs": len(pairs),
        "mode": params.mode,
    }


def evaluate(
    *,
    settings: Settings,
    factory: sessionmaker[Session],
    request: EvaluateRequest,
    progress: Progress,
) -> dict[str, Any]:
    version = request.version or ensure_configured_version(settings, factory)
    data = load_data(factory, request.split)
    metrics = evaluate_version(
        settings=settings,
        factory=factory,
        version=version,
        data=data,
        split=request.split,
        progress=progress,
    )
    return {"version": version, "split": request.split, "metrics": metrics}


def version_rows(factory: sessionmaker[Session]) -> list[ModelVersionRow]:
    with transaction(factory) as session:
        rows = registry.list_versions(session=session)
        session.expunge_all()
        return rows

"""``make bench-quality``: how well untuned and fine-tuned models rank the real data.

For each model and each split (resumes held out, jobs held out; the same deterministic
assignment the registry stores), it trains on the training side only and reports, on the
held-out side: match-level Spearman/Pearson (the served score: weighted mean of the pair
cosines, with the learned pair weights; also with equal weights), field-pair
Spearman/Pearson, NDCG@10, the learned weights and the training wall time. ``full+head``
reports the model after each stage. ``--pairs`` restricts the pair types (the ablation that
decides which pair types are kept). No database: this measures the training code itself,
the same functions the ``train`` queue runs.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from jobfit.shared.config import PairType
from jobfit.shared.fields import field_texts
from jobfit.shared.splits import SplitName, split_part
from jobfit.workers.training import trainers
from jobfit.workers.training.data import MatchExample, match_examples, split_examples
from jobfit.workers.training.encoding import Progress, encode_unique, load_model, no_progress
from jobfit.workers.training.evaluation import MatchEvaluator, metrics_from_vectors
from jobfit.workers.training.trainers import TrainParams
from tools.dataset import read_dataset

# The goals (match Spearman on held-out resumes / held-out jobs).
GOALS = {
    "all-MiniLM-L6-v2": {"resume": 0.75, "job": 0.55},
    "all-mpnet-base-v2": {"resume": 0.80, "job": 0.70},
}


@dataclass(frozen=True)
class QualityRun:
    name: str
    path: Path
    mode: trainers.Mode
    params: TrainParams


def train_params(base: TrainParams, overrides: Sequence[str]) -> TrainParams:
    """``NAME=VALUE`` overrides of TrainParams fields, each parsed as the field's type."""
    changes: dict[str, Any] = {}
    for item in overrides:
        name, _, value = item.partition("=")
        current = getattr(base, name)  # AttributeError names an unknown field
        kind = type(current)
        changes[name] = value.lower() in {"1", "true", "yes"} if kind is bool else kind(value)
    return replace(base, **changes)


def labelled_matches(csv: Path, pairs: Collection[PairType] | None = None) -> list[MatchExample]:
    """The dataset's labelled matches; ``pairs``: only those pair types (an ablation)."""
    data = read_dataset(csv)
    keep = set(PairType) if pairs is None else set(pairs)

    def texts(doc: Any) -> dict[PairType, str]:
        return {p: t for p, t in field_texts(doc).items() if p in keep}

    resume_texts = {r.id: texts(r) for r in data.resumes}
    job_texts = {j.id: texts(j) for j in data.jobs}
    matches, _ = match_examples(
        ((lb.resume_id, lb.job_id, lb.score) for lb in data.labels), resume_texts, job_texts
    )
    return matches


def split(
    matches: Sequence[MatchExample], by: SplitName
) -> tuple[list[MatchExample], list[MatchExample]]:
    ids = {m.resume_id if by == "resume" else m.job_id for m in matches}
    parts = {i: split_part(by, i) for i in ids}
    return split_examples(matches, parts, by)


def _round(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in metrics.items()}


def _as_pair_types(weights: dict[str, float]) -> dict[PairType, float]:
    return {PairType(k): v for k, v in weights.items()}


def run_one(
    run: QualityRun,
    matches: Sequence[MatchExample],
    by: SplitName,
    *,
    model: Any,
    base: dict[str, np.ndarray],
    progress: Progress,
) -> dict[str, Any]:
    """Train on one split's training side, judge on its held-out side. ``base``: the
    untuned model's embeddings of every text (encoded once per model, shared by the splits
    and by the head, which is judged through ``through_head`` without re-encoding)."""
    import copy
    import tempfile

    work_dir = Path(tempfile.mkdtemp(prefix="jobfit-quality-"))
    train, held_out = split(matches, by)
    out: dict[str, Any] = {
        "model": run.name,
        "mode": run.mode,
        "split": f"held-out {by}s",
        "train_matches": len(train),
        "eval_matches": len(held_out),
        "train_pairs": sum(len(m.pairs) for m in train),
        "untuned": _round(metrics_from_vectors(base, held_out)),
        "stages": [],
    }
    stages: list[tuple[str, trainers.Mode]] = (
        [("full", "full"), ("full+head", "head")]
        if run.mode == "full+head"
        else [(run.mode, run.mode)]
    )
    total_s = 0.0
    current, weights = copy.deepcopy(model), None
    for label, mode in stages:
        t0 = time.perf_counter()
        result = trainers.train(
            current,
            train,
            replace(run.params, mode=mode),
            work_dir=work_dir,
            init_weights=weights,
            base_vectors=base if label == "head" else None,
            progress=progress,
        )
        total_s += time.perf_counter() - t0
        current, weights = result.model, result.pair_weights
        served = _as_pair_types(weights)
        if label == "head":
            vectors = trainers.through_head(current, base)
            metrics = metrics_from_vectors(vectors, held_out, served)
            equal = metrics_from_vectors(vectors, held_out)
        else:
            metrics = MatchEvaluator(held_out, batch_size=run.params.batch_size, weights=served)(
                current
            )
            equal = MatchEvaluator(held_out, batch_size=run.params.batch_size)(current)
        out["stages"].append(
            {
                "mode": label,
                "train_s": round(total_s, 1),
                "tuned": _round(metrics),
                "match_spearman_equal_weights": round(equal["match_spearman"], 4),
                "pair_weights": weights,
                "train_info": result.info,
            }
        )
    best = max(out["stages"], key=lambda s: s["tuned"]["match_spearman"])
    out["tuned"] = best["tuned"]
    out["train_s"] = best["train_s"]
    goal = GOALS.get(run.name, {}).get(by)
    if goal is not None:
        out["goal_match_spearman"] = goal
        out["goal_met"] = best["tuned"]["match_spearman"] >= goal
    return out


def run_quality(
    csv: Path,
    runs: Sequence[QualityRun],
    *,
    splits: Sequence[SplitName] = ("resume", "job"),
    pairs: Collection[PairType] | None = None,
    device: str = "cpu",
    time_budget_s: float | None = None,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Every run on every split; stops starting new ones once ``time_budget_s`` is spent.
    Each model's untuned embeddings of every text are computed once per run."""
    import torch

    matches = labelled_matches(csv, pairs)
    texts = sorted({t for m in matches for _, a, b in m.pairs for t in (a, b)})
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    skipped: list[str] = []
    embed_s: dict[str, float] = {}
    cache: dict[Path, tuple[Any, dict[str, np.ndarray]]] = {}
    for run in runs:
        if run.path not in cache:
            t1 = time.perf_counter()
            model = load_model(run.path, device, run.params.max_seq_length)
            base = encode_unique(
                trainers.encoder_of(model),
                texts,
                batch_size=run.params.batch_size,
                progress=progress,
                stage=f"embedding {run.name}",
            )
            cache[run.path] = (model, base)
            embed_s[run.name] = round(time.perf_counter() - t1, 1)
        model, base = cache[run.path]
        for by in splits:
            if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
                skipped.append(f"{run.name} {run.mode} held-out {by}s")
                continue
            result = run_one(run, matches, by, model=model, base=base, progress=progress)
            result["embed_s"] = embed_s[run.name]
            results.append(result)
    return {
        "machine": {
            "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "device": device,
            "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "data": {
            "csv": str(csv),
            "matches": len(matches),
            "field_pairs": sum(len(m.pairs) for m in matches),
            "unique_texts": len(texts),
            "pair_types": sorted({p.value for m in matches for p, _, _ in m.pairs}),
        },
        "objective": "match-level MSE: a match's score (the weighted mean of its pair cosines, "
        "pair-type weights learned) against its target (params.target: rank, the label's rank "
        "on the label's scale; label, the label itself)",
        "params": [{"model": r.name, **r.params.as_dict()} for r in runs],
        "embed_s": embed_s,
        "results": results,
        "skipped_for_time": skipped,
        "wall_s": round(time.perf_counter() - t0, 1),
    }

"""``make bench-quality``: how well untuned and fine-tuned models rank the real data.

For each model and each split (resumes held out, jobs held out; the same deterministic
assignment the registry stores), it trains on the training side only and reports, on the
held-out side: match-level Spearman/Pearson, field-pair Spearman/Pearson, NDCG@10 and the
training wall time. ``full+head`` reports the model after each stage. No database: this
measures the training code itself, the same functions the ``train`` queue runs.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from jobfit.shared.fields import field_texts
from jobfit.shared.splits import SplitName, split_part
from jobfit.workers.training import trainers
from jobfit.workers.training.data import (
    MatchExample,
    match_examples,
    pair_examples,
    split_examples,
)
from jobfit.workers.training.encoding import Progress, load_model, no_progress
from jobfit.workers.training.evaluation import MatchEvaluator
from jobfit.workers.training.trainers import TrainParams
from tools.dataset import read_dataset

GOALS = {"all-MiniLM-L6-v2": 0.75, "all-mpnet-base-v2": 0.80}


@dataclass(frozen=True)
class QualityRun:
    name: str
    path: Path
    mode: trainers.Mode
    params: TrainParams


def labelled_matches(csv: Path) -> list[MatchExample]:
    data = read_dataset(csv)
    resume_texts = {r.id: field_texts(r) for r in data.resumes}
    job_texts = {j.id: field_texts(j) for j in data.jobs}
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


def run_one(
    run: QualityRun,
    matches: Sequence[MatchExample],
    by: SplitName,
    *,
    device: str,
    progress: Progress,
) -> dict[str, Any]:
    import tempfile

    work_dir = Path(tempfile.mkdtemp(prefix="jobfit-quality-"))
    train, held_out = split(matches, by)
    pairs = pair_examples(train)
    model = load_model(run.path, device, run.params.max_seq_length)
    untuned = MatchEvaluator(held_out, batch_size=run.params.batch_size)(model)
    out: dict[str, Any] = {
        "model": run.name,
        "mode": run.mode,
        "split": f"held-out {by}s",
        "train_matches": len(train),
        "eval_matches": len(held_out),
        "train_pairs": len(pairs),
        "untuned": _round(untuned),
        "stages": [],
    }
    stages: list[tuple[str, trainers.Mode]] = (
        [("full", "full"), ("full+head", "head")]
        if run.mode == "full+head"
        else [(run.mode, run.mode)]
    )
    total_s = 0.0
    for label, mode in stages:
        t0 = time.perf_counter()
        model = trainers.train(
            model,
            pairs,
            replace(run.params, mode=mode),
            work_dir=work_dir,
            progress=progress,
        )
        total_s += time.perf_counter() - t0
        metrics = MatchEvaluator(held_out, batch_size=run.params.batch_size)(model)
        out["stages"].append(
            {"mode": label, "train_s": round(total_s, 1), "tuned": _round(metrics)}
        )
    best = max(out["stages"], key=lambda s: s["tuned"]["match_spearman"])
    out["tuned"] = best["tuned"]
    out["train_s"] = best["train_s"]
    goal = GOALS.get(run.name)
    if goal is not None and by == "resume":
        out["goal_match_spearman"] = goal
        out["goal_met"] = best["tuned"]["match_spearman"] >= goal
    return out


def encode_throughput(path: Path, texts: Sequence[str], *, device: str, fp16: bool) -> float:
    """Sentences/s of a plain ``encode`` of the texts (after one warm-up batch)."""
    import torch

    model = load_model(path, device)
    if fp16 and device.startswith("cuda"):
        model.half()
    batch = 128 if device.startswith("cuda") else 16
    model.encode(list(texts[:batch]), batch_size=batch)
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.encode(list(texts), batch_size=batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return len(texts) / (time.perf_counter() - t0)


def run_quality(
    csv: Path,
    runs: Sequence[QualityRun],
    *,
    splits: Sequence[SplitName] = ("resume", "job"),
    device: str = "cpu",
    time_budget_s: float | None = None,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Every run on every split; stops starting new ones once ``time_budget_s`` is spent."""
    import torch

    matches = labelled_matches(csv)
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    skipped: list[str] = []
    for run in runs:
        for by in splits:
            if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
                skipped.append(f"{run.name} {run.mode} held-out {by}s")
                continue
            results.append(run_one(run, matches, by, device=device, progress=progress))
    texts = sorted({t for m in matches for _, a, b in m.pairs for t in (a, b)})
    throughput = {
        run.name: round(encode_throughput(run.path, texts, device=device, fp16=True), 1)
        for run in {r.name: r for r in runs}.values()
    }
    return {
        "machine": {
            "platform": platform.platform(),
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
        },
        "label_rule": "each field pair of a match carries the match label; duplicate pairs "
        "take the mean; score = mean of the match's pair cosines",
        "results": results,
        "skipped_for_time": skipped,
        "encode_sentences_per_s": throughput,
        "wall_s": round(time.perf_counter() - t0, 1),
    }

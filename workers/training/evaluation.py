"""Evaluation of a model on labelled matches (the stored evaluation split).

``MatchEvaluator`` returns a metrics dict and declares, as sentence-transformers' evaluators
do (``primary_metric``, ``greater_is_better``), which metric judges a model and in which
direction: promotion reads that declaration instead of naming a metric itself.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from jobfit.shared.config import PairType, equal_weights
from jobfit.workers.scoring import weighted_mean
from jobfit.workers.training.data import MatchExample
from jobfit.workers.training.encoding import Progress, encode_unique, no_progress


def ndcg_at(labels_by_query: Sequence[tuple[np.ndarray, np.ndarray]], k: int = 10) -> float:
    """Mean NDCG@k over queries of (true gains, predicted scores); single-item queries skip."""
    from sklearn.metrics import ndcg_score

    values = [
        float(ndcg_score(y[None, :], s[None, :], k=k))
        for y, s in labels_by_query
        if len(y) > 1 and np.any(y > 0)
    ]
    return float(np.mean(values)) if values else float("nan")


def score_examples(
    vectors: Mapping[str, np.ndarray],
    matches: Sequence[MatchExample],
    weights: Mapping[PairType, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pair cosines, pair labels, match scores, match labels) from normalised vectors; a
    match score is the weighted mean of its pair cosines (``workers.scoring.score_match``,
    equal weights by default). Every labelled pair is scored."""
    w = weights or equal_weights()
    pair_cos: list[float] = []
    pair_y: list[float] = []
    match_s: list[float] = []
    match_y: list[float] = []
    for m in matches:
        cos = {p: float(vectors[a] @ vectors[b]) for p, a, b in m.pairs}
        pair_cos.extend(cos.values())
        pair_y.extend([m.label] * len(cos))
        score = weighted_mean(cos, w)
        match_s.append(0.0 if score is None else score)  # served as "no score": ranks last
        match_y.append(m.label)
    return np.array(pair_cos), np.array(pair_y), np.array(match_s), np.array(match_y)


def metrics_from_vectors(
    vectors: Mapping[str, np.ndarray],
    matches: Sequence[MatchExample],
    weights: Mapping[PairType, float] | None = None,
) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr

    pair_cos, pair_y, match_s, match_y = score_examples(vectors, matches, weights)
    by_resume: dict[str, list[int]] = defaultdict(list)
    for i, m in enumerate(matches):
        by_resume[m.resume_id].append(i)
    queries = [(match_y[idx], match_s[idx]) for idx in by_resume.values()]
    return {
        "match_spearman": float(spearmanr(match_s, match_y).statistic),
        "match_pearson": float(pearsonr(match_s, match_y).statistic),
        "pair_spearman": float(spearmanr(pair_cos, pair_y).statistic),
        "pair_pearson": float(pearsonr(pair_cos, pair_y).statistic),
        "ndcg_at_10": ndcg_at(queries, 10),
        "eval_matches": float(len(matches)),
        "eval_pairs": float(len(pair_cos)),
    }


@dataclass(frozen=True)
class MatchEvaluator:
    """Metrics of a model on labelled matches. Pair Pearson/Spearman are what
    sentence-transformers' EmbeddingSimilarityEvaluator computes (cosine vs label); here each
    distinct text is encoded once instead of once per pair (38k pairs, 1.2k texts).

    The primary metric is the match-level Spearman: how well the served match score (the
    weighted mean of its pair cosines, with the version's served weights) orders matches as
    the labels do. Promotion reads it on held-out resumes and on held-out jobs."""

    matches: Sequence[MatchExample]
    batch_size: int = 16
    weights: Mapping[PairType, float] | None = None  # the version's served pair weights

    primary_metric: ClassVar[str] = "match_spearman"
    greater_is_better: ClassVar[bool] = True

    def __call__(self, model: Any, *, progress: Progress = no_progress) -> dict[str, float]:
        if len(self.matches) < 3:
            raise ValueError(
                f"need at least 3 labelled matches to evaluate, got {len(self.matches)}"
            )
        texts = [t for m in self.matches for _, a, b in m.pairs for t in (a, b)]
        vectors = encode_unique(
            model, texts, batch_size=self.batch_size, progress=progress, stage="evaluating"
        )
        return metrics_from_vectors(vectors, self.matches, self.weights)


def metrics_key(split: str, eval_hash: str) -> str:
    """Where a version's metrics on one evaluation set are stored: comparable on equal keys."""
    return f"{split}:{eval_hash[:16]}"


def describe(metrics: Mapping[str, Any]) -> str:
    return json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})

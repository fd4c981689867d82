"""Pure scoring: pair cosines and the match score, and stored vectors decoded (pgvector's
binary form). No I/O, no model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from jobfit.shared.config import PairType

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True)
class MatchScore:
    """A scored (resume, job): the weighted mean of the pair cosines it used."""

    score: float | None  # None when the two documents share no pair type
    pair_scores: dict[PairType, float]

    @property
    def pairs_used(self) -> list[PairType]:
        return list(self.pair_scores)


def from_pgvector(raw: bytes) -> Vector:
    """A pgvector ``vector`` in its binary form (``vector_send``: two big-endian uint16, the
    dimension and 0, then the float32 values big endian) as a float32 array."""
    dim = int.from_bytes(raw[:2], "big")
    return np.frombuffer(raw, dtype=">f4", count=dim, offset=4).astype(np.float32)


def from_halfvec(raw: bytes) -> Vector:
    """A pgvector ``halfvec`` in its binary form (``halfvec_send``: two big-endian uint16, the
    dimension and 0, then the float16 values big endian) as a float32 array."""
    dim = int.from_bytes(raw[:2], "big")
    return np.frombuffer(raw, dtype=">f2", count=dim, offset=4).astype(np.float32)


def cosine(a: Vector, b: Vector) -> float:
    """Cosine similarity; exact for any vectors, a dot product for normalised ones (in float64,
    norms too: ``vectors.score_many`` computes the same for many at once)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    na, nb = float(np.linalg.norm(a64)), float(np.linalg.norm(b64))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a64, b64) / (na * nb))


def score_match(
    resume_vectors: Mapping[PairType, Vector],
    job_vectors: Mapping[PairType, Vector],
    weights: Mapping[PairType, float],
) -> MatchScore:
    """Score every pair type both sides have; the match is their weighted mean.

    A pair whose weight is 0 is still reported but does not move the match score. If no used
    pair has weight, the match score is None rather than a made-up number.
    """
    pair_scores = {
        p: cosine(resume_vectors[p], job_vectors[p])
        for p in PairType
        if p in resume_vectors and p in job_vectors
    }
    return MatchScore(score=weighted_mean(pair_scores, weights), pair_scores=pair_scores)


def weighted_mean(
    pair_scores: Mapping[PairType, float], weights: Mapping[PairType, float]
) -> float | None:
    """The match score: the weighted mean of the pair scores it has (serving and evaluation
    both compute it here); None if no pair it has carries weight."""
    total_weight = sum(weights.get(p, 0.0) for p in pair_scores)
    if not pair_scores or total_weight <= 0.0:
        return None
    return float(sum(weights.get(p, 0.0) * s for p, s in pair_scores.items()) / total_weight)

"""A document's vectors under one model version, as ``document_vectors`` stores them. Pure: no
I/O, no model.

slots      its field vectors, one per slot of its side it has text for (``shared.fields``:
           a text two pair types share is one slot); exact scoring reads them.
retrieval  one vector whose inner product with the other side's ranks the other side's
           documents by an estimate of the match score: ``len(JOB_SLOTS) * dim`` wide, a
           missing field's block zeros. A job lays out its slot vectors in ``JOB_SLOTS``
           order; a resume puts in block s the weighted sum of its vectors of the pair types
           that read job slot s; each side is divided by the weight of the pair types it has
           (W_r, W_j)::

               <resume, job> = sum_p w_p cos(r_p, j_p) / (W_r * W_j)

           The match score (``scoring.weighted_mean``) divides the same sum by the weight of
           the pairs both sides have. For one query document the other factor is constant, so
           the ranking is exact whenever the query document has every pair type the other
           has (a complete resume ranks jobs exactly); otherwise it is an estimate, and the
           candidates it finds are scored exactly. Weights are on both sides: a weights
           change rewrites every vector (``scoring_key``).

MiniLM (384) gives 1,920 dimensions, mpnet (768) 3,840: both under pgvector's HNSW limit for
``halfvec`` (4,000), which the retrieval vectors use (README "Matching at scale").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from jobfit.shared.config import PairType
from jobfit.shared.fields import JOB_SLOT, JOB_SLOTS, slot_map
from jobfit.workers.scoring import MatchScore, Vector, score_match


@dataclass(frozen=True)
class DocumentVectors:
    """A document's field vectors by slot (float32, L2-normalised)."""

    kind: str  # resume | job
    slots: dict[str, Vector]

    @classmethod
    def from_pairs(cls, kind: str, pair_vectors: Mapping[PairType, Vector]) -> DocumentVectors:
        by_slot = slot_map(kind)
        return cls(kind, {by_slot[p]: v for p, v in pair_vectors.items()})

    def pair_vectors(self) -> dict[PairType, Vector]:
        """Its vector for each pair type it has text for."""
        return {p: self.slots[s] for p, s in slot_map(self.kind).items() if s in self.slots}

    def packed(self) -> tuple[list[str], Vector]:
        """(slot names, their vectors concatenated): the stored ``slots`` and ``fields``."""
        names = [s for s in _order(self.kind) if s in self.slots]
        if not names:
            return [], np.zeros(0, dtype=np.float32)
        return names, np.concatenate([self.slots[s] for s in names]).astype(np.float32)

    @classmethod
    def unpack(cls, kind: str, names: Sequence[str], fields: Vector) -> DocumentVectors:
        """The inverse of ``packed``."""
        if not names:
            return cls(kind, {})
        parts = np.split(np.asarray(fields, dtype=np.float32), len(names))
        return cls(kind, dict(zip(names, parts, strict=True)))


def _order(kind: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(slot_map(kind).values()))


def retrieval_dims(dim: int) -> int:
    """Width of a version's retrieval vectors for a model of ``dim`` dimensions."""
    return len(JOB_SLOTS) * dim


def retrieval_vector(doc: DocumentVectors, weights: Mapping[PairType, float], dim: int) -> Vector:
    """The document's retrieval vector (module docstring)."""
    blocks = {s: np.zeros(dim, dtype=np.float32) for s in JOB_SLOTS}
    pairs = doc.pair_vectors()
    total = sum(weights.get(p, 0.0) for p in pairs)
    if total <= 0.0:
        return np.concatenate(list(blocks.values()))
    if doc.kind == "job":
        for s, v in doc.slots.items():
            blocks[s] = v / np.float32(total)
    else:
        for p, v in pairs.items():
            blocks[JOB_SLOT[p]] += np.float32(weights.get(p, 0.0) / total) * v
    return np.concatenate([blocks[s] for s in JOB_SLOTS]).astype(np.float32)


def score(
    resume: DocumentVectors, job: DocumentVectors, weights: Mapping[PairType, float]
) -> MatchScore:
    """The exact match score of a (resume, job): ``scoring.score_match`` on their pairs."""
    return score_match(resume.pair_vectors(), job.pair_vectors(), weights)

"""The retrieval vectors' algebra (workers/vectors.py) and the field slots (shared/fields.py)."""

from __future__ import annotations

import numpy as np
import pytest

from jobfit.shared.client import read_documents
from jobfit.shared.config import PairType
from jobfit.shared.fields import JOB_SLOT, RESUME_SLOT, field_texts
from jobfit.shared.sample import SAMPLE_DIR
from jobfit.shared.schemas import JobDocument, ResumeDocument
from jobfit.workers.vectors import (
    ENTRY_NORM,
    TYPICAL_SCORE,
    DocumentVectors,
    query_vector,
    retrieval_dims,
    retrieval_vector,
    score,
    score_many,
)

DIM = 16


def unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def random_doc(rng: np.random.Generator, kind: str) -> DocumentVectors:
    slots = dict.fromkeys((RESUME_SLOT if kind == "resume" else JOB_SLOT).values())
    present = [s for s in slots if rng.random() < 0.7] or list(slots)[:1]
    return DocumentVectors(kind, {s: unit(rng) for s in present})


def main_entry_unscaled(doc: DocumentVectors, weights: dict[PairType, float]) -> np.ndarray:
    """An entry before it is scaled to the entry norm (a job's under skewed weights)."""
    top = max(weights.values())
    pairs = doc.pair_vectors()
    total = sum(weights[p] / top for p in pairs)
    blocks = [v / total for v in doc.slots.values()]
    shares = [weights[p] / top / total for p in pairs]
    return np.concatenate([*blocks, shares])


@pytest.mark.parametrize("seed", range(20))
def test_inner_products_are_the_weighted_sum_plus_the_first_order_correction(seed):
    rng = np.random.default_rng(seed)
    weights = {p: float(rng.uniform(0.1, 3.0)) for p in PairType}
    r, j = random_doc(rng, "resume"), random_doc(rng, "job")
    rp, jp = r.pair_vectors(), j.pair_vectors()
    both = [p for p in PairType if p in rp and p in jp]
    total = sum(weights[p] * float(rp[p] @ jp[p]) for p in both)
    w_r, w_j = sum(weights[p] for p in rp), sum(weights[p] for p in jp)
    job_only = sum(weights[p] for p in jp if p not in rp)
    resume_only = sum(weights[p] for p in rp if p not in jp)
    # In the vectors the weights are divided by the largest (a weighted mean is the same).
    top = max(weights.values())
    w_r, w_j = w_r / top, w_j / top
    total, job_only, resume_only = total / top, job_only / top, resume_only / top
    j_entry = retrieval_vector(j, weights, DIM)
    scale = 1.0
    raw = np.linalg.norm(j_entry[:-1])
    if raw >= ENTRY_NORM - 1e-6:  # scaled down to the entry norm: its inner products too
        scale = raw / float(np.linalg.norm(main_entry_unscaled(j, weights)))
    resume_asks = query_vector(r, weights, DIM) @ j_entry
    job_asks = query_vector(j, weights, DIM) @ retrieval_vector(r, weights, DIM)
    assert resume_asks == pytest.approx(
        scale * (total + TYPICAL_SCORE * job_only) / (w_r * w_j), abs=1e-5
    )
    assert job_asks == pytest.approx((total + TYPICAL_SCORE * resume_only) / (w_r * w_j), abs=1e-5)
    for entry in (j_entry, retrieval_vector(r, weights, DIM)):
        assert np.linalg.norm(entry) == pytest.approx(ENTRY_NORM, abs=1e-5)
    assert len(retrieval_vector(r, weights, DIM)) == retrieval_dims(DIM)
    # Exact when the query document has every pair type the other has: a ranking of the
    # other side by the match score, times a constant of the query.
    if not job_only and both and scale == 1.0:
        m = score(r, j, weights).score
        assert m is not None and resume_asks * w_r == pytest.approx(m, abs=1e-5)


def test_fields_round_trip_through_their_stored_form():
    rng = np.random.default_rng(1)
    doc = random_doc(rng, "resume")
    names, fields = doc.packed()
    back = DocumentVectors.unpack("resume", names, fields)
    assert set(back.slots) == set(doc.slots)
    for s, v in doc.slots.items():
        np.testing.assert_array_equal(back.slots[s], v)


def test_pair_types_of_one_slot_read_the_same_text():
    docs = [ResumeDocument.model_validate(d) for d in read_documents(SAMPLE_DIR / "resumes.jsonl")]
    docs += [JobDocument.model_validate(d) for d in read_documents(SAMPLE_DIR / "jobs.jsonl")]
    for d in docs:
        slot = RESUME_SLOT if d.kind == "resume" else JOB_SLOT
        by_slot: dict[str, set[str]] = {}
        for p, t in field_texts(d).items():
            by_slot.setdefault(slot[p], set()).add(t)
        assert all(len(texts) == 1 for texts in by_slot.values()), d.id


def test_documents_without_any_weighted_pair_get_zero_vectors():
    doc = DocumentVectors("job", {"title": np.ones(DIM, np.float32) / 4})
    weights = dict.fromkeys(PairType, 0.0)
    entry = retrieval_vector(doc, weights, DIM)
    assert not entry[:-1].any() and entry[-1] == pytest.approx(ENTRY_NORM)  # all completion
    assert not query_vector(doc, weights, DIM).any()


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the NaN reference
@pytest.mark.parametrize("seed", range(5))
def test_scoring_many_at_once_equals_scoring_each(seed):
    """A query against its candidates in one go: each candidate's pair scores (same pairs, same
    order) and match score as ``score`` gives them, with zero vectors, missing fields and
    weights of 0 among them."""
    rng = np.random.default_rng(seed)
    weights = {p: float(rng.choice([0.0, 0.5, 1.0, 2.0])) for p in PairType}
    for kind, other in (("resume", "job"), ("job", "resume")):
        doc = random_doc(rng, kind)
        others = [random_doc(rng, other) for _ in range(40)]
        others.append(
            DocumentVectors(other, {s: np.zeros(DIM, np.float32) for s in others[0].slots})
        )
        others.append(DocumentVectors(other, {}))
        # not finite: the same NaN scores as ``score`` (never a dropped pair or a 0)
        others.append(DocumentVectors(other, {s: v * np.nan for s, v in others[0].slots.items()}))
        others.append(DocumentVectors(other, {s: v * np.inf for s, v in others[0].slots.items()}))
        for o, m in zip(others, score_many(doc, others, weights), strict=True):
            r, j = (doc, o) if kind == "resume" else (o, doc)
            want = score(r, j, weights)
            assert list(m.pair_scores) == list(want.pair_scores)
            assert m.pair_scores == pytest.approx(want.pair_scores, abs=1e-12, nan_ok=True)
            if want.score is None:
                assert m.score is None
            else:
                assert m.score == pytest.approx(want.score, abs=1e-12, nan_ok=True)

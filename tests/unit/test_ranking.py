"""``workers.ranking``: exact ranking of stored documents, vectorised over groups of the same
slots, against ``vectors.score_many`` one document at a time."""

from __future__ import annotations

import numpy as np
import pytest

from jobfit.shared import repository as repo
from jobfit.shared.config import PairType
from jobfit.shared.fields import slot_map
from jobfit.workers.ranking import decode, merge, order_key, rank
from jobfit.workers.vectors import DocumentVectors, score_many

DIM = 16


def doc(rng: np.random.Generator, kind: str, keep: float) -> DocumentVectors:
    """A document with each of its side's slots kept with probability ``keep`` (random unit
    vectors, at stored precision), a zero vector now and then."""
    slots = {}
    for s in dict.fromkeys(slot_map(kind).values()):
        if rng.random() < keep:
            v = rng.standard_normal(DIM)
            slots[s] = v / np.linalg.norm(v) if rng.random() > 0.05 else np.zeros(DIM)
    pairs = {p: slots[s] for p, s in slot_map(kind).items() if s in slots}
    return DocumentVectors.from_pairs(kind, pairs)


def stored(i: int, d: DocumentVectors) -> repo.StoredVectors:
    """As ``repository.load_vectors`` reads it (``halfvec_send``: dimension, 0, big-endian
    float16 values)."""
    names, fields = d.packed()
    raw = len(fields).to_bytes(2, "big") + bytes(2) + fields.astype(">f2").tobytes()
    return repo.StoredVectors(i, d.kind, f"h{i}", "k", names, raw)


@pytest.mark.parametrize("kind", ["resume", "job"])
def test_rank_is_score_many_sorted(kind: str) -> None:
    rng = np.random.default_rng(3)
    other = "job" if kind == "resume" else "resume"
    weights = {
        p: float(w) for p, w in zip(PairType, rng.uniform(0.2, 2.0, len(PairType)), strict=True)
    }
    query = doc(rng, kind, 0.8)
    docs = {100 + i: doc(rng, other, 0.6) for i in range(300)}
    docs[5000] = DocumentVectors(other, {})  # no slot: no score
    rows = [stored(i, d) for i, d in docs.items()]
    assert all(decode(r).slots.keys() == docs[r.document_id].slots.keys() for r in rows)

    want = sorted(
        zip(docs, score_many(query, list(docs.values()), weights), strict=True), key=order_key
    )
    got = rank(query, rows, weights, len(rows))
    assert [i for i, _ in got] == [i for i, _ in want]
    for (_, g), (_, w) in zip(got, want, strict=True):
        if w.score is None:
            assert g.score is None
        else:
            assert g.score == pytest.approx(w.score, abs=1e-12)
        assert g.pair_scores.keys() == w.pair_scores.keys()
        for p in w.pair_scores:
            assert g.pair_scores[p] == pytest.approx(w.pair_scores[p], abs=1e-12)
    assert any(m.score is None for _, m in got)  # there are some, and they come last
    assert got[-1][1].score is None

    top = rank(query, rows, weights, 10)
    assert [i for i, _ in top] == [i for i, _ in want[:10]]
    # ranked in two halves and merged: the same
    halves = merge(rank(query, rows[:150], weights, 10), rank(query, rows[150:], weights, 10), 10)
    assert [i for i, _ in halves] == [i for i, _ in want[:10]]
    assert rank(query, [], weights, 10) == []

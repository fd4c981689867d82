"""The scale bench's synthetic corpora (tools/scale.py): noise of the intended size and
directions, and documents that regenerate identically whatever range is asked for."""

from __future__ import annotations

import numpy as np
import pytest

from tools.scale import DIM, NOISE, Bases, synthetic


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def fake_bases(noise: str) -> Bases:
    """Real-like vectors: 40 documents per kind in a 12-dimensional subspace of the 384."""
    rng = np.random.default_rng(3)
    basis = rng.standard_normal((12, DIM))
    docs = {
        kind: [
            {slot: unit(rng.standard_normal(12) @ basis) for slot in ("a", "b")} for _ in range(40)
        ]
        for kind in ("resume", "job")
    }
    return Bases(docs["resume"], docs["job"], noise=noise)


def in_span(bases: Bases, kind: str, slot: str, x: np.ndarray) -> float:
    """The share of ``x``'s norm outside the span of the centred real vectors."""
    rows = np.stack([d[slot] for d in bases.of(kind)]).astype(np.float64)
    q, _ = np.linalg.qr((rows - rows.mean(axis=0)).T)
    return float(np.linalg.norm(x - q @ (q.T @ x)) / np.linalg.norm(x))


@pytest.mark.parametrize("noise", ["real", "isotropic"])
def test_noise_has_the_intended_norm(noise: str) -> None:
    bases, rng = fake_bases(noise), np.random.default_rng(5)
    norms = [np.linalg.norm(bases.draw(rng, "job", "a")) for _ in range(400)]
    assert np.mean(norms) == pytest.approx(NOISE, rel=0.1)


def test_real_noise_stays_in_the_directions_real_vectors_take() -> None:
    rng = np.random.default_rng(5)
    real, iso = fake_bases("real"), fake_bases("isotropic")
    assert in_span(real, "resume", "b", real.draw(rng, "resume", "b")) < 1e-4
    assert in_span(iso, "resume", "b", iso.draw(rng, "resume", "b")) > 0.9


def test_documents_regenerate_identically_from_any_range() -> None:
    bases = fake_bases("real")
    whole = synthetic(bases, "job", 0, 1_500)
    part = synthetic(bases, "job", 990, 20)
    for a, b in zip(whole[990:1_010], part, strict=True):
        assert a.slots.keys() == b.slots.keys()
        for s in a.slots:
            np.testing.assert_array_equal(a.slots[s], b.slots[s])

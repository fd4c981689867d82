"""The index basis's arithmetic (``workers.index_basis``): projected entries and queries keep
the inner products of vectors in the basis's span, entries keep one norm, the stored form and
pgvector's binary halfvec read back."""

from __future__ import annotations

import numpy as np
import pytest

from jobfit.shared.repository import ivfflat_build_kb
from jobfit.workers import index_basis
from jobfit.workers.index_basis import Basis, fit_basis
from jobfit.workers.scoring import from_halfvec
from jobfit.workers.vectors import ENTRY_NORM


def in_span(rng: np.random.Generator, n: int, rank: int, width: int) -> np.ndarray:
    """``n`` vectors of norm ``ENTRY_NORM`` in a random ``rank``-dimensional subspace."""
    x = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, width))
    return (x / np.linalg.norm(x, axis=1, keepdims=True) * ENTRY_NORM).astype(np.float32)


def test_projection_keeps_inner_products_within_the_span() -> None:
    rng = np.random.default_rng(1)
    x = in_span(rng, 200, 12, 300)
    basis, energy = fit_basis(x, 12)
    assert basis.width == 13
    assert energy == pytest.approx(1.0, abs=1e-6)
    queries = in_span(rng, 10, 12, 300) * 0.3
    full = x.astype(np.float64) @ queries.T.astype(np.float64)
    projected = basis.entries(x).astype(np.float64) @ np.stack(
        [basis.query(q) for q in queries]
    ).T.astype(np.float64)
    assert np.abs(projected - full).max() < 1e-4


def test_entries_have_one_norm_and_the_basis_is_orthonormal() -> None:
    rng = np.random.default_rng(2)
    x = in_span(rng, 500, 60, 200)
    basis, energy = fit_basis(x, 16)
    assert 0.0 < energy < 1.0
    m = basis.matrix.astype(np.float64)
    assert np.abs(m.T @ m - np.eye(16)).max() < 1e-5
    norms = np.linalg.norm(basis.entries(x).astype(np.float64), axis=1)
    assert np.abs(norms - ENTRY_NORM).max() < 1e-5
    # the first directions keep the most: a narrower basis keeps less
    assert fit_basis(x, 4)[1] < energy


def test_fewer_vectors_than_dimensions_gives_as_many_directions_as_vectors() -> None:
    x = in_span(np.random.default_rng(3), 5, 5, 40)
    basis, energy = fit_basis(x, 16)
    assert basis.width == 6
    assert energy == pytest.approx(1.0, abs=1e-6)


def test_stored_form_reads_back() -> None:
    basis, _ = fit_basis(in_span(np.random.default_rng(4), 50, 8, 30), 8)
    stored = basis.stored(50, 0.9)
    assert (stored.source_dims, stored.dims, stored.fitted_on) == (30, 8, 50)
    assert np.array_equal(Basis.from_stored(stored).matrix, basis.matrix)


def test_halfvec_binary_form() -> None:
    values = np.array([0.5, -1.25, 3.0, 0.0009765625], dtype=np.float32)
    raw = len(values).to_bytes(2, "big") + b"\x00\x00" + values.astype(">f2").tobytes()
    assert np.array_equal(from_halfvec(raw), values)


def test_ivfflat_lists_grow_with_the_square_root_and_probes_cover_the_floor() -> None:
    assert [index_basis.ivf_lists(n) for n in (0, 1, 4, 2_000, 100_000)] == [2, 2, 4, 90, 633]
    floor = index_basis.IVF_MIN_ENTRIES
    # a small or uncounted index (reltuples -1 or 0) is read whole
    for entries in (-1.0, 0.0, floor - 1.0):
        assert index_basis.probe_count(90, entries, 80) == 90
    # past the floor: the lists asked (a share that falls as the index grows), or enough
    # lists for the floor's entries, never more than it has
    assert index_basis.probe_count(400, 100_000.0, 80) == 80
    assert index_basis.probe_count(1_600, 1_000_000.0, 80) == 80
    assert index_basis.probe_count(200, 10_000.0, 80) == 100
    assert index_basis.probe_count(40, 10_000.0, 80) == 40
    assert index_basis.probe_count(3, 1e9, 1) == 1


def test_the_build_memory_covers_what_pgvector_asked_for() -> None:
    """pgvector 0.8.6 refused the rebuild to 800 lists of halfvec(129) with "memory required
    is 137 MB" (the scale bench at 160,000 resumes); the estimate covers it, with its margin,
    and grows with the lists squared (the k-means bounds)."""
    assert 137 * 1024 <= ivfflat_build_kb(800, 129) <= 1.5 * 137 * 1024
    assert 3.5 < ivfflat_build_kb(1600, 129) / ivfflat_build_kb(800, 129) < 4.1


@pytest.mark.parametrize("lists", [2, 3, 45, 64, 90, 180, 359, 360, 1024, 1440, 16_384])
def test_an_ivfflat_index_is_rebuilt_at_the_first_count_with_twice_the_lists(lists: int) -> None:
    n = index_basis.rebuild_at(lists)
    assert index_basis.ivf_lists(n) >= 2 * lists
    assert index_basis.ivf_lists(n - 1) < 2 * lists


def test_the_rebuilds_of_a_basis_fitted_at_2000() -> None:
    # what tools/scale.py's load writes up to (next_build_at): 1,440 lists at 1,000,000
    points, lists = [], index_basis.ivf_lists(2000)
    while (n := index_basis.rebuild_at(lists)) <= 1_000_000:
        points.append(n)
        lists = index_basis.ivf_lists(n)
    assert points == [8011, 32221, 129_241, 517_681]
    assert lists == 1440

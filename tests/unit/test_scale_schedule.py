"""The scale bench loads up to the points where a worker rebuilds a kind's IVFFlat index
(tools/scale.py ``rebuild_point``), so a size is measured on the index a worker would have."""

from __future__ import annotations

import pytest

from jobfit.workers.index_basis import ivf_lists
from tools.scale import rebuild_point


@pytest.mark.parametrize("lists", [2, 3, 45, 64, 90, 180, 359, 360, 1024, 1440, 16_384])
def test_rebuild_point_is_the_first_count_with_twice_the_lists(lists: int) -> None:
    # index_basis.build_index rebuilds unless twice the current lists exceed ivf_lists(n).
    n = rebuild_point(lists)
    assert ivf_lists(n) >= 2 * lists
    assert ivf_lists(n - 1) < 2 * lists


def test_the_chain_from_a_basis_fitted_at_2000() -> None:
    points, lists = [], ivf_lists(2000)
    while (n := rebuild_point(lists)) <= 1_000_000:
        points.append(n)
        lists = ivf_lists(n)
    assert points == [8011, 32221, 129_241, 517_681]
    assert lists == 1440

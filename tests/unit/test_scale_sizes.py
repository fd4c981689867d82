"""The scale bench's ``--sizes`` (tools/scale.py ``parse_sizes``): the steps it measures."""

from __future__ import annotations

import pytest

from tools.scale import parse_sizes


def test_sizes_are_read_in_order() -> None:
    assert parse_sizes("100000x10000") == ((100_000, 10_000),)
    assert parse_sizes("10_000x1_000, 1000000x100000") == ((10_000, 1_000), (1_000_000, 100_000))


@pytest.mark.parametrize(
    "spec",
    [
        "",
        " , ",
        "100000",
        "100000x",
        "x1000",
        "1e5x1000",
        "0x10",
        "10x0",
        "100x10,50x20",
        "9x9,10x8",
        "100x10,100x10",
    ],
)
def test_a_malformed_or_shrinking_size_is_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_sizes(spec)

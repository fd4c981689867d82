"""Statement-sized slices of rows: every repository write goes through ``chunked`` so a
statement stays under the drivers' bind-parameter limits (65,535 for Postgres, 32,766 for
SQLite), whatever the number of rows."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

CHUNK = 1000  # rows per statement

T = TypeVar("T")


def chunked(items: Sequence[T], size: int | None = None) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most ``size`` (default CHUNK) items."""
    n = size or CHUNK
    for i in range(0, len(items), n):
        yield items[i : i + n]

"""Statement-sized slices of rows: every repository write and id read goes through ``chunked``,
so a statement's rows are bounded whatever the caller passes (under Postgres's 65,535 bind
parameters where a row takes parameters of its own, arrays of at most ``CHUNK`` where they
are bound as arrays); and ``id_array``, a slice's ids as one parameter."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy import BigInteger, bindparam
from sqlalchemy.dialects.postgresql import ARRAY

CHUNK = 1000  # rows per statement

T = TypeVar("T")


def chunked(items: Sequence[T], size: int | None = None) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most ``size`` (default CHUNK) items."""
    n = size or CHUNK
    for i in range(0, len(items), n):
        yield items[i : i + n]


def id_array(name: str, ids: Sequence[int]) -> Any:
    """Row ids bound as one ``bigint[]`` parameter (``col == any_(id_array(...))``,
    ``unnest``): the statement's text is the same whatever their number, so psycopg parses it
    once a connection and then prepares it; an ``IN`` list is a new text, parsed again, for
    every length (README "Matching at scale")."""
    return bindparam(name, list(ids), type_=ARRAY(BigInteger))

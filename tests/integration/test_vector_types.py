"""``shared.vector_types``: vectors bound in pgvector's binary form, stored exactly."""

from __future__ import annotations

import numpy as np
import pytest
from pgvector import HalfVector, Vector
from psycopg.adapt import PyFormat
from psycopg.pq import Format
from sqlalchemy import Column, Integer, MetaData, Table, select, text

from jobfit.shared.vector_types import BinaryHalfVector, BinaryVector

pytestmark = pytest.mark.integration


def test_vectors_are_sent_in_binary_and_stored_exactly(session_factory):
    rng = np.random.default_rng(7)
    full = rng.standard_normal(384).astype(np.float32)
    half = rng.standard_normal(96).astype(np.float32)
    table = Table(
        "vector_types_probe",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("v", BinaryVector()),
        Column("h", BinaryHalfVector()),
        prefixes=["TEMPORARY"],
    )
    with session_factory() as s, s.begin():
        driver = s.connection().connection.driver_connection
        for cls in (Vector, HalfVector):  # pgvector's adapters, binary where the format is free
            assert driver.adapters.get_dumper(cls, PyFormat.AUTO).format == Format.BINARY
        # and the columns bind those objects (pgvector's own types bind text)
        dialect = s.get_bind().dialect
        assert isinstance(BinaryVector().bind_processor(dialect)(full), Vector)
        assert isinstance(BinaryHalfVector().bind_processor(dialect)(half.tolist()), HalfVector)
        table.create(s.connection())
        s.execute(
            table.insert(),
            [
                {"id": 1, "v": full, "h": half},  # numpy arrays (what the workers bind)
                {"id": 2, "v": full.tolist(), "h": half.tolist()},  # lists (a producer's)
                {"id": 3, "v": None, "h": None},
            ],
        )
        rows = s.execute(
            text("SELECT id, vector_send(v), halfvec_send(h) FROM vector_types_probe ORDER BY id")
        ).all()
        # pgvector's binary form: dimension, unused, then big-endian floats, bit for bit.
        for _, v, h in rows[:2]:
            assert bytes(v)[4:] == full.astype(">f4").tobytes()
            assert bytes(h)[4:] == half.astype(">f2").tobytes()
        assert rows[2][1:] == (None, None)
        # A vector bound in a query (as the index query binds its own) compares in binary too.
        found = s.execute(select(table.c.id).where(table.c.h == half)).scalars()
        assert sorted(found) == [1, 2]

"""Rows read in Postgres's binary wire format: what the repository uses for the reads that
carry vectors (``vector_send`` / ``halfvec_send`` bytes). SQLAlchemy's psycopg dialect reads
results in the text format, where a ``bytea`` travels hex-encoded (twice its size) and is
decoded on the client; psycopg's binary cursor (its public ``cursor(binary=True)``) takes the
bytes as they are. Measured on 200 candidates' field vectors (1.6 MB) at 100,000 resumes:
their read and decoding 26-30 ms in text, 20-22 ms in binary (README "Matching at scale").
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from sqlalchemy.sql import Select


def binary_rows(session: Session, stmt: Select[Any]) -> list[tuple[Any, ...]]:
    """The rows of ``stmt`` (its columns: types psycopg loads in binary: integers, text,
    ``bytea``, JSON, arrays) in the session's transaction, read in the binary format."""
    session.flush()  # as ``session.execute`` would: the session's pending writes first
    conn = session.connection()
    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    driver = conn.connection.driver_connection  # psycopg's, in this transaction
    assert driver is not None
    with driver.cursor(binary=True) as cur:
        cur.execute(str(compiled), compiled.params)
        return list(cur.fetchall())

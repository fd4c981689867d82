"""Rows read in Postgres's binary wire format: what the repository uses for the reads that
carry vectors (``halfvec_send`` / ``vector_send`` bytes). SQLAlchemy's psycopg dialect reads
results in the text format, where a ``bytea`` travels hex-encoded (twice its size) and is
decoded on the client; psycopg's binary cursor (its public ``cursor(binary=True)``) takes
the bytes as they are. Measured on 200 candidates' field vectors (1.6 MB) at 100,000
resumes: read and decoded in 26-30 ms in text, 20-22 ms in binary (README "Matching at
scale").

The statements are constant texts in psycopg's parameter style, their ids one array
(``= ANY(%(ids)s)``) whatever their number: psycopg keeps a text's parsed form and, after a
few runs on a connection, prepares it on the server. The same read built as a SQLAlchemy
``IN`` list, compiled and parsed per call with one literal per id, spent 7 of its 23 ms per
200 candidates doing so (profiled at 100,000 resumes: README "Matching at scale").

The statement runs on the session's connection, in its transaction, but past SQLAlchemy's
execution: its errors are translated here as SQLAlchemy translates them (a lost connection
is invalidated; ``OperationalError`` stays ``OperationalError``, which the tasks' retry
policy reads), and ``echo`` does not log it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, LiteralString

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session


def binary_rows(
    session: Session, statement: LiteralString, params: Mapping[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    """The rows of ``statement`` (``%(name)s`` parameters, bound by psycopg as they are: a list
    is an array) read in the binary format. Its columns must be of types psycopg loads in
    binary (integers, text, ``bytea``, JSON, arrays; pgvector's types as pgvector's objects,
    ``shared.vector_types``; another type comes back as its raw bytes)."""
    if session.autoflush:  # as ``session.execute`` would: the session's pending writes first
        session.flush()
    conn = session.connection()
    dialect = conn.dialect
    driver = conn.connection.driver_connection  # psycopg's, in this transaction
    assert driver is not None
    dbapi_error = dialect.loaded_dbapi.Error
    try:
        with driver.cursor(binary=True) as cur:
            cur.execute(statement, params)
            rows: list[tuple[Any, ...]] = cur.fetchall()
            return rows
    except dbapi_error as exc:
        lost = dialect.is_disconnect(exc, driver, None)
        if lost:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            statement, params, exc, dbapi_error, connection_invalidated=lost, dialect=dialect
        ) from exc

"""pgvector's column types, bound in pgvector's binary wire format.

pgvector's SQLAlchemy types (``pgvector.sqlalchemy.VECTOR`` / ``HALFVEC``) bind every vector as
text (``'[0.0123,-0.0456,…]'``): formatted float by float in Python and parsed float by float
by the server. Profiled on ``make bench``'s pipeline ceiling (the real dataset's 372 documents,
1,656 ``vector`` and 744 ``halfvec`` values), formatting alone took ~40 % of the ingest's
database time. These subclasses bind the same values as pgvector's own ``Vector`` /
``HalfVector`` objects instead, which pgvector's psycopg adapters (``register_vector``, its
public API for psycopg 3) send in the binary form: the float32 / float16 bytes as they are.

The adapters need the database's type oids, so they are registered per connection, on its
first checkout from any pool where the ``vector`` extension exists: a listener on
SQLAlchemy's ``Pool`` class, set when this module is imported (the ORM imports it), so every
engine that can bind these types has them, whoever made it. A connection that found no
extension (a database before its first migration, the server's ``postgres`` database) tries
again at its next checkout. The column types in the schema are unchanged: ``vector`` and
``halfvec``.

``register_vector`` also registers pgvector's loaders: a ``vector`` or ``halfvec`` column
read without a cast comes back as a ``Vector`` / ``HalfVector`` (pgvector's SQLAlchemy types
read those too); the repository reads vectors as ``vector_send`` / ``halfvec_send`` bytes,
which are unaffected. The oids are a connection's for its life: an extension dropped and
created again needs new connections (``engine.dispose()``).
"""

from __future__ import annotations

from typing import Any

import psycopg
from pgvector import HalfVector, Vector
from pgvector.psycopg import register_vector
from pgvector.sqlalchemy import HALFVEC, VECTOR
from sqlalchemy import Dialect, event
from sqlalchemy.pool import Pool

_REGISTERED = "jobfit.pgvector_adapters"


def _list_or_array(value: Any) -> Any:
    """What pgvector's ``Vector`` / ``HalfVector`` take: a list or a numpy array (a producer
    without numpy binds lists; numpy is not imported here for them)."""
    return value if isinstance(value, list) or hasattr(value, "__array__") else list(value)


class _BindsPgvectorObjects:
    """A pgvector column type whose values bind as ``pgvector_class`` objects (sent in binary
    by pgvector's psycopg adapters) instead of pgvector's text."""

    pgvector_class: type[Vector] | type[HalfVector]

    def bind_processor(self, dialect: Dialect) -> Any:
        wrap = self.pgvector_class

        def process(value: Any) -> Any:
            if value is None or isinstance(value, wrap):
                return value
            return wrap(_list_or_array(value))

        return process


class BinaryVector(_BindsPgvectorObjects, VECTOR):
    """``vector``, bound as pgvector's binary form (float32)."""

    cache_ok = True
    pgvector_class = Vector


class BinaryHalfVector(_BindsPgvectorObjects, HALFVEC):
    """``halfvec``, bound as pgvector's binary form (float16)."""

    cache_ok = True
    pgvector_class = HalfVector


@event.listens_for(Pool, "checkout")
def _register_adapters(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """pgvector's psycopg adapters on this connection, once (where the extension exists)."""
    if record.info.get(_REGISTERED) or not isinstance(dbapi_connection, psycopg.Connection):
        return
    try:
        register_vector(dbapi_connection)
    except psycopg.ProgrammingError:  # no ``vector`` type in this database (yet)
        return
    record.info[_REGISTERED] = True

"""``repository.binary``: reads past SQLAlchemy's execution fail as SQLAlchemy's do."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from jobfit.shared.repository.binary import binary_rows

pytestmark = pytest.mark.integration


def test_a_failed_read_is_sqlalchemys_error_and_the_retry_policy_sees_it(session_factory):
    with session_factory() as s:
        s.execute(text("SET LOCAL statement_timeout = '20ms'"))
        with pytest.raises(OperationalError) as caught:
            binary_rows(s, "SELECT pg_sleep(2)")
        assert not caught.value.connection_invalidated
        s.rollback()
        assert binary_rows(s, "SELECT length(%(t)s)", {"t": "abc"}) == [(3,)]


def test_a_lost_connection_is_invalidated_and_the_session_goes_on(session_factory):
    with session_factory() as s:
        with pytest.raises(OperationalError) as caught:
            binary_rows(s, "SELECT pg_terminate_backend(pg_backend_pid())")
        assert caught.value.connection_invalidated
        s.rollback()
        assert binary_rows(s, "SELECT length(%(t)s)", {"t": "abcd"}) == [(4,)]


def test_a_list_binds_as_one_array_whatever_its_length(session_factory):
    """The repository's reads pass their ids as one array: one statement text for any
    number of them (psycopg parses it once and prepares it on the server after a few runs)."""
    with session_factory() as s:
        for n in (0, 1, 7, 1000, 1, 7, 3, 9, 2, 5):  # past psycopg's prepare threshold (5)
            ids = list(range(n))
            rows = binary_rows(
                s, "SELECT x FROM unnest(%(ids)s::bigint[]) x ORDER BY x", {"ids": ids}
            )
            assert [r[0] for r in rows] == ids
        prepared = s.execute(
            text("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%unnest%'")
        ).scalar_one()
        assert prepared == 1

"""``repository.binary``: reads past SQLAlchemy's execution fail as SQLAlchemy's do."""

from __future__ import annotations

import pytest
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import bindparam, func, select, text
from sqlalchemy.exc import OperationalError

from jobfit.shared.repository.binary import binary_rows

pytestmark = pytest.mark.integration


def test_a_failed_read_is_sqlalchemys_error_and_the_retry_policy_sees_it(session_factory):
    with session_factory() as s:
        s.execute(text("SET LOCAL statement_timeout = '20ms'"))
        with pytest.raises(OperationalError) as caught:
            binary_rows(s, select(func.pg_sleep(2)))
        assert not caught.value.connection_invalidated
        s.rollback()
        assert binary_rows(s, select(func.length("abc"))) == [(3,)]


def test_a_lost_connection_is_invalidated_and_the_session_goes_on(session_factory):
    with session_factory() as s:
        with pytest.raises(OperationalError) as caught:
            binary_rows(s, select(func.pg_terminate_backend(func.pg_backend_pid())))
        assert caught.value.connection_invalidated
        s.rollback()
        assert binary_rows(s, select(func.length("abcd"))) == [(4,)]


def test_a_parameter_that_needs_processing_is_refused(session_factory):
    with session_factory() as s, pytest.raises(TypeError, match="needs processing"):
        binary_rows(s, select(bindparam("v", [0.5, 0.5], type_=VECTOR())))

"""The database roles' settings and `jobfit db grant`'s refusals, without a database (the
roles' privileges on a real Postgres: tests/integration/test_roles.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from jobfit.cli import app
from jobfit.shared.config import DatabaseSettings, Settings, get_settings
from jobfit.shared.orm import Base
from jobfit.shared.roles import READER_TABLES, Role, RoleError


def test_the_read_path_reads_as_the_reader_else_as_the_url():
    plain = DatabaseSettings(url="postgres://w:pw@h/db")
    assert plain.reading_url == plain.url == "postgresql+psycopg://w:pw@h/db"
    both = DatabaseSettings(url="postgres://w:pw@h/db", read_url="postgresql://r:pr@h/db")
    assert both.reading_url == "postgresql+psycopg://r:pr@h/db"
    assert DatabaseSettings(writer_url="postgres://w@h/db").writer_url == (
        "postgresql+psycopg://w@h/db"
    )


@pytest.mark.parametrize("field", ["read_url", "writer_url"])
def test_placeholder_passwords_of_the_roles_are_refused_in_prod(field):
    with pytest.raises(ValidationError, match="changeme"):
        Settings(env="prod", db=DatabaseSettings(**{field: "postgresql://u:changeme@h/db"}))


def test_a_role_comes_from_its_url():
    assert Role.from_url("reader", "postgresql+psycopg://r:p%40ss@h/db") == Role(
        "reader", "r", "p@ss"
    )
    assert Role.from_url("writer", "postgresql+psycopg://w@h/db").password is None
    with pytest.raises(RoleError, match="names no user"):
        Role.from_url("writer", "postgresql+psycopg:///db")


def test_the_reader_tables_exist():
    tables = Base.metadata.tables
    for table, columns in READER_TABLES.items():
        if table == "alembic_version":
            continue
        assert table in tables
        assert set(columns or ()) <= set(tables[table].columns.keys())


def test_db_grant_without_a_role_to_grant_says_what_to_set(monkeypatch):
    monkeypatch.delenv("JOBFIT_DB__WRITER_URL", raising=False)
    monkeypatch.delenv("JOBFIT_DB__READ_URL", raising=False)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["db", "grant"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    assert "JOBFIT_DB__WRITER_URL" in result.output

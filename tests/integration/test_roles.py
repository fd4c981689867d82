"""Least privilege on a real Postgres: `jobfit db upgrade --grant` (compose's `migrate`) creates
the writer and reader roles; a real worker ingests and scores as the writer (a new model
version's entry indexes included, through migration 0008's function), the read path reads as the
reader; neither can change the schema, and the reader cannot write.

The test server trusts its Unix socket (passwords are not checked there), so each role is
proven by what it does and what it is refused, and a password by the verifier stored."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, make_url, pool, text
from sqlalchemy.exc import ProgrammingError

from jobfit.shared.client import JobfitClient
from jobfit.shared.config import Settings
from jobfit.shared.db import connect
from jobfit.shared.metrics import JobfitCollector
from jobfit.shared.roles import Role, RoleError, grant_roles
from tests.conftest import isolated, private_database
from tests.integration.test_operator_cli import one_line_error
from tools.procs import ROOT, RUN_ID, WorkerProcess

pytestmark = pytest.mark.integration

TIMEOUT = 180


@dataclass(frozen=True)
class Roles:
    owner_url: str
    writer: str
    reader: str

    def url(self, role: str, password: str = "pw") -> str:
        u = make_url(self.owner_url).set(username=role, password=password)
        return u.render_as_string(hide_password=False)

    def grant(self, command: str = "upgrade", reader_password: str = "pw-reader") -> str:
        """`jobfit db upgrade --grant` (or `jobfit db grant`) as the owner; its output."""
        argv = (
            [sys.executable, "-m", "jobfit", "db", "upgrade", "--grant"]
            if command == "upgrade"
            else [sys.executable, "-m", "jobfit", "db", "grant"]
        )
        out = subprocess.run(
            argv,
            env={
                **os.environ,
                "JOBFIT_DB__URL": self.owner_url,
                "JOBFIT_DB__WRITER_URL": self.url(self.writer, "pw-writer"),
                "JOBFIT_DB__READ_URL": self.url(self.reader, reader_password),
            },
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout + out.stderr


def owner_sql(roles: Roles, statement: str, **params: object) -> list:
    engine = create_engine(roles.owner_url, poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return list(result) if result.returns_rows else []
    finally:
        engine.dispose()


def refused(url: str, statement: str) -> None:
    """``statement`` as the role of ``url`` fails for want of a privilege."""
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with pytest.raises(ProgrammingError) as caught, engine.begin() as conn:
            conn.execute(text(statement))
        assert isinstance(caught.value.orig, psycopg.errors.InsufficientPrivilege), caught.value
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def roles() -> Iterator[Roles]:
    """A database of its own, migrated; its writer and reader roles (names of this run: the
    server is shared by both pytest processes), created by `jobfit db upgrade --grant` and
    dropped afterwards."""
    for owner_url in private_database("_roles"):
        r = Roles(owner_url, f"jobfit_writer_{RUN_ID}", f"jobfit_reader_{RUN_ID}")
        try:
            out = r.grant()
            assert f"writer {r.writer}: created" in out and f"reader {r.reader}: created" in out
            assert "pw-" not in out  # passwords are never printed
            yield r
        finally:
            owner_sql(r, f'DROP OWNED BY "{r.writer}", "{r.reader}"')
            owner_sql(r, f'DROP ROLE IF EXISTS "{r.writer}", "{r.reader}"')


WRITER_REFUSED = [
    "DROP TABLE matches",
    "ALTER TABLE matches ADD COLUMN x integer",
    "TRUNCATE pair_scores",
    "CREATE TABLE mine (i integer)",
    "CREATE INDEX ix_mine ON matches (score)",
    "DROP INDEX ix_matches_version_job_score",
    "UPDATE alembic_version SET version_num = 'x'",
]
READER_REFUSED = [
    "INSERT INTO documents DEFAULT VALUES",
    "UPDATE matches SET score = 0",
    "DELETE FROM pair_scores",
    "DROP TABLE matches",
    "TRUNCATE matches",
    "ALTER TABLE documents ADD COLUMN x integer",
    "CREATE TABLE mine (i integer)",
    "SELECT jobfit_ensure_hnsw_index(1, 'job', 8, 16, 64)",
    "SELECT jobfit_ensure_ivfflat_index(1, 'job', 8, 4)",
    "SELECT jobfit_drop_replaced_entry_indexes(1, 'job')",
    # not on the read path: labels, deliveries, vectors, failure payloads
    "SELECT count(*) FROM labels",
    "SELECT count(*) FROM deliveries",
    "SELECT count(*) FROM document_vectors",
    "SELECT payload FROM failed_messages",
]


@pytest.mark.parametrize("statement", WRITER_REFUSED)
def test_the_writer_cannot_change_the_schema(roles: Roles, statement: str) -> None:
    refused(roles.url(roles.writer), statement)


@pytest.mark.parametrize("statement", READER_REFUSED)
def test_the_reader_cannot_write_or_read_beyond_the_read_path(roles: Roles, statement: str) -> None:
    refused(roles.url(roles.reader), statement)


def test_a_worker_writes_as_the_writer_and_the_read_path_reads_as_the_reader(
    roles: Roles, settings: Settings, tmp_path: Path
) -> None:
    own, app = isolated(settings, "roles")
    own.db.url = roles.url(roles.writer)
    # the worker fits each kind's index basis (and builds its index) as the writer
    fit_early = {"JOBFIT_SCORING__INDEX_FIT_AT": "2"}
    w = WorkerProcess(own, app, "roles", tmp_path / "roles.log", env=fit_early)
    w.start()
    try:
        client = JobfitClient(app=app)
        jobs = [
            {"id": f"rj{i}", "title": f"Engineer {i}", "skills_required": ["SQL", f"Go {i}"]}
            for i in range(3)
        ]
        for r in [client.submit_job(j) for j in jobs]:
            assert r.get(timeout=TIMEOUT)["status"] == "created"
        sent = [
            client.submit_resume({"id": f"rr{i}", "skills": ["SQL", "Python"], "positions": [p]})
            for i, p in enumerate(["Engineer", "Analyst"])
        ]
        for r in sent:
            assert r.get(timeout=TIMEOUT)["scored"] >= 1
    finally:
        w.stop()
    # The new version's entry indexes (IVFFlat: ix_document_vectors_entry_v<v>_<kind>_l<lists>):
    # created through the function, owned by the owner, with the bases the writer fitted.
    indexes = owner_sql(
        roles,
        "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c"
        " WHERE c.relname LIKE 'ix_document_vectors_entry_v%'",
    )
    assert {k for (k,) in owner_sql(roles, "SELECT kind FROM index_bases")} == {"job", "resume"}
    kinds = [
        re.fullmatch(r"ix_document_vectors_entry_v\d+_(job|resume)_l\d+", n) for n, _ in indexes
    ]
    assert all(kinds), indexes  # IVFFlat only: no HNSW index next to them
    assert {m.group(1) for m in kinds if m} == {"job", "resume"}, indexes
    assert {o for _, o in indexes} == {make_url(roles.owner_url).username}
    expected = owner_sql(
        roles,
        "SELECT j.external_id FROM matches m JOIN documents r ON r.id = m.resume_id"
        " JOIN documents j ON j.id = m.job_id WHERE r.external_id = 'rr0'"
        " ORDER BY m.score DESC NULLS LAST, j.external_id",
    )
    assert expected

    # The read path as the reader; JOBFIT_DB__URL names a role that does not exist, so
    # nothing reads through it.
    reading = own.model_copy(deep=True)
    reading.db.url = roles.url("nobody_at_all")
    reading.db.read_url = roles.url(roles.reader)
    reader_client = JobfitClient(reading)
    try:
        top = reader_client.top_jobs("rr0", k=10)
        assert [m.job_id for m in top] == [j for (j,) in expected]
        assert all(m.pair_scores for m in top)
        assert reader_client.top_candidates("rj0", k=10)
    finally:
        reader_client.close()
    cli = subprocess.run(
        [sys.executable, "-m", "jobfit", "matches", "rr0", "--top", "3"],
        env={
            **os.environ,
            "JOBFIT_DB__URL": reading.db.url,
            "JOBFIT_DB__READ_URL": reading.db.reading_url,
            "COLUMNS": "300",
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    assert expected[0][0] in cli.stdout
    # `jobfit metrics` reads as the reader too: its database source answers.
    metrics = {m.name: m for m in JobfitCollector(app, connect(reading, reader=True)).collect()}
    up = {s.labels["source"]: s.value for s in metrics["jobfit_up"].samples}
    assert up["database"] == 1


def test_grant_converges_and_covers_a_later_migrations_tables(roles: Roles) -> None:
    """Privileges granted by hand go, a changed password is applied (as a verifier), Postgres
    before 15's CREATE for PUBLIC is taken away, and a table a later migration creates is the
    writer's to write and not the reader's to read."""

    def can(role: str, check: str) -> bool:
        return bool(owner_sql(roles, f"SELECT {check}", role=role)[0][0])

    def verifier(role: str) -> str:
        rows = owner_sql(roles, "SELECT rolpassword FROM pg_authid WHERE rolname = :r", r=role)
        return str(rows[0][0])

    before = verifier(roles.reader)
    owner_sql(roles, f'GRANT INSERT ON labels TO "{roles.reader}"')
    owner_sql(roles, f'GRANT TRUNCATE ON matches TO "{roles.writer}"')
    owner_sql(roles, "GRANT CREATE ON SCHEMA public TO PUBLIC")  # as before Postgres 15
    assert can(roles.writer, "has_schema_privilege(:role, 'public', 'CREATE')")
    out = roles.grant("grant", reader_password="pw-reader-2")
    assert f"writer {roles.writer}: updated" in out and "pw-" not in out
    assert not can(roles.reader, "has_table_privilege(:role, 'labels', 'INSERT')")
    assert not can(roles.writer, "has_table_privilege(:role, 'matches', 'TRUNCATE')")
    for role in (roles.writer, roles.reader):
        assert not can(role, "has_schema_privilege(:role, 'public', 'CREATE')")
    after = verifier(roles.reader)
    assert after.startswith("SCRAM-SHA-256$") and after != before and "pw-reader" not in after

    owner_sql(roles, "CREATE TABLE later_table (id serial PRIMARY KEY, v integer)")
    try:
        writer = create_engine(roles.url(roles.writer), poolclass=pool.NullPool)
        with writer.begin() as conn:
            conn.execute(text("INSERT INTO later_table (v) VALUES (1)"))
            conn.execute(text("DELETE FROM later_table"))
        writer.dispose()
        refused(roles.url(roles.reader), "SELECT count(*) FROM later_table")
    finally:
        owner_sql(roles, "DROP TABLE later_table")


def test_grant_refuses_the_owner_and_one_role_for_both(roles: Roles) -> None:
    owner = make_url(roles.owner_url).username
    assert owner is not None
    with pytest.raises(RoleError, match="owner"):
        grant_roles(roles.owner_url, [Role("writer", owner, None)])
    with pytest.raises(RoleError, match="two roles"):
        grant_roles(roles.owner_url, [Role("writer", "x", None), Role("reader", "x", None)])


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ("SUPERUSER", "SUPERUSER"),
        ("CREATEROLE", "CREATEROLE"),
        ("IN ROLE pg_write_all_data", "member of pg_write_all_data"),
        ("IN ROLE {owner}", "member of {owner}"),
        ("", "owns tables here"),
    ],
)
def test_grant_refuses_a_role_that_would_keep_more(roles: Roles, options: str, why: str) -> None:
    """Revoking grants leaves attributes, memberships and ownership: a role with any of them
    is refused."""
    owner = str(make_url(roles.owner_url).username)
    broad = f"jobfit_broad_{RUN_ID}"
    owner_sql(roles, f'CREATE ROLE "{broad}" {options.format(owner=owner)}')
    if not options:
        owner_sql(roles, "CREATE TABLE broad_table (i integer)")
        owner_sql(roles, f'ALTER TABLE broad_table OWNER TO "{broad}"')
    try:
        with pytest.raises(RoleError, match=why.format(owner=owner)):
            grant_roles(roles.owner_url, [Role("writer", broad, None)])
    finally:
        owner_sql(roles, "DROP TABLE IF EXISTS broad_table")
        owner_sql(roles, f'DROP ROLE "{broad}"')


def test_a_refused_command_is_one_line_naming_the_urls(roles: Roles) -> None:
    """`jobfit failures` reads failed payloads, which the reader may not: one line, no
    traceback, the cause and which settings to check."""
    out = subprocess.run(
        [sys.executable, "-m", "jobfit", "failures"],
        env={**os.environ, "JOBFIT_DB__URL": roles.url(roles.reader), "COLUMNS": "300"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    one_line_error(out, "may not do this", "permission denied", "JOBFIT_DB__URL")

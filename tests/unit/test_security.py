"""Security rules that hold by construction: JSON-only messages, SQL never built from values,
secrets out of what is printed."""

from __future__ import annotations

import ast
from pathlib import Path

from jobfit.shared.celery_app import celery_config
from jobfit.shared.config import BrokerSettings, DatabaseSettings, Settings

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [p for d in ("shared", "workers", "tasks") for p in (ROOT / d).rglob("*.py")]


def test_json_only_messages_and_results():
    conf = celery_config(Settings())
    assert conf["task_serializer"] == conf["result_serializer"] == "json"
    assert conf["accept_content"] == conf["result_accept_content"] == ["json"]


def sql_fstrings() -> list[tuple[str, int, list[str]]]:
    """Every f-string passed to ``text()`` / ``sql()``, with the names it interpolates."""
    out = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in {"text", "sql"}
                and node.args
                and isinstance(node.args[0], ast.JoinedStr)
            ):
                names = [
                    ast.unparse(v.value)
                    for v in node.args[0].values
                    if isinstance(v, ast.FormattedValue)
                ]
                out.append((str(path.relative_to(ROOT)), node.lineno, names))
    return out


# What SQL may interpolate: a database name quoted by the dialect (CREATE/DROP DATABASE take no
# parameters), integers (``int(...)``: a partial index's predicate, a search setting), a
# document kind checked against its two values (``_kind(...)``) and a column name chosen
# from literals on the line before (``col``, ``other``).
ALLOWED = {"quoted", "col", "other"}


def test_sql_is_parameterised():
    """Values go in as bound parameters; interpolation only of what ``ALLOWED`` says."""
    found = sql_fstrings()
    assert found, "the scan finds the known CREATE/DROP DATABASE statements"
    for where, line, names in found:
        bad = [n for n in names if n not in ALLOWED and not n.startswith(("int(", "_kind("))]
        assert not bad, f"{where}:{line} builds SQL from {bad}"


def test_settings_repr_does_not_print_passwords():
    """Settings may reach a log line or a traceback: URLs show no password there."""
    s = Settings(
        db=DatabaseSettings(
            url="postgresql+psycopg://jobfit:s3cret-db@db:5432/jobfit",
            read_url="postgresql+psycopg://jobfit_reader:s3cret-read@db:5432/jobfit",
            writer_url="postgresql+psycopg://jobfit_writer:s3cret-write@db:5432/jobfit",
        ),
        broker=BrokerSettings(url="redis://:s3cret-redis@redis:6379/0"),
    )
    assert "s3cret" not in repr(s) and "s3cret" not in str(s)
    assert s.db.url.endswith("@db:5432/jobfit") and "s3cret-db" in s.db.url  # still usable

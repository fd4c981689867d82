"""What the ``jobfit`` command prints instead of a traceback: the cause in one line and the
fix, for the errors a newcomer meets first (a database or broker that cannot be reached, a
database not migrated yet). ``jobfit --debug ...`` shows the traceback instead."""

from __future__ import annotations

from jobfit.shared.config import Settings


def _where(url: str) -> str:
    """A URL without its credentials."""
    return url.rsplit("@", 1)[-1]


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return " ".join(lines)[:200] if lines else type(exc).__name__


def explain(exc: BaseException) -> tuple[str, str] | None:
    """(cause, fix) for an error a user can act on; None for anything else (a bug: the
    traceback is what helps then)."""
    from kombu.exceptions import OperationalError as BrokerError
    from pydantic import ValidationError
    from redis.exceptions import ConnectionError as RedisConnectionError

    from jobfit.shared.config import get_settings
    from jobfit.shared.schemas import describe_validation_error

    if isinstance(exc, ValidationError) and exc.title == Settings.__name__:
        return (
            f"invalid settings: {describe_validation_error(exc)}",
            "check the JOBFIT_* environment variables and .env",
        )
    settings = get_settings()
    found = _database_error(exc, settings)
    if found is not None:
        return found
    if isinstance(exc, BrokerError | RedisConnectionError | ConnectionRefusedError):
        return (
            f"cannot reach the broker {_where(settings.broker.url)}: {_first_line(exc)}",
            "check JOBFIT_BROKER__URL and that Redis (or RabbitMQ) runs",
        )
    return None


def _database_error(exc: BaseException, settings: Settings) -> tuple[str, str] | None:
    from psycopg.errors import InsufficientPrivilege
    from sqlalchemy.exc import ArgumentError, OperationalError, ProgrammingError

    from jobfit.shared.db import PGVECTOR_HELP, PgvectorMissingError

    if isinstance(exc, PgvectorMissingError):
        return (
            f"the Postgres at {_where(settings.db.url)} has no pgvector extension",
            PGVECTOR_HELP,
        )
    urls = "JOBFIT_DB__URL" + (" and JOBFIT_DB__READ_URL" if settings.db.read_url else "")
    if isinstance(exc, OperationalError):
        return (
            f"cannot reach the database {_where(settings.db.url)}: {_first_line(exc.orig or exc)}",
            f"check {urls} and that Postgres runs, then `jobfit db upgrade`",
        )
    if isinstance(exc, ProgrammingError) and isinstance(exc.orig, InsufficientPrivilege):
        return (
            f"the database role may not do this: {_first_line(exc.orig)}",
            f"check {urls}: the reader role only reads, the writer has no DDL; the owner runs"
            ' `jobfit db upgrade` and `jobfit db grant` (README "Deploy")',
        )
    if isinstance(exc, ProgrammingError) and "does not exist" in str(exc):
        return (
            f"the database {_where(settings.db.url)} has no jobfit tables:"
            f" {_first_line(exc.orig or exc)}",
            "run `jobfit db upgrade`",
        )
    if isinstance(exc, ArgumentError):
        return (f"JOBFIT_DB__URL is not a database URL: {exc}", "e.g. postgresql://user@host/db")
    return None

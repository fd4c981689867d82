"""Engine, sessions and migrations. Create engines after fork (workers do it in the child)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.orm import Session, sessionmaker

from jobfit.shared.config import Settings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


PGVECTOR_HELP = (
    "jobfit needs Postgres with the pgvector extension. Use a pgvector image (compose runs"
    " pgvector/pgvector:pg17), install your distribution's package (postgresql-NN-pgvector) or"
    " build it (https://github.com/pgvector/pgvector), or use a managed Postgres that offers it."
    " For tests and the demo, `python -m tools postgres start` runs an embedded one."
)


class PgvectorMissingError(RuntimeError):
    """The configured Postgres cannot create the ``vector`` extension."""


def make_engine(settings: Settings, *, reader: bool = False) -> Engine:
    """An engine for the configured Postgres (with pgvector): as ``JOBFIT_DB__URL``'s role, or
    with ``reader`` as the read path's (``JOBFIT_DB__READ_URL``, else the same)."""
    return create_engine(
        settings.db.reading_url if reader else settings.db.url,
        echo=settings.db.echo,
        pool_pre_ping=True,
        pool_size=settings.db.pool_size,
    )


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def connect(settings: Settings, *, reader: bool = False) -> sessionmaker[Session]:
    """Sessions on the configured database (an engine of its own): for one command; with
    ``reader``, as the read path's role (``make_engine``)."""
    return make_session_factory(make_engine(settings, reader=reader))


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any error."""
    with factory() as session, session.begin():
        yield session


def alembic_config(settings: Settings) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", settings.db.url.replace("%", "%%"))
    return cfg


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (Alembic), on a Postgres that has pgvector."""
    require_pgvector(settings.db.url)
    command.upgrade(alembic_config(settings), revision)


def require_pgvector(url: str) -> None:
    """Raise ``PgvectorMissingError`` (saying how to get it) unless the server has pgvector."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            available = conn.execute(
                text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
            ).scalar()
    finally:
        engine.dispose()
    if not available:
        where = make_url(url).render_as_string(hide_password=True)
        raise PgvectorMissingError(
            f"Postgres at {where} has no pgvector extension. {PGVECTOR_HELP}"
        )


def ensure_database(url: str) -> bool:
    """Create the Postgres database of ``url`` if the server is up and it is missing.
    Returns True if it was created."""
    u = make_url(url)
    if not u.database:
        return False
    admin = create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": u.database}
            ).scalar()
            if exists:
                return False
            quoted = conn.dialect.identifier_preparer.quote(u.database)
            conn.execute(text(f"CREATE DATABASE {quoted}"))
            return True
    finally:
        admin.dispose()

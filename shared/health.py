"""``jobfit health``: can this deployment work? Broker, database (at the migration head),
model store and workers, each with a readable reason. Usable as a compose healthcheck."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jobfit.shared.config import Settings


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def check_broker(settings: Settings) -> Check:
    from kombu.connection import Connection

    try:
        with Connection(settings.broker.url, connect_timeout=3) as conn:  # type: ignore[no-untyped-call]
            conn.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:  # kombu raises the transport's own errors
        return Check("broker", False, f"{settings.broker.url.split('@')[-1]} unreachable: {exc}")
    return Check("broker", True, settings.broker.url.split("@")[-1])


def check_database(settings: Settings) -> Check:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine, make_url

    from jobfit.shared.db import alembic_config

    url = make_url(settings.db.url)
    where = url.render_as_string(hide_password=True).split("@")[-1]
    engine = create_engine(
        url, connect_args={"connect_timeout": 3} if url.drivername.startswith("postgresql") else {}
    )
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return Check("database", False, f"{where} unreachable: {type(exc).__name__}: {first}")
    finally:
        engine.dispose()
    head = ScriptDirectory.from_config(alembic_config(settings)).get_current_head()
    if current != head:
        return Check(
            "database",
            False,
            f"{where} at revision {current}, head is {head}: run `jobfit db upgrade`",
        )
    return Check("database", True, f"{where} at head {head}")


def check_model(settings: Settings) -> Check:
    from jobfit.shared.model_store import ModelNotFoundError, check_model_dir, resolve_model_path

    try:
        path = resolve_model_path(settings.model)
        check_model_dir(path)
    except ModelNotFoundError as exc:
        return Check("model", False, str(exc))
    return Check("model", True, str(path))


def check_workers(settings: Settings, hostname: str | None, minimum: int) -> Check:
    from jobfit.shared.celery_app import create_celery_app

    app = create_celery_app(settings, with_tasks=False)
    try:
        replies = app.control.ping(destination=[hostname] if hostname else None, timeout=2.0)
    except Exception as exc:
        return Check("workers", False, f"ping failed: {exc}")
    names = sorted(n for r in replies for n in r)
    if hostname and hostname not in names:
        return Check("workers", False, f"{hostname} did not answer a ping")
    if len(names) < minimum:
        return Check("workers", False, f"{len(names)} worker(s) answered, need {minimum}")
    return Check(
        "workers", True, ", ".join(names) + _busy(app, names) if names else "none required"
    )


def _busy(app: Any, names: list[str]) -> str:
    """What the workers that answered are running: a busy worker still answers (its tasks run
    beside the event loop, ``tasks.pool``); one that does not answer is dead or hung."""
    try:
        active = app.control.inspect(destination=names, timeout=2.0).active() or {}
    except Exception:
        return ""
    running = sorted(t.get("name", "?") for tasks in active.values() for t in tasks or [])
    return f" (busy: {', '.join(running)})" if running else " (idle)"


def run_checks(
    settings: Settings, *, model: bool, hostname: str | None, min_workers: int
) -> list[Check]:
    """Every check, in order; a worker check only if the broker is up."""
    checks: list[Callable[[], Check]] = [
        lambda: check_broker(settings),
        lambda: check_database(settings),
    ]
    if model:
        checks.append(lambda: check_model(settings))
    out = [c() for c in checks]
    if (hostname or min_workers) and out[0].ok:
        out.append(check_workers(settings, hostname, min_workers))
    return out

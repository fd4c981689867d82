"""The ``jobfit`` command: the producer's commands everywhere (``jobfit.shared.cli``: no numpy,
no torch), and, where the worker extra is installed, the worker's (``jobfit.workers.cli``:
model and data files) and Celery's (``jobfit.tasks.cli``: ``worker``, ``flower``)."""

from __future__ import annotations

from importlib.util import find_spec

from jobfit.shared.cli import app

__all__ = ["app", "main"]

# What ``pip install 'jobfit[worker]'`` adds; a producer install lists only its own commands.
WORKER_EXTRA = ("sentence_transformers", "flower")


def worker_extra_installed() -> bool:
    return all(find_spec(name) is not None for name in WORKER_EXTRA)


if worker_extra_installed():
    from jobfit.tasks.cli import register as register_celery_commands
    from jobfit.workers.cli import register as register_worker_commands

    register_worker_commands(app)
    register_celery_commands(app)


def main() -> None:
    """``jobfit``: an error the user can act on is one line with its cause and fix, exit 1
    (``--debug``: the traceback)."""
    try:
        app()
    except Exception as exc:
        from jobfit.shared.cli import STATE
        from jobfit.shared.console import err
        from jobfit.shared.errors import explain

        known = None if STATE["debug"] else explain(exc)
        if known is None:
            raise
        err.print(f"[red]error:[/red] {known[0]} — {known[1]}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None

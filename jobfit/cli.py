"""The ``jobfit`` command: the producer commands (``jobfit.shared.cli``), and the worker-side
commands where the worker extra is installed."""

from __future__ import annotations

from jobfit.shared.cli import app

__all__ = ["app", "main"]


def main() -> None:
    app()

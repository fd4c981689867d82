"""jobfit: queue-driven workers that score how well a resume fits a job.

One import root. ``jobfit.shared`` is the producer side (settings, messages, client, Celery
app, database, the CLI's producer commands: no numpy, no torch); ``jobfit.workers`` is the
worker-side runtime (model, embedders, scoring, training: no Celery); ``jobfit.tasks`` are
the Celery adapters between them. In the repository the three live in the top-level folders
``shared/``, ``tasks/`` and ``workers/``; ``jobfit/`` links them under this package.

    from jobfit import JobfitClient
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["InvalidMessageError", "JobfitClient", "Settings"]

if TYPE_CHECKING:
    from jobfit.shared.client import JobfitClient
    from jobfit.shared.config import Settings
    from jobfit.shared.schemas import InvalidMessageError


def __getattr__(name: str) -> Any:
    # Lazy: ``import jobfit.workers...`` in a worker does not pay for Celery's client imports.
    if name == "JobfitClient":
        from jobfit.shared.client import JobfitClient

        return JobfitClient
    if name == "InvalidMessageError":
        from jobfit.shared.schemas import InvalidMessageError

        return InvalidMessageError
    if name == "Settings":
        from jobfit.shared.config import Settings

        return Settings
    raise AttributeError(f"module 'jobfit' has no attribute {name!r}")

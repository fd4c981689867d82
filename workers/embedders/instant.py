"""The instant backend: one fixed vector for every text, no model run. A benchmarking aid
(``JOBFIT_MODEL__BACKEND=instant``): ingest through a worker that serves it measures the
pipeline's own ceiling (Celery, validation, Postgres, results and events), what a worker does
at most when the model costs nothing, as on a GPU far faster than the rest.

Its scores mean nothing (every cosine is 1). Its vectors are stored under a version of their
own (``name@digest+instant``), so they never mix with a real backend's, and it never serves
unless asked for by name.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from jobfit.shared.model_store import check_model_dir, version_of
from jobfit.workers.embedders.base import BaseEmbedder, ModelSpec

log = logging.getLogger(__name__)

# When the model's config does not say (``hidden_size``): all-MiniLM-L6-v2's.
DEFAULT_DIM = 384


class InstantEmbedder(BaseEmbedder):
    """The same unit vector for every text, as wide as the model's own (so the rows written
    are the size a real backend writes): the pipeline without the model."""

    backend = "instant"

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        check_model_dir(spec.path)
        self.spec = spec
        self._version = f"{version_of(spec.path)}+{self.backend}"
        self._dim = model_dim(spec)
        self._vector = fixed_vector(self._dim)
        log.warning("serving %s: a fixed vector for every text (a benchmark aid)", self._version)

    def _encode(self, texts: list[str]) -> np.ndarray:
        return np.tile(self._vector, (len(texts), 1))

    def warm_up(self) -> None:
        """Nothing to warm."""


def model_dim(spec: ModelSpec) -> int:
    """The width of the model's vectors as its transformer config gives it (``hidden_size``),
    without loading it; ``DEFAULT_DIM`` when the config does not say."""
    try:
        config = json.loads((spec.path / "config.json").read_text("utf-8"))
        return int(config["hidden_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_DIM


def fixed_vector(dim: int) -> np.ndarray:
    """A unit float32 vector of ``dim`` (every component equal)."""
    return np.full(dim, 1.0 / np.sqrt(dim), dtype=np.float32)

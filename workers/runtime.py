"""Per-process worker state: the database engine and the model, both made lazily in the
process that uses them (after any fork), the model loaded once and warmed up."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared import repository as repo
from shared.config import Settings
from shared.db import make_engine, make_session_factory, transaction
from workers.model import ModelSpec, SentenceTransformerEmbedder
from workers.service import ModelContext

log = logging.getLogger(__name__)


class WorkerRuntime:
    """What one worker process holds. Not shared across processes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._factory: sessionmaker[Session] | None = None
        self._ctx: ModelContext | None = None
        self._pid = os.getpid()

    def _check_fork(self) -> None:
        # A forked child must not reuse the parent's connections or model handles.
        if os.getpid() != self._pid:
            self._engine, self._factory, self._ctx = None, None, None
            self._pid = os.getpid()

    @property
    def session_factory(self) -> sessionmaker[Session]:
        with self._lock:
            self._check_fork()
            if self._factory is None:
                self._engine = make_engine(self.settings)
                self._factory = make_session_factory(self._engine)
            return self._factory

    def model(self) -> ModelContext:
        """The model this process serves, loaded and registered on first use."""
        factory = self.session_factory
        with self._lock:
            if self._ctx is None:
                spec = ModelSpec.from_settings(self.settings.model)
                embedder = SentenceTransformerEmbedder(spec)
                if self.settings.model.warmup:
                    embedder.warm_up()
                with transaction(factory) as session:
                    row = repo.ensure_model_version(
                        session=session,
                        version=embedder.version,
                        name=spec.name,
                        path=str(spec.path),
                        dim=embedder.dim,
                    )
                    version_id = row.id
                self._ctx = ModelContext(
                    embedder=embedder,
                    model_version_id=version_id,
                    weights=dict(self.settings.scoring.weights),
                )
            return self._ctx

    def dispose(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
            self._engine, self._factory = None, None


def get_runtime(app: Any) -> WorkerRuntime:
    """The runtime of this app in this process (created on first call)."""
    rt: WorkerRuntime | None = getattr(app, "_jobfit_runtime", None)
    if rt is None:
        rt = WorkerRuntime(app.settings)
        app._jobfit_runtime = rt
    return rt

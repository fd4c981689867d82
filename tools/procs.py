"""Real worker processes for tests and the fault report: ``jobfit worker``, the command
docker compose runs, started with a given settings object (as ``JOBFIT_*`` variables)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from jobfit.shared.config import Settings

ROOT = Path(__file__).resolve().parent.parent
# One id per process: names the workers (and, in tests, databases and key prefixes) of a run.
RUN_ID = uuid.uuid4().hex[:8]


def settings_env(settings: Settings) -> dict[str, str]:
    """The JOBFIT_* environment that makes a child process read these settings."""
    env = {
        "JOBFIT_ENV": settings.env,
        "JOBFIT_DB__URL": settings.db.url,
        "JOBFIT_BROKER__URL": settings.broker.url,
        "JOBFIT_BROKER__KEY_PREFIX": settings.broker.key_prefix,
        "JOBFIT_BROKER__RESULT_BACKEND": settings.broker.backend_url,
        "JOBFIT_MODEL__STORE": str(settings.model.store),
        "JOBFIT_MODEL__BACKEND": settings.model.backend,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if settings.model.path is not None:
        env["JOBFIT_MODEL__PATH"] = str(settings.model.path)
    return env


class WorkerProcess:
    """``jobfit worker --queues embed``: the command docker compose runs, as a real process
    (tests and the fault report start, kill and restart it)."""

    def __init__(
        self,
        settings: Settings,
        app: Any,
        name: str,
        log_path: Path,
        *,
        extra: tuple[str, ...] = (),
        queues: str = "embed",
        env: dict[str, str] | None = None,
    ) -> None:
        self.settings, self.app, self.name, self.log_path = settings, app, name, log_path
        self.extra, self.queues, self.env = extra, queues, env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def hostname(self) -> str:
        return f"{self.name}@{RUN_ID}"

    def start(self, timeout: float = 180) -> None:
        env = {**os.environ, **settings_env(self.settings), **self.env}
        cmd = [
            sys.executable,
            "-m",
            "jobfit",
            "worker",
            "--queues",
            self.queues,
            "--hostname",
            self.hostname,
            "--loglevel",
            "INFO",
            *self.extra,
        ]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker died: {self.log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("worker not ready in time")

    def ping(self) -> bool:
        replies = self.app.control.ping(destination=[self.hostname], timeout=1.0)
        return any(self.hostname in r for r in replies)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash, not a shutdown."""
        if self.alive():
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def free_port() -> int:
    """A TCP port nothing listens on now (for a private service or endpoint of a test)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

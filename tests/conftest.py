"""Fixtures on real services: Postgres with pgvector (the project's embedded one, started here,
unless JOBFIT_TEST_PG names another), Redis on 127.0.0.1, a real worker process.

Each test session gets its own Postgres database and its own Redis key prefix, so runs on one
machine (a developer's and CI's) never see each other's rows or messages."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.orm import Session, sessionmaker

from jobfit.shared.config import BrokerSettings, DatabaseSettings, ModelSettings, Settings
from tools.postgres import start as start_embedded_postgres
from tools.procs import ROOT, RUN_ID, WorkerProcess, free_port, settings_env

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REDIS_URL = os.environ.get("JOBFIT_TEST_REDIS", "redis://127.0.0.1:6379/0")
# The broker under test: Redis by default; JOBFIT_TEST_BROKER=amqp://guest:guest@127.0.0.1:5672
# runs the same tests on RabbitMQ, in a vhost of their own (results stay on Redis).
TEST_BROKER = os.environ.get("JOBFIT_TEST_BROKER", REDIS_URL)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full-faults",
        action="store_true",
        help="Run the fault scenarios at their full sizes (make test-faults): 5 worker kills,"
        " 10,000 hostile messages, a 20 s Postgres outage. Default: the quick draw.",
    )


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    from jobfit.workers.provision import minilm_path

    return minilm_path()


@pytest.fixture(scope="session")
def minilm(minilm_path: Path):
    """The small test model, loaded once per test session (for direct comparisons)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path), device="cpu", local_files_only=True)


@functools.cache
def pg_admin() -> str:
    """The admin URL of the Postgres the tests use: JOBFIT_TEST_PG, else the project's
    embedded server (``tools.postgres``; both pytest processes join one, and it stops when
    the last of them exits)."""
    return os.environ.get("JOBFIT_TEST_PG") or start_embedded_postgres()


def private_database(suffix: str = "") -> Iterator[str]:
    """A private Postgres database, created and migrated by ``jobfit db upgrade`` (the
    command compose's one-shot ``migrate`` service runs), dropped afterwards."""
    name = f"jobfit_test_{RUN_ID}{suffix}"
    url = make_url(pg_admin()).set(database=name).render_as_string(hide_password=False)
    subprocess.run(
        [sys.executable, "-m", "jobfit", "db", "upgrade"],
        env={**os.environ, "JOBFIT_DB__URL": url},
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    yield url
    admin = create_engine(pg_admin(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def broker_url() -> str:
    """Redis as configured, or this run's RabbitMQ vhost (see ``rabbitmq_vhost``)."""
    if TEST_BROKER.startswith("amqp"):
        return f"{TEST_BROKER.rstrip('/')}/jobfit-test-{RUN_ID}"
    return TEST_BROKER


@pytest.fixture(scope="session", autouse=True)
def rabbitmq_vhost() -> Iterator[None]:
    """With RabbitMQ as the broker: a vhost for this run, so no other run sees its queues."""
    if not TEST_BROKER.startswith("amqp"):
        yield
        return
    vhost = f"jobfit-test-{RUN_ID}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, timeout=60)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
        timeout=60,
    )
    yield
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], check=False, timeout=60)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """This test session's database."""
    yield from private_database()


def make_settings(db_url: str, key_prefix: str, model_path: Path, store: Path) -> Settings:
    return Settings(
        env="test",
        db=DatabaseSettings(url=db_url),
        broker=BrokerSettings(url=broker_url(), result_backend=REDIS_URL, key_prefix=key_prefix),
        # torch, not the CPU default (auto: ONNX fp32 where exact): the suite compares with
        # torch's vectors and versions; tests/integration/test_backends.py covers auto.
        model=ModelSettings(path=model_path, store=store, backend="torch"),
    )


def session_factory_for(settings: Settings) -> Iterator[sessionmaker[Session]]:
    from jobfit.shared.db import make_engine, make_session_factory

    engine = make_engine(settings)
    yield make_session_factory(engine)
    engine.dispose()


def producer_app(settings: Settings):
    from jobfit.shared.celery_app import create_celery_app

    return create_celery_app(settings, with_tasks=False)


def isolated(settings: Settings, tag: str, **model: Any) -> tuple[Settings, Any]:
    """These settings with queues of their own (a key prefix; model settings changed as given)
    and a producer app for them: workers of other tests never take these messages."""
    own = settings.model_copy(deep=True)
    own.broker.key_prefix = f"{settings.broker.key_prefix}{tag}:"
    for k, v in model.items():
        setattr(own.model, k, v)
    return own, producer_app(own)


@pytest.fixture(scope="session")
def settings(pg_url: str, minilm_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(
        pg_url, f"jobfit-test-{RUN_ID}:", minilm_path, tmp_path_factory.mktemp("models")
    )


@pytest.fixture(scope="session")
def session_factory(settings: Settings) -> Iterator[sessionmaker[Session]]:
    yield from session_factory_for(settings)


@pytest.fixture(scope="session")
def celery_app(settings: Settings):
    return producer_app(settings)


@pytest.fixture(scope="session")
def worker(settings: Settings, celery_app, tmp_path_factory) -> Iterator[WorkerProcess]:
    w = WorkerProcess(settings, celery_app, "embed1", tmp_path_factory.mktemp("logs") / "w1.log")
    w.start()
    yield w
    w.stop()


@pytest.fixture()
def clean_db(session_factory: sessionmaker[Session]) -> None:
    """Empty every table but the model registry (the worker keeps its version id)."""
    with session_factory.begin() as s:
        s.execute(
            text(
                "TRUNCATE documents, document_vectors, matches, pair_scores, field_embeddings,"
                " failed_messages, deliveries CASCADE"
            )
        )


@pytest.fixture()
def client(celery_app):
    from jobfit.shared.client import JobfitClient

    return JobfitClient(app=celery_app)


# --- Flower, as operators run it (`jobfit flower`, a real process) ---------------------------

AUTH = ("ops", "s3cret-test")


def get(url: str, auth: tuple[str, str] | None = None, timeout: float = 30) -> tuple[int, str]:
    """(status, body) of a GET, with HTTP basic auth when given."""
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


@contextmanager
def run_flower(settings: Settings, tmp_path: Path, auth: tuple[str, str]) -> Iterator[str]:
    """``jobfit flower`` on these settings' broker, with basic auth; yields its base URL."""
    port = free_port()
    env = {
        **os.environ,
        **settings_env(settings),
        "JOBFIT_FLOWER__BASIC_AUTH": ":".join(auth),
        "JOBFIT_FLOWER__PORT": str(port),
        "JOBFIT_FLOWER__DB": str(tmp_path / "flower.db"),
    }
    log = (tmp_path / "flower.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobfit", "flower", "--address", "127.0.0.1"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            get(f"{base}/healthcheck", timeout=1.0)
            break
        except OSError:
            assert proc.poll() is None, (tmp_path / "flower.log").read_text()
            assert time.monotonic() < deadline, "flower did not start"
            time.sleep(0.3)
    try:
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)

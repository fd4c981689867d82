"""Fault scenarios on real processes, and what they leave behind: the same code makes the
fault report (``python -m tools bench-faults``, ``make bench-faults``: JSON) and the fault
tests (``tests/faults``), which assert its counts. ``FULL`` sizes are the report's and
``make test-faults``'s; ``make test`` runs every scenario at ``QUICK`` sizes (fewer kills and
messages, a shorter outage: the same checks, a smaller draw).

Every scenario runs on a fresh database and its own broker key prefix, with real ``jobfit
worker`` processes, and counts at the end, from Postgres:

sent        valid documents sent (plus, for ``hostile_messages``, the bad ones)
scored      valid resumes that have exactly one match row for every job
lost        valid resumes without their full set of match rows (missing rows)
duplicated  rows beyond one per key: matches per (resume, job, version), documents per
            (kind, id), embeddings per (version, text hash)
crashed     worker processes that exited without being killed by the scenario

Two scenarios measure more: ``large_messages`` (Redis ``used_memory`` before, at its peak and
after a stream of 5 MB hostile messages, and the largest key they leave) and
``kill_embed_during_retrain`` (how long after a ``kill -9`` an embed worker's messages are
delivered again, on the default visibility timeout, while a retrain on another worker runs
past that time and must be delivered once).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery.exceptions import TimeoutError as ResultTimeout
from celery.result import AsyncResult
from kombu.connection import Connection
from kombu.entity import Exchange
from rich.console import Console
from sqlalchemy import create_engine, func, make_url, select
from sqlalchemy.orm import Session, aliased, sessionmaker

from jobfit.shared.celery_app import EMBED_QUEUE, INGEST_RESUME, TRAIN_QUEUE, create_celery_app
from jobfit.shared.client import JobfitClient, await_or_resend, read_documents
from jobfit.shared.config import Settings
from jobfit.shared.orm import DocumentRow, FailedMessageRow, FieldEmbeddingRow, MatchRow
from jobfit.shared.redis_transport import sweep_interval_s
from jobfit.shared.sample import SAMPLE_DIR, load_labels
from tools import hostile
from tools.bench import Stage, fresh_stage
from tools.postgres import PrivatePostgres
from tools.procs import WorkerProcess, free_port

Docs = list[dict[str, Any]]
WAIT_S = 300.0


@dataclass(frozen=True)
class Sizes:
    """How much of each scenario to run."""

    embed_kills: int  # kill -9 of the embed worker mid-stream, a new worker after each
    embed_resumes: int  # resumes streamed (8/s) while the embed workers are killed
    # the producer's wait before it resends what a kill lost in transit (the killed workers'
    # unacknowledged messages come back after 10 s: this must leave them time to)
    embed_resend_after_s: float
    postgres_down_s: float  # how long Postgres stays stopped mid-stream
    train_steps: int  # fine-tune steps of the retrain whose worker is killed
    train_redelivery_s: int  # the train queue's visibility timeout: when the retrain comes back
    hostile: int  # hostile messages (80 % hypothesis draws, 20 % every hand-written kind)
    large: int  # hostile messages of large_bytes each (every kind of hostile.large_kinds)
    # the visibility timeout of kill_embed_during_retrain (None: the settings', by default 60 s)
    lease_s: int | None
    retrain_budget_s: float  # its retrain's fine-tuning time: runs past the redelivery


FULL = Sizes(
    embed_kills=5,
    embed_resumes=200,
    embed_resend_after_s=45.0,
    postgres_down_s=20.0,
    train_steps=40,
    train_redelivery_s=40,
    hostile=10_000,
    large=200,
    lease_s=None,
    retrain_budget_s=150.0,
)
# Each check still fails when its behaviour breaks: two kills (the second hits a worker that
# took over the first one's messages) and a producer that resends sooner, an outage that
# outlasts several batch retries, a retrain killed mid-step that comes back sooner and trains
# two steps, 400 hostile messages that cover every hand-written kind many times over, 24 large
# messages (every kind four times), and a redelivery on a 10 s lease past which a 45 s
# retrain runs. (The budget counts from the trainer's start, and its first step of 64
# matches took 12 s on a busy 2-core machine: with 25 s the retrain once ended 12.5 s after
# fine-tuning began, before a redelivery 11 s after the kill.)
QUICK = Sizes(
    embed_kills=2,
    embed_resumes=80,
    embed_resend_after_s=25.0,
    postgres_down_s=8.0,
    train_steps=2,
    train_redelivery_s=20,
    hostile=400,
    large=24,
    lease_s=10,
    retrain_budget_s=45.0,
)
LARGE_BYTES = 5_000_000
# Goals of large_messages: Redis memory after the stream, over before it; any key left.
LARGE_AFTER_OVER_BEFORE_MB = 50
LARGE_KEY_LIMIT_BYTES = 100_000
# Goal of kill_embed_during_retrain on the default settings.
REDELIVERY_GOAL_S = 90


# --- private services --------------------------------------------------------------------


class PrivateRedis:
    """A redis-server of the scenario's own: append-only file fsynced on every write (so a
    kill -9 loses nothing it acknowledged) and a password, as production should run it
    (``persistent=False``: no append-only file, for a scenario that measures memory)."""

    def __init__(self, workdir: Path, *, persistent: bool = True) -> None:
        self.persistent = persistent
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = secrets.token_hex(12)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        if self.persistent:
            cmd += ["--appendonly", "yes", "--appendfsync", "always"]
        cmd += ["--save", ""]
        cmd += ["--dir", str(self.dir), "--requirepass", self.password]
        log = (self.dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        client = self.client()
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(redis.exceptions.RedisError):
                if client.ping():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("private redis-server did not start")
            time.sleep(0.1)

    def client(self) -> redis.Redis[bytes]:
        return redis.Redis.from_url(self.url)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


# --- documents and counts ----------------------------------------------------------------


def stream_documents(n_resumes: int) -> tuple[Docs, Docs]:
    """The bundled sample's jobs, and ``n_resumes`` resumes made from its resumes (variant k
    of a resume has its own id and one skill of its own, so it brings new texts)."""
    base = read_documents(SAMPLE_DIR / "resumes.jsonl")
    jobs = read_documents(SAMPLE_DIR / "jobs.jsonl")
    resumes = []
    for i in range(n_resumes):
        r = dict(base[i % len(base)])
        k = i // len(base)
        r["id"] = f"{r['id']}-v{k}"
        r["skills"] = [*r.get("skills", []), f"fault skill {k}"]
        resumes.append(r)
    return resumes, jobs


def scored_ids(factory: sessionmaker[Session], n_jobs: int) -> set[str]:
    r = aliased(DocumentRow)
    with factory() as s:
        rows = s.execute(
            select(r.external_id)
            .select_from(MatchRow)
            .join(r, r.id == MatchRow.resume_id)
            .group_by(r.external_id)
            .having(func.count(func.distinct(MatchRow.job_id)) == n_jobs)
        ).scalars()
        return set(rows)


def jobs_by_version(factory: sessionmaker[Session], resume_ids: list[str]) -> dict[str, Any]:
    """Per resume: how many jobs it has matches with, per model version (what a lost
    resume's report shows)."""
    r = aliased(DocumentRow)
    with factory() as s:
        rows = s.execute(
            select(r.external_id, MatchRow.model_version_id, func.count(MatchRow.job_id))
            .select_from(MatchRow)
            .join(r, r.id == MatchRow.resume_id)
            .where(r.external_id.in_(resume_ids))
            .group_by(r.external_id, MatchRow.model_version_id)
        ).all()
    out: dict[str, Any] = {}
    for rid, version, n in rows:
        out.setdefault(rid, {})[int(version)] = int(n)
    return out


def outcome(factory: sessionmaker[Session], resume_ids: set[str], n_jobs: int) -> dict[str, int]:
    """scored / lost / duplicated, as defined in the module docstring."""
    r, j = aliased(DocumentRow), aliased(DocumentRow)
    with factory() as s:
        per_pair = s.execute(
            select(r.external_id, func.count())
            .select_from(MatchRow)
            .join(r, r.id == MatchRow.resume_id)
            .join(j, j.id == MatchRow.job_id)
            .group_by(r.external_id, j.external_id, MatchRow.model_version_id)
        ).all()
        dup_docs = s.execute(
            select(
                func.count() - func.count(func.distinct(DocumentRow.kind + DocumentRow.external_id))
            )
        ).scalar_one()
        dup_emb = s.execute(
            select(
                func.count()
                - func.count(
                    func.distinct(
                        func.concat(FieldEmbeddingRow.model_version_id, FieldEmbeddingRow.text_hash)
                    )
                )
            )
        ).scalar_one()
    jobs_of: dict[str, int] = {}
    duplicated = int(dup_docs) + int(dup_emb)
    for rid, n in per_pair:
        jobs_of[rid] = jobs_of.get(rid, 0) + 1
        duplicated += n - 1
    scored = sum(1 for rid in resume_ids if jobs_of.get(rid) == n_jobs)
    return {"scored": scored, "lost": len(resume_ids) - scored, "duplicated": duplicated}


def wait_scored(
    factory: sessionmaker[Session], resume_ids: set[str], n_jobs: int, timeout: float = WAIT_S
) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        out = outcome(factory, resume_ids, n_jobs)
        if out["lost"] == 0 or time.monotonic() > deadline:
            return out
        time.sleep(1.0)


# --- scenario harness --------------------------------------------------------------------


@dataclass
class Run:
    """One scenario's stage, workers and counters."""

    stage: Stage
    factory: sessionmaker[Session]
    workdir: Path
    workers: list[WorkerProcess] = field(default_factory=list)
    kills: int = 0
    crashed: int = 0

    def worker(self, name: str, queues: str = "embed", **env: str) -> WorkerProcess:
        # Its own app for control (ping): the scenario's threads never share a connection.
        w = WorkerProcess(
            self.stage.settings,
            create_celery_app(self.stage.settings, with_tasks=False),
            f"{name}-{len(self.workers)}",
            self.workdir / f"{name}.log",
            queues=queues,
            env={**self.stage.env, **env},
            extra=tuple(os.environ.get("JOBFIT_FAULTS_WORKER_ARGS", "").split()),
        )
        w.start()
        self.workers.append(w)
        return w

    def kill(self, w: WorkerProcess) -> None:
        """kill -9 (whole process group); a worker found dead before that is a crash."""
        if not w.alive():
            self.crashed += 1
        w.kill()
        self.workers.remove(w)
        self.kills += 1

    def check_alive(self) -> None:
        self.crashed += sum(1 for w in self.workers if w.proc is not None and not w.alive())

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("*.log")))


@contextlib.contextmanager
def scenario(settings: Settings, model_path: Path, workdir: Path, **env: str) -> Iterator[Run]:
    with fresh_stage(settings, model_path, **env) as stage:
        engine = create_engine(make_url(stage.settings.db.url), pool_pre_ping=True)
        run = Run(stage, sessionmaker(engine), workdir)
        try:
            yield run
        finally:
            for w in run.workers:
                w.stop()
            engine.dispose()


def send_stream(
    client: JobfitClient, resumes: Docs, jobs: Docs, rate: float, during: Callable[[], None]
) -> dict[str, AsyncResult]:
    """Jobs, then resumes at ``rate`` per second, while ``during`` runs in a thread. Returns
    each resume's result handle (for the report's diagnostics)."""
    for j in jobs:
        client.submit_job(j)
    t = threading.Thread(target=during, daemon=True)
    t.start()
    sent = {}
    for r in resumes:
        sent[r["id"]] = client.submit_resume(r)
        time.sleep(1.0 / rate)
    t.join()
    return sent


def stream_report(
    run: Run,
    resumes: Docs,
    jobs: Docs,
    sent: dict[str, AsyncResult],
    *,
    resend_after_s: float = 45.0,
    **extra: Any,
) -> dict[str, Any]:
    """Wait as a careful producer does (``await_or_resend``: resend what got no answer after
    ``resend_after_s``), then count. ``lost_in_transit``: messages whose first send never got
    an answer (a worker was killed as Redis handed them over); they were re-sent, and count as
    lost only if still missing after that."""
    client = JobfitClient(app=run.stage.app)
    by_id = {r["id"]: r for r in resumes}
    _, resent = await_or_resend(
        sent, lambda rid: client.submit_resume(by_id[rid]), timeout_s=resend_after_s, rounds=2
    )
    counts = wait_scored(run.factory, set(by_id), len(jobs), timeout=30.0)
    run.check_alive()
    extra["resent"] = resent
    extra["lost_in_transit"] = sum(1 for r in sent.values() if not r.ready())
    if counts["lost"]:
        missing = sorted(set(sent) - scored_ids(run.factory, len(jobs)))[:10]
        by_version = jobs_by_version(run.factory, missing)
        extra["lost_examples"] = {
            m: {
                "task": sent[m].id,
                "state": sent[m].state,
                "result": sent[m].result if sent[m].successful() else None,
                "jobs_by_version": by_version.get(m, {}),
            }
            for m in missing
        }
    return {
        "sent": len(resumes) + len(jobs),
        "valid_resumes": len(resumes),
        "jobs": len(jobs),
        **counts,
        "crashed": run.crashed,
        "kills": run.kills,
        **extra,
    }


def kill_embed_worker(
    settings: Settings, model_path: Path, workdir: Path, console: Console, size: Sizes
) -> dict[str, Any]:
    """kill -9 the embed worker ``size.embed_kills`` times while documents stream in; a new
    worker is started after each kill (as compose's restart policy does). The killed workers'
    messages come back after the visibility timeout (10 s here)."""
    kills = size.embed_kills
    resumes, jobs = stream_documents(size.embed_resumes)
    with scenario(settings, model_path, workdir, JOBFIT_BROKER__VISIBILITY_TIMEOUT_S="10") as run:
        w = run.worker("embed")

        def killer() -> None:
            nonlocal w
            for i in range(kills):
                time.sleep(2.0)
                console.print(f"kill -9 embed worker ({i + 1}/{kills})")
                run.kill(w)
                w = run.worker("embed")

        sent = send_stream(JobfitClient(app=run.stage.app), resumes, jobs, 8, during=killer)
        return stream_report(run, resumes, jobs, sent, resend_after_s=size.embed_resend_after_s)


def secrets_in_logs(run: Run, *secrets_: str) -> int:
    """How many times any of these secrets appears in the workers' logs (must be 0)."""
    logs = run.logs()
    return sum(logs.count(s) for s in secrets_ if s)


def outage_stream(
    settings: Settings,
    model_path: Path,
    workdir: Path,
    outage: Callable[[], None],
    *,
    secret: str,
    visibility_timeout_s: int,
) -> dict[str, Any]:
    """120 resumes at 10/s to one embed worker while ``outage`` runs (3 s in); the report also
    counts ``secret`` in the worker logs."""
    resumes, jobs = stream_documents(120)
    vt = str(visibility_timeout_s)
    with scenario(settings, model_path, workdir, JOBFIT_BROKER__VISIBILITY_TIMEOUT_S=vt) as run:
        run.worker("embed")

        def later() -> None:
            time.sleep(3.0)
            outage()

        sent = send_stream(JobfitClient(app=run.stage.app), resumes, jobs, 10, during=later)
        return stream_report(run, resumes, jobs, sent, secrets_in_logs=secrets_in_logs(run, secret))


def down_for(
    console: Console, what: str, stop: Callable[[], None], start: Callable[[], None], s: float
) -> Callable[[], None]:
    """An outage: stop, ``s`` seconds down, start."""

    def outage() -> None:
        console.print(f"{what}: down for {s:.0f} s")
        stop()
        time.sleep(s)
        start()

    return outage


def restart_redis(
    settings: Settings, model_path: Path, workdir: Path, console: Console, size: Sizes
) -> dict[str, Any]:
    """A private Redis (append-only, fsync always, password) as broker and result backend;
    kill -9 it mid-stream and start it again on its files 2 s later. Producers retry their
    publishes, the worker reconnects, and the messages it held come back from Redis's
    unacked set after the visibility timeout."""
    redis_ = PrivateRedis(workdir)
    redis_.start()
    own = settings.model_copy(deep=True)
    own.broker.url = own.broker.result_backend = redis_.url

    restart = down_for(console, "redis-server (kill -9)", redis_.kill, redis_.start, 2.0)
    try:
        return outage_stream(
            own, model_path, workdir, restart, secret=redis_.password, visibility_timeout_s=10
        )
    finally:
        redis_.stop()


def stop_postgres(
    settings: Settings, model_path: Path, workdir: Path, console: Console, size: Sizes
) -> dict[str, Any]:
    """A private Postgres server (embedded, a password in its URL); stopped mid-stream for
    ``size.postgres_down_s`` seconds.
    The worker's batch retries with backoff (messages unacknowledged meanwhile); nothing is
    acknowledged before its rows are committed."""
    pg = PrivatePostgres()
    pg.create()
    own = settings.model_copy(deep=True)
    own.db.url = pg.url

    outage = down_for(console, "postgres (stopped)", pg.stop, pg.start, size.postgres_down_s)
    try:
        return outage_stream(
            own, model_path, workdir, outage, secret=pg.password, visibility_timeout_s=600
        )
    finally:
        pg.drop()


def publish_all(run: Run, messages: list[hostile.Message]) -> None:
    """Task calls through Celery (JSON), raw bodies straight through kombu."""
    s = run.stage.settings
    options = {"global_keyprefix": s.broker.key_prefix} if s.broker.key_prefix else {}
    with Connection(s.broker.url, transport_options=options) as conn:  # type: ignore[no-untyped-call]
        producer = conn.Producer()
        exchange = Exchange(EMBED_QUEUE, type="direct")  # type: ignore[no-untyped-call]
        for m in messages:
            if m.raw is None:
                run.stage.app.send_task(m.task, args=m.args, kwargs=m.kwargs, task_id=m.id)
                continue
            producer.publish(
                m.raw,
                exchange=exchange,
                routing_key=EMBED_QUEUE,
                content_type=m.content_type,
                content_encoding="utf-8" if "json" in m.content_type else "binary",
                headers={**(m.headers or {}), "id": m.id, "lang": "py"},
                retry=True,
            )


def hostile_messages(
    settings: Settings, model_path: Path, workdir: Path, console: Console, size: Sizes
) -> dict[str, Any]:
    """``size.hostile`` malformed and hostile messages (80 % hypothesis-generated ingest and scoring
    calls, 20 % hand-written raw messages) mixed with valid documents, to one embed worker.
    Every hostile message must end up either recorded in ``failed_messages`` with a reason,
    or (when it happens to be a valid document) stored and scored; the worker must live."""
    n = size.hostile
    console.print(f"generating {n} hostile messages (hypothesis)")
    drawn = hostile.generated(int(n * 0.8))
    split = int(n * 0.65)
    bad = list(hostile.ingest_messages(drawn[:split]))
    bad += hostile.score_messages(drawn[split:])
    n_drawn = len(bad)
    bad += hostile.raw_messages(n - n_drawn)
    resumes, jobs = stream_documents(100)
    resumes += hostile.valid_hostile_documents()
    good = [
        hostile.Message(f"good-{r['id']}", INGEST_RESUME, kwargs={"document": r}) for r in resumes
    ]
    mixed = bad + good
    random.Random(1).shuffle(mixed)  # noqa: S311 (a fixed order, not a secret)
    valid_docs = {m.id: m.valid_document for m in bad if m.valid_document is not None}
    with scenario(settings, model_path, workdir) as run:
        run.worker("embed")
        client = JobfitClient(app=run.stage.app)
        for j in jobs:
            client.submit_job(j)
        t0 = time.monotonic()
        console.print(f"sending {len(mixed)} messages")
        publish_all(run, mixed)
        rejected_ids = {m.id for m in bad} - set(valid_docs)
        deadline = time.monotonic() + 900
        while True:
            recorded = recorded_ids(run.factory, rejected_ids)
            if len(recorded) == len(rejected_ids) or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        seconds = time.monotonic() - t0
        n_jobs = count_jobs(run.factory)
        counts = wait_scored(run.factory, {r["id"] for r in resumes}, n_jobs, timeout=120)
        stored = stored_ids(run.factory, {str(d["id"]) for d in valid_docs.values()})
        run.check_alive()
        return {
            "sent": len(mixed) + len(jobs),
            "hostile": len(bad),
            "hand_written": len(bad) - n_drawn,
            "hostile_valid_documents": len(valid_docs),
            "hostile_valid_stored": len(stored),
            "rejected_expected": len(rejected_ids),
            "rejected_recorded": len(recorded),
            "unaccounted": len(rejected_ids - recorded) + len(valid_docs) - len(stored),
            "valid_resumes": len(resumes),
            **counts,
            "crashed": run.crashed,
            "worker_alive": all(w.alive() for w in run.workers),
            "verbatim": verbatim(run.factory, hostile.valid_hostile_documents()),
            "reasons": reason_counts(run.factory),
            "seconds": round(seconds, 1),
        }


class MemoryWatch:
    """Redis ``used_memory``, sampled every 0.1 s in a thread, and its highest value (Redis's
    own ``used_memory_peak`` catches what falls between samples; the scenario's Redis is its
    own, so that peak is the scenario's)."""

    def __init__(self, client: redis.Redis[bytes]) -> None:
        self.client = client
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def used(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            with contextlib.suppress(redis.RedisError):
                self.peak = max(self.peak, self.used())

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        info = self.client.info("memory")
        self.peak = max(self.peak, int(info["used_memory_peak"]))


def key_sizes(client: redis.Redis[bytes], prefix: str) -> dict[str, int]:
    """Every key under ``prefix`` (SCAN) and its ``MEMORY USAGE`` in bytes."""
    sizes = {}
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        sizes[key.decode()] = int(client.memory_usage(key, samples=0) or 0)
    return sizes


def wait_drained(client: redis.Redis[bytes], prefix: str, timeout: float = 60.0) -> None:
    """Until no message is queued or unacknowledged under ``prefix`` (kombu's keys)."""
    deadline = time.monotonic() + timeout
    keys = [f"{prefix}{q}" for q in (EMBED_QUEUE, TRAIN_QUEUE)] + [f"{prefix}unacked"]
    while any(client.exists(k) for k in keys) and time.monotonic() < deadline:
        time.sleep(0.5)


def large_messages(
    settings: Settings, model_path: Path, workdir: Path, console: Console, size: Sizes
) -> dict[str, Any]:
    """``size.large`` hostile messages of 5 MB each (every kind of ``hostile.large_kinds``),
    with valid resumes among them, to one embed worker, on a Redis of the scenario's own (no
    append-only file: memory is what is measured). Redis ``used_memory`` before, at its peak
    and after (every message answered, nothing queued or unacknowledged); every key left
    under the run's prefix (SCAN + MEMORY USAGE). Goals: after <= before + 50 MB, no key over
    100 kB; each message refused and recorded, the valid ones scored."""
    redis_ = PrivateRedis(workdir, persistent=False)
    redis_.start()
    own = settings.model_copy(deep=True)
    own.broker.url = own.broker.result_backend = redis_.url
    bad = hostile.large_messages(size.large, LARGE_BYTES)
    resumes, jobs = stream_documents(max(size.large // 4, 6))
    good = [
        hostile.Message(f"good-{r['id']}", INGEST_RESUME, kwargs={"document": r}) for r in resumes
    ]
    mixed = list(bad)
    for i, m in enumerate(good):  # spread among the large ones
        mixed.insert(i * len(bad) // len(good) + i, m)
    try:
        with scenario(own, model_path, workdir) as run:
            run.worker("embed")
            client = JobfitClient(app=run.stage.app)
            for j in jobs:
                client.submit_job(j).get(timeout=WAIT_S)
            prefix = run.stage.settings.broker.key_prefix
            r = redis_.client()
            before = MemoryWatch(r).used()
            t0 = time.monotonic()
            with MemoryWatch(r) as watch:
                console.print(f"sending {len(bad)} messages of {LARGE_BYTES:,} bytes")
                publish_all(run, mixed)
                ids = {m.id for m in bad}
                deadline = time.monotonic() + WAIT_S
                while len(recorded := recorded_ids(run.factory, ids)) < len(ids):
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.5)
                counts = wait_scored(run.factory, {r_["id"] for r_ in resumes}, len(jobs), 120)
                wait_drained(r, prefix)
            seconds = time.monotonic() - t0
            after = watch.used()
            sizes = key_sizes(r, prefix)
            results = [run.stage.app.AsyncResult(m.id) for m in bad if m.task is not None]
            run.check_alive()
            largest = max(sizes.items(), key=lambda kv: kv[1], default=("", 0))
            return {
                "sent": len(mixed) + len(jobs),
                "large": len(bad),
                "large_bytes": LARGE_BYTES,
                "rejected_recorded": len(recorded),
                "failure_results": sum(res.state == "FAILURE" for res in results),
                "task_results": len(results),
                "valid_resumes": len(resumes),
                **counts,
                "crashed": run.crashed,
                "worker_alive": all(w.alive() for w in run.workers),
                "redis_used_memory_mb": {
                    "before": round(before / 2**20, 1),
                    "peak": round(watch.peak / 2**20, 1),
                    "after": round(after / 2**20, 1),
                },
                "after_over_before_mb": round((after - before) / 2**20, 1),
                "keys_left": len(sizes),
                "largest_key": largest[0].removeprefix(prefix),
                "largest_key_bytes": largest[1],
                "keys_over_100kb": sum(v > LARGE_KEY_LIMIT_BYTES for v in sizes.values()),
                "seconds": round(seconds, 1),
            }
    finally:
        redis_.stop()


def recorded_ids(factory: sessionmaker[Session], ids: set[str]) -> set[str]:
    with factory() as s:
        rows = s.execute(
            select(FailedMessageRow.task_id).where(
                FailedMessageRow.task_id.is_not(None), func.length(FailedMessageRow.reason) > 0
            )
        ).scalars()
        return {r for r in rows if r in ids}


def stored_ids(factory: sessionmaker[Session], ids: set[str]) -> set[str]:
    with factory() as s:
        return set(s.execute(select(DocumentRow.external_id)).scalars()) & ids


def count_jobs(factory: sessionmaker[Session]) -> int:
    with factory() as s:
        return int(
            s.execute(
                select(func.count()).select_from(DocumentRow).where(DocumentRow.kind == "job")
            ).scalar_one()
        )


def verbatim(factory: sessionmaker[Session], docs: list[dict[str, Any]]) -> bool:
    """Hostile text in valid documents comes back exactly as sent."""
    with factory() as s:
        rows: dict[str, Any] = dict(
            s.execute(
                select(DocumentRow.external_id, DocumentRow.payload).where(
                    DocumentRow.external_id.in_([d["id"] for d in docs])
                )
            ).all()
        )
    return len(rows) == len(docs) and all(rows[d["id"]]["skills"] == d["skills"] for d in docs)


def reason_counts(factory: sessionmaker[Session]) -> dict[str, int]:
    """How many rejections of each kind (the reason up to its first colon)."""
    with factory() as s:
        reasons = s.execute(select(FailedMessageRow.reason)).scalars().all()
    out: dict[str, int] = {}
    for r in reasons:
        key = r.split(":", 1)[0][:60]
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1])[:15])


def training_data(client: JobfitClient) -> list[tuple[str, str, float]]:
    """A few sample documents and their labels, stored (what a retrain trains on)."""
    resumes = read_documents(SAMPLE_DIR / "resumes.jsonl")[:12]
    jobs = read_documents(SAMPLE_DIR / "jobs.jsonl")[:6]
    results = [client.submit_job(j) for j in jobs] + [client.submit_resume(r) for r in resumes]
    for res in results:
        res.get(timeout=WAIT_S)
    rids, jids = {r["id"] for r in resumes}, {j["id"] for j in jobs}
    labels = [
        (r, j, y)
        for (r, j), y in load_labels(SAMPLE_DIR / "labels.csv").items()
        if r in rids and j in jids
    ]
    for res in [client.submit_label(r, j, y, source="faults") for r, j, y in labels]:
        res.get(timeout=WAIT_S)
    return labels


def wait_fine_tuning(retrain: AsyncResult) -> None:
    deadline = time.monotonic() + WAIT_S
    while not (isinstance(retrain.info, dict) and retrain.info.get("stage") == "fine-tuning"):
        if time.monotonic() > deadline:
            raise RuntimeError("the retrain never reported fine-tuning")
        time.sleep(0.2)


def wait_retrain(retrain: AsyncResult, quiet_s: float = WAIT_S) -> Any:
    """The retrain's result, however long it trains, as long as it moves: a timeout only
    after ``quiet_s`` seconds without a change of its state or progress (a full fine-tune on
    a busy 2-core machine can take longer than any fixed wait and still be progressing)."""
    seen, since = None, time.monotonic()
    while True:
        with contextlib.suppress(ResultTimeout):
            return retrain.get(timeout=5.0)
        now_ = (retrain.state, json.dumps(retrain.info, sort_keys=True, default=str))
        if now_ != seen:
            seen, since = now_, time.monotonic()
        elif time.monotonic() - since > quiet_s:
            raise TimeoutError(f"the retrain made no progress for {quiet_s:.0f} s: {now_}")


def kill_train_worker(
    settings: Settings, model_path: Path, workdir: Path, console: Console, size: Sizes
) -> dict[str, Any]:
    """Labels for a few sample documents, then a full fine-tune on the train queue; the train
    worker is killed (-9) as soon as it reports fine-tuning. The active version, the registry
    and the model store must be as before (a ``.tmp-*`` dir at most). A new train worker
    then gets the retrain again (after the visibility timeout) and finishes it once."""
    from jobfit.shared import repository as repo

    store = workdir / "store"  # trained versions go here, not to the user's model store
    env = {
        "JOBFIT_BROKER__VISIBILITY_TIMEOUT_S": str(size.train_redelivery_s),
        "JOBFIT_TRAIN__DEVICE": "cpu",
        "JOBFIT_MODEL__STORE": str(store),
    }
    with scenario(settings, model_path, workdir, **env) as run:
        run.worker("embed")
        trainer = run.worker("train", queues="train")
        client = JobfitClient(app=run.stage.app)
        labels = training_data(client)

        def registry_state() -> tuple[str, int]:
            with run.factory() as s:
                versions = repo.list_versions(session=s)
            return next(v.version for v in versions if v.status == "active"), len(versions)

        before = registry_state()
        dirs = set(os.listdir(store)) if store.is_dir() else set()
        retrain = client.retrain(mode="full", max_steps=size.train_steps)
        wait_fine_tuning(retrain)
        console.print("kill -9 the train worker mid fine-tuning")
        run.kill(trainer)
        after_kill = registry_state()
        left = (set(os.listdir(store)) if store.is_dir() else set()) - dirs
        run.worker("train", queues="train")
        console.print("waiting for the retrain to be delivered again and finish")
        outcome_ = wait_retrain(retrain)
        run.check_alive()
        return {
            "labels": len(labels),
            "active_before": before[0],
            "active_unchanged_after_kill": after_kill[0] == before[0],
            "versions_unchanged_after_kill": after_kill[1] == before[1],
            "partial_model_dirs_in_place": sum(1 for d in left if not d.startswith(".tmp-")),
            "redelivered_retrain": outcome_.get("status"),
            "versions_after_redelivery": registry_state()[1] - before[1],
            "crashed": run.crashed,
            "kills": run.kills,
        }


def held_messages(client: redis.Redis[bytes], prefix: str, queue: str) -> dict[str, float]:
    """The unacknowledged messages of ``queue`` (kombu's unacked hash and its index of
    delivery times): delivery tag -> the time it was delivered, or its lease last renewed."""
    index = client.zrange(f"{prefix}unacked_index", 0, -1, withscores=True)
    if not index:
        return {}
    raws = client.hmget(f"{prefix}unacked", [tag for tag, _ in index])
    return {
        tag.decode(): float(score)
        for (tag, score), raw in zip(index, raws, strict=True)
        if raw is not None and json.loads(raw)[2] == queue
    }


def task_deliveries(run: Run, task_id: str) -> int:
    """How many times the workers logged receiving this task (Celery logs each delivery)."""
    return run.logs().count(f"[{task_id}] received")


def kill_embed_during_retrain(
    settings: Settings, model_path: Path, workdir: Path, console: Console, size: Sizes
) -> dict[str, Any]:
    """An embed worker holding a batch is killed (-9) while a retrain runs on a train worker,
    on the default visibility timeout (``size.lease_s`` in the quick draw). Measured: how
    long after the kill every message the killed worker held is delivered again (put back
    on its queue, for the embed worker started after the kill, as compose's restart policy
    does; goal on the defaults: 90 s), whether the retrain is still running then, and how
    many times the retrain was delivered (goal: once). The resumes are all scored, once."""
    store = workdir / "store"
    env = {"JOBFIT_TRAIN__DEVICE": "cpu", "JOBFIT_MODEL__STORE": str(store)}
    if size.lease_s is not None:
        env["JOBFIT_BROKER__VISIBILITY_TIMEOUT_S"] = str(size.lease_s)
    resumes, jobs = stream_documents(min(size.embed_resumes, 120))
    with scenario(settings, model_path, workdir, **env) as run:
        lease_s = int(
            env.get("JOBFIT_BROKER__VISIBILITY_TIMEOUT_S", settings.broker.visibility_timeout_s)
        )
        embed = run.worker("embed")
        run.worker("train", queues="train")
        client = JobfitClient(app=run.stage.app)
        labels = training_data(client)
        retrain = client.retrain(
            mode="full", max_steps=1_000_000, time_budget_s=size.retrain_budget_s, promote=False
        )
        wait_fine_tuning(retrain)
        t_retrain = time.monotonic()
        for j in jobs:
            client.submit_job(j)
        sent = {r["id"]: client.submit_resume(r) for r in resumes}
        r = redis.Redis.from_url(run.stage.settings.broker.url)
        prefix = run.stage.settings.broker.key_prefix
        deadline = time.monotonic() + WAIT_S
        while not (held := held_messages(r, prefix, EMBED_QUEUE)):
            if time.monotonic() > deadline:
                raise RuntimeError("the embed worker never held a message")
            time.sleep(0.05)
        console.print(f"kill -9 the embed worker holding {len(held)} message(s)")
        run.kill(embed)
        t_kill = time.monotonic()
        held = held_messages(r, prefix, EMBED_QUEUE)  # what it held when it died
        # its replacement starts meanwhile (as compose's restart policy starts one)
        restart = threading.Thread(target=run.worker, args=("embed",), daemon=True)
        restart.start()
        back: dict[str, float] = {}  # tag -> seconds after the kill it was put back
        deadline = t_kill + WAIT_S
        while len(back) < len(held) and time.monotonic() < deadline:
            now = held_messages(r, prefix, EMBED_QUEUE)
            for tag, score in held.items():
                if tag not in back and now.get(tag) != score:  # restored (and taken again)
                    back[tag] = time.monotonic() - t_kill
            time.sleep(0.2)
        redelivered_s = max(back.values(), default=None)
        running_then = not retrain.ready()
        console.print(
            f"delivered again after {redelivered_s} s; the retrain still runs: {running_then}"
        )
        outcome_ = wait_retrain(retrain)
        retrain_s = time.monotonic() - t_retrain
        restart.join()
        # a message lost in transit at the kill (see stream_report) is re-sent once the
        # killed worker's messages have had time to come back and be answered
        report_ = stream_report(run, resumes, jobs, sent, resend_after_s=1.5 * lease_s + 15)
        time.sleep(2 * sweep_interval_s(lease_s))  # a second delivery of the retrain would show now
        return {
            **report_,
            "visibility_timeout_s": lease_s,
            "labels": len(labels),
            "held_at_kill": len(held),
            "redelivered": len(back),
            "redelivered_s": None if redelivered_s is None else round(redelivered_s, 1),
            "first_redelivered_s": round(min(back.values(), default=0.0), 1),
            "retrain_running_at_redelivery": running_then,
            "retrain_s_from_fine_tuning": round(retrain_s, 1),
            "retrain_status": outcome_.get("status"),
            "retrain_deliveries": task_deliveries(run, retrain.id),
        }


Scenario = Callable[[Settings, Path, Path, Console, Sizes], dict[str, Any]]
SCENARIOS: dict[str, Scenario] = {
    "kill_embed_worker": kill_embed_worker,
    "restart_redis": restart_redis,
    "stop_postgres": stop_postgres,
    "kill_train_worker": kill_train_worker,
    "hostile_messages": hostile_messages,
    "large_messages": large_messages,
    "kill_embed_during_retrain": kill_embed_during_retrain,
}


def report(
    settings: Settings,
    model_path: Path,
    console: Console,
    names: list[str] | None = None,
    size: Sizes = FULL,
) -> dict[str, Any]:
    """Run the scenarios (all by default) at these sizes and total their counts."""
    import tempfile

    out: dict[str, Any] = {"scenarios": {}}
    with tempfile.TemporaryDirectory(prefix="jobfit-faults-") as tmp:
        for name in names or list(SCENARIOS):
            console.print(f"[bold]{name}[/bold]")
            workdir = Path(tmp) / name
            workdir.mkdir()
            t0 = time.monotonic()
            result = SCENARIOS[name](settings, model_path, workdir, console, size)
            result["wall_s"] = round(time.monotonic() - t0, 1)
            out["scenarios"][name] = result
    keys = ("sent", "scored", "lost", "duplicated", "crashed")
    out["totals"] = {k: sum(int(r.get(k, 0)) for r in out["scenarios"].values()) for k in keys}
    return out

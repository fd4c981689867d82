"""``python -m tools demo`` (``make demo``): the whole pipeline on the bundled sample, on real
services when they are reachable, else on an embedded default (in-memory broker, worker
in-process). The database is the configured Postgres when it has pgvector, else the project's
embedded one (``tools.postgres``); the demo says which."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from celery.result import AsyncResult
from rich.console import Console
from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from jobfit.shared import repository as repo
from jobfit.shared.celery_app import EMBED_QUEUE, TRAIN_QUEUE, JobfitCelery, create_celery_app
from jobfit.shared.client import JobfitClient, read_documents
from jobfit.shared.config import BrokerSettings, Settings
from jobfit.shared.db import ensure_database, make_engine, make_session_factory, upgrade
from jobfit.shared.model_store import base_version
from jobfit.shared.orm import DocumentRow, FailedMessageRow, MatchRow, ModelVersionRow
from jobfit.shared.sample import SAMPLE_DIR, load_labels
from tools.postgres import pgvector_settings

WORKER_READY_TIMEOUT_S = 600
DEMO_DATABASE = "jobfit_demo"


def broker_reachable(settings: Settings) -> tuple[bool, str]:
    """Can we reach the configured broker? (reason when not)"""
    import redis

    if settings.broker.url.startswith(("redis://", "rediss://")):
        try:
            redis.Redis.from_url(settings.broker.url, socket_connect_timeout=2).ping()
        except redis.RedisError as exc:
            return False, f"Redis at {settings.broker.url} unreachable ({exc})"
    return True, "ok"


def embedded_settings(settings: Settings) -> Settings:
    """Celery's in-memory transport (the worker runs in this process)."""
    return settings.model_copy(
        update={"broker": BrokerSettings(url="memory://", result_backend="cache+memory://")}
    )


@contextlib.contextmanager
def worker_process(
    app: JobfitCelery,
    console: Console,
    env: dict[str, str] | None = None,
    *,
    queues: str = "embed,train",
    hostname: str | None = None,
    launcher: Sequence[str] = ("-m", "jobfit"),
) -> Iterator[subprocess.Popen[bytes]]:
    """``jobfit worker --queues embed,train`` as a child process (compose runs the same
    command, one worker per queue); ``launcher``: how Python runs ``jobfit`` (the benchmark
    profiles a worker with ``tools.profiler``)."""
    cmd = [sys.executable, *launcher, "worker", "--queues", queues]
    cmd += ["--loglevel", "WARNING", *(["--hostname", hostname] if hostname else [])]
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
        while not app.control.ping(timeout=1.0, destination=[hostname] if hostname else None):
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with code {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("worker did not answer a ping in time")
        console.print("worker ready")
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def worker_in_process(app: JobfitCelery) -> Iterator[None]:
    """A solo worker in a thread of this process (the embedded fallback)."""
    from celery.contrib.testing.worker import start_worker

    with start_worker(
        app,
        pool="solo",
        perform_ping_check=False,
        shutdown_timeout=60,
        queues=[EMBED_QUEUE, TRAIN_QUEUE],
    ):
        yield


def wait_all(results: list[AsyncResult], console: Console) -> list[dict[str, Any]]:
    from jobfit.shared.console import progress_bar

    out = []
    with progress_bar() as bar:
        task = bar.add_task("scoring", total=len(results))
        for r in results:
            out.append(r.get(timeout=3600))
            bar.advance(task)
    return out


def run_pipeline(
    app: JobfitCelery,
    use_services: bool,
    resumes: list[dict[str, Any]],
    jobs: list[dict[str, Any]],
    console: Console,
    *,
    worker_env: dict[str, str] | None = None,
    after: Callable[[JobfitClient], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Start a worker, submit jobs then resumes, wait for every task, then run ``after``
    while the worker is still up. Returns the task summaries and the timings: worker start
    (model load + warm-up) and submit-to-done."""
    client = JobfitClient(app=app)
    runner = worker_process(app, console, worker_env) if use_services else worker_in_process(app)
    t0 = time.perf_counter()
    with runner:
        t1 = time.perf_counter()
        results = [client.submit_job(j) for j in jobs] + [client.submit_resume(r) for r in resumes]
        summaries = wait_all(results, console)
        t2 = time.perf_counter()
        if after is not None:
            after(client)
    return summaries, {"worker_start_s": t1 - t0, "score_s": t2 - t1}


def fine_tune(
    client: JobfitClient, labels: dict[tuple[str, str], float], console: Console
) -> dict[str, Any]:
    """Send the sample's labels, retrain on the train queue (a head on the frozen encoder:
    seconds on a CPU), and, if the gate promotes the new version (better on the held-out
    resumes, not worse on the held-out jobs), wait for the worker to switch to it and
    rescore. Returns the retrain summary."""
    from jobfit.shared.cli_train import wait_with_progress

    sent = [client.submit_label(r, j, y, source="demo") for (r, j), y in sorted(labels.items())]
    for res in sent:
        res.get(timeout=600)
    out = wait_with_progress(client.retrain(), "retrain")
    console.print(
        f"retrain: {out.get('status')} {out.get('version', '')} "
        f"({out.get('reason', '')}; {out.get('train_s', 0):.1f}s)"
    )
    if out.get("status") == "promoted":
        wait_with_progress(client.rescore(out["version"]), "rescore")
    return out


def run_demo(
    settings: Settings, *, backend: str, show: int, top: int, console: Console, train: bool = True
) -> int:
    """Run the demo; returns the exit code."""
    if backend not in {"auto", "services", "embedded"}:
        console.print(f"[red]unknown backend {backend!r}[/red] (auto, services, embedded)")
        return 2
    use_services = backend == "services"
    if backend == "auto":
        use_services, why = broker_reachable(settings)
        if not use_services:
            console.print(f"[yellow]{why}[/yellow]")
    # Each run starts on an empty embedded database, as the SQLite file of old did.
    settings, which_db = pgvector_settings(settings, DEMO_DATABASE, fresh=True)
    if not use_services:
        settings = embedded_settings(settings)
    console.print(
        f"backend: {'services' if use_services else 'embedded'} — broker {settings.broker.url}"
    )
    console.print(which_db)
    default_model = settings.model.path is None and settings.model.hub_id is None
    if default_model and not (settings.model.resolved_path() / "modules.json").is_file():
        from jobfit.workers.cli import ModelChoice, provision

        console.print("provisioning the default model (all-mpnet-base-v2) …")
        provision(settings, ModelChoice.mpnet)
    console.print(f"model: {settings.model.resolved_path()}")
    ensure_database(settings.db.url)
    upgrade(settings)

    app = create_celery_app(settings)
    jobs = read_documents(SAMPLE_DIR / "jobs.jsonl")
    resumes = read_documents(SAMPLE_DIR / "resumes.jsonl")
    labels = load_labels(SAMPLE_DIR / "labels.csv")
    trained: dict[str, Any] = {}

    def then(client: JobfitClient) -> None:
        if train and labels:
            trained.update(fine_tune(client, labels, console))

    summaries, timing = run_pipeline(
        app,
        use_services,
        resumes,
        jobs,
        console,
        worker_env={"JOBFIT_DB__URL": settings.db.url},
        after=then,
    )
    served = {s["model_version"] for s in summaries if s.get("model_version")}
    embedded = sum(s.get("embedded", 0) for s in summaries)
    console.print(
        f"worker ready in {timing['worker_start_s']:.1f}s; {len(resumes)} resumes × {len(jobs)} "
        f"jobs submitted and scored in {timing['score_s']:.1f}s ({embedded} texts embedded; "
        f"model {', '.join(sorted(served))})"
    )
    versions = {base_version(v) for v in served}
    if trained:
        active = trained.get("active_version") or trained.get("parent_version")
        metrics = trained.get("metrics") or {}
        before = trained.get("active_metrics") or {}
        console.print(
            f"held-out resumes of the sample ({int(metrics.get('eval_matches', 0))} labelled "
            f"matches, never trained on): match Spearman "
            f"{before.get('match_spearman', float('nan')):.3f} (version active before) -> "
            f"{metrics.get('match_spearman', float('nan')):.3f} (new version)"
        )
        versions = {active} if active else versions
    return report(settings, versions, resumes, jobs, labels, show=show, top=top, console=console)


def report(
    settings: Settings,
    versions: set[str],
    resumes: list[dict[str, Any]],
    jobs: list[dict[str, Any]],
    labels: dict[tuple[str, str], float],
    *,
    show: int,
    top: int,
    console: Console,
) -> int:
    from scipy.stats import spearmanr

    from jobfit.shared.cli import ranked_table

    rids, jids = [r["id"] for r in resumes], [j["id"] for j in jobs]
    engine = make_engine(settings)
    try:
        with make_session_factory(engine)() as session:
            # The rows name the version as served: the registry's, or a backend variant of
            # it (``…+onnx``), whichever the worker ran.
            scored = session.scalars(
                select(ModelVersionRow.version)
                .join(MatchRow, MatchRow.model_version_id == ModelVersionRow.id)
                .distinct()
            )
            served = {v for v in scored if base_version(v) in versions}
            if len(served) != 1:
                console.print(f"[red]expected one served version of {versions}, got {served}[/red]")
                return 1
            (version,) = served
            r_doc, j_doc = aliased(DocumentRow), aliased(DocumentRow)
            rows = session.execute(
                select(r_doc.external_id, j_doc.external_id, MatchRow.score)
                .join(r_doc, MatchRow.resume_id == r_doc.id)
                .join(j_doc, MatchRow.job_id == j_doc.id)
                .join(ModelVersionRow, MatchRow.model_version_id == ModelVersionRow.id)
                .where(
                    ModelVersionRow.version == version,
                    r_doc.external_id.in_(rids),
                    j_doc.external_id.in_(jids),
                )
            ).all()
            failed = session.execute(select(func.count()).select_from(FailedMessageRow)).scalar()
            for rid in rids[:show]:
                ranked = repo.ranked(session=session, resume_id=rid, model_version=version, top=top)
                console.print(ranked_table(ranked, by_job=True, labels=labels))
    finally:
        engine.dispose()
    expected = len(rids) * len(jids)
    console.print(f"match rows in the database for the sample: {len(rows)} of {expected}")
    pairs = [(s, labels[(r, j)]) for r, j, s in rows if s is not None and (r, j) in labels]
    if len(pairs) > 2:
        rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
        console.print(
            f"Spearman of match score vs the dataset's matched_score over {len(pairs)} "
            f"labelled pairs: {rho:.3f} (all sample resumes: a fine-tuned version has seen "
            "the training side; the held-out line above is the fair one)"
        )
    if failed:
        console.print(f"[yellow]{failed} failed message(s) recorded[/yellow]")
    return 0 if len(rows) == expected else 1

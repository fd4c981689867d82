"""``python -m tools``: the demo, the benchmarks, the fault report and the dataset commands.
They drive jobfit from outside (its client, its ``jobfit worker`` processes, its database), as
a user or CI does; the product's own commands stay in ``jobfit``. Heavy imports happen inside
each command, so ``--help`` is quick."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from jobfit.shared.config import ScoringSettings, get_settings
from jobfit.shared.console import console, err, progress_bar, worker_env
from jobfit.workers.cli import ModelChoice, provision

app = typer.Typer(
    help="jobfit's harness: demo, benchmarks, fault report, datasets.", no_args_is_help=True
)
data_app = typer.Typer(help="The real dataset and the bundled sample.", no_args_is_help=True)
app.add_typer(data_app, name="data")


DEFAULT_BENCH_MODELS = "minilm,mpnet"


def emit_json(result: dict[str, Any], out: Path | None) -> None:
    """Print a report as JSON on stdout, and also write it to ``out`` when given."""
    text = json.dumps(result, indent=2)
    if out:
        out.write_text(text + "\n", encoding="utf-8")
    sys.stdout.write(text + "\n")


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
    from tools.demo import run_demo

    t0 = time.perf_counter()
    code = run_demo(
        get_settings(), backend=backend, show=show, top=top, console=console, train=train
    )
    err.print(f"demo finished in {time.perf_counter() - t0:.1f}s")
    raise typer.Exit(code)


@app.command()
def bench(
    out: Annotated[Path | None, typer.Option(help="Also write the JSON here.")] = None,
    models: Annotated[
        str, typer.Option(help="Comma-separated: minilm, mpnet.")
    ] = DEFAULT_BENCH_MODELS,
    dataset: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="The real dataset's CSV: its documents instead of the sample's.",
        ),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(
            help="MiniLM only (unless --models): raw encode, the pipeline's ceiling and e2e"
            " ingest with torch and the default backend (a few minutes; for checking)."
        ),
    ] = False,
    profile: Annotated[
        Path | None,
        typer.Option(help="Also profile a ceiling run's worker; its .prof files go here."),
    ] = None,
) -> None:
    """Raw model encode vs the whole pipeline on the same texts, the pipeline's ceiling
    (instant backend), latency, memory and workers (JSON out; see tools/bench.py)."""
    worker_env()
    from tools.bench import bench as run_bench
    from tools.postgres import pgvector_settings

    settings, database = pgvector_settings(get_settings(), "postgres")
    err.print(database)
    if quick and models == DEFAULT_BENCH_MODELS:
        models = ModelChoice.minilm.value
    names = {ModelChoice(n.strip()) for n in models.split(",") if n.strip()}
    paths = {n.value: provision(settings, n) for n in ModelChoice if n in names}
    emit_json(run_bench(settings, paths, err, dataset, quick=quick, profile=profile), out)


@app.command("bench-faults")
def bench_faults(
    out: Annotated[Path | None, typer.Option(help="Also write the JSON here.")] = None,
    scenarios: Annotated[
        str, typer.Option(help="Comma-separated scenario names (default: all).")
    ] = "",
    hostile: Annotated[int, typer.Option(help="Hostile messages to send.")] = 10_000,
    quick: Annotated[
        bool, typer.Option(help="The quick draw make test runs (faults.QUICK), not FULL.")
    ] = False,
) -> None:
    """Faults on real processes (kill -9 workers, Redis and Postgres outages, hostile
    messages): sent, scored, lost, duplicated, crashed (JSON; see tools/faults.py), at the
    full sizes (``make test`` runs a smaller draw of the same scenarios)."""
    worker_env()
    from dataclasses import replace

    from tools.faults import FULL, QUICK, report
    from tools.postgres import pgvector_settings

    settings, database = pgvector_settings(get_settings(), "postgres")
    err.print(database)
    names = [n.strip() for n in scenarios.split(",") if n.strip()] or None
    size = QUICK if quick else replace(FULL, hostile=hostile)
    result = report(settings, provision(settings, ModelChoice.minilm), err, names, size)
    emit_json(result, out)
    totals = result["totals"]
    raise typer.Exit(1 if totals["lost"] or totals["duplicated"] or totals["crashed"] else 0)


@app.command("bench-scale")
def bench_scale(
    dataset: Annotated[Path, typer.Option(exists=True, dir_okay=False)] = Path(
        "../shared/data/resume-job/resume_data.csv"
    ),
    quick: Annotated[bool, typer.Option(help="Small sizes (a check of the bench).")] = False,
    budget_s: Annotated[
        float, typer.Option(help="Stop before a size that would pass this many seconds.")
    ] = 2400.0,
    out: Annotated[Path | None, typer.Option(help="Also write the JSON here.")] = None,
    noise: Annotated[
        str,
        typer.Option(
            help="real: drawn with the real vectors' covariance; isotropic: over all"
            " dimensions (a stress case). tools/scale.py."
        ),
    ] = "real",
    index_method: Annotated[
        str, typer.Option(help="ivfflat (the default) or hnsw: the entry index measured.")
    ] = "ivfflat",
    sizes: Annotated[
        str | None,
        typer.Option(help="RESUMESxJOBS, comma-separated, instead of 10k/100k/1M resumes."),
    ] = None,
    hnsw_m: Annotated[
        int | None, typer.Option(help="HNSW graph degree (with --index-method hnsw).")
    ] = None,
    hnsw_ef_construction: Annotated[
        int | None, typer.Option(help="HNSW build breadth (with --index-method hnsw).")
    ] = None,
) -> None:
    """Top-K retrieval at 10k to 1M resumes (vectors around the real dataset's, written
    directly): time and rows per ingested document, query latency, recall against exact
    scoring, bytes per document, index build (JSON; see tools/scale.py)."""
    worker_env()
    from jobfit.workers.provision import minilm_path
    from tools.postgres import pgvector_settings
    from tools.scale import NOISE_MODELS, parse_sizes, run

    if noise not in NOISE_MODELS:
        raise typer.BadParameter(f"--noise must be one of {', '.join(NOISE_MODELS)}")
    if index_method not in ("ivfflat", "hnsw"):
        raise typer.BadParameter("--index-method must be ivfflat or hnsw")
    graph = {
        k: v
        for k, v in (("hnsw_m", hnsw_m), ("hnsw_ef_construction", hnsw_ef_construction))
        if v is not None
    }
    if graph and index_method != "hnsw":
        raise typer.BadParameter("--hnsw-m and --hnsw-ef-construction need --index-method hnsw")
    try:
        ScoringSettings(index_method="hnsw", **graph)
    except ValidationError as e:
        raise typer.BadParameter(str(e)) from e
    if sizes is not None and quick:
        raise typer.BadParameter("--sizes and --quick: give one")
    try:
        steps = parse_sizes(sizes) if sizes is not None else None
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    settings, database = pgvector_settings(get_settings(), "postgres")
    err.print(database)
    report = run(
        settings,
        minilm_path(),
        dataset,
        err,
        quick=quick,
        budget_s=budget_s,
        noise=noise,
        index_method=index_method,
        sizes=steps,
        graph=graph,
    )
    emit_json(report, out)


postgres_app = typer.Typer(help="The embedded Postgres with pgvector (tools/postgres.py).")
app.add_typer(postgres_app, name="postgres")


@postgres_app.command("start")
def postgres_start() -> None:
    """Start the project's embedded Postgres (.jobfit/postgres) and print its URL; it keeps
    running until `python -m tools postgres stop`."""
    from tools.postgres import start

    sys.stdout.write(start(keep_running=True) + "\n")


@postgres_app.command("stop")
def postgres_stop() -> None:
    """Stop the project's embedded Postgres."""
    from tools.postgres import stop

    err.print("stopped" if stop() else "not running")


@app.command("bench-quality")
def bench_quality(
    csv: Annotated[Path, typer.Option(exists=True, dir_okay=False)] = Path(
        "../shared/data/resume-job/resume_data.csv"
    ),
    models: Annotated[str, typer.Option(help="Comma-separated: minilm, mpnet, or paths.")] = (
        "minilm"
    ),
    mode: Annotated[str, typer.Option(help="head, full or full+head.")] = "head",
    epochs: Annotated[int, typer.Option(help="Full fine-tune epochs.")] = 1,
    max_steps: Annotated[int, typer.Option()] = -1,
    splits: Annotated[str, typer.Option(help="resume,job")] = "resume,job",
    pairs: Annotated[
        str | None, typer.Option(help="Comma-separated pair types (default: all).")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            help="A TrainParams field, NAME=VALUE (repeatable), e.g. head_val_fraction=0.2."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda")] = "auto",
    time_budget_s: Annotated[float | None, typer.Option()] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the JSON here.")] = None,
) -> None:
    """Untuned vs fine-tuned ranking quality on held-out resumes and jobs (JSON out)."""
    worker_env()
    from jobfit.shared.config import PairType
    from jobfit.shared.model_store import model_name
    from jobfit.workers.embedders.base import resolve_device
    from jobfit.workers.training.trainers import TrainParams
    from tools.quality import QualityRun, run_quality, train_params

    def resolve(name: str) -> Path:
        if name == "minilm":
            from jobfit.workers.provision import minilm_path

            return minilm_path()
        if name == "mpnet":
            return get_settings().model.store / "all-mpnet-base-v2"
        return Path(name)

    names = {"minilm": "all-MiniLM-L6-v2", "mpnet": "all-mpnet-base-v2"}
    runs = []
    for name in (n.strip() for n in models.split(",")):
        path = resolve(name)
        params = train_params(
            TrainParams(mode=mode, epochs=epochs, max_steps=max_steps),  # type: ignore[arg-type]
            param or [],
        )
        runs.append(QualityRun(names.get(name, model_name(path)), path, params.mode, params))
    last = [0.0]

    def progress(stage: str, done: int, total: int, **info: Any) -> None:
        if time.monotonic() - last[0] > 10 or done == total:
            last[0] = time.monotonic()
            err.print(f"{stage} {done}/{total} {info}")

    result = run_quality(
        csv,
        runs,
        splits=[s.strip() for s in splits.split(",")],  # type: ignore[misc]
        pairs=None if pairs is None else [PairType(p.strip()) for p in pairs.split(",")],
        device=resolve_device(device),
        time_budget_s=time_budget_s,
        progress=progress,
    )
    emit_json(result, out)


@data_app.command("make-sample")
def make_sample(
    csv: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option()] = Path("shared/sample"),
    resumes: Annotated[int, typer.Option()] = 30,
    seed: Annotated[int, typer.Option()] = 42,
) -> None:
    """Derive the bundled demo sample from the real dataset."""
    from tools.dataset import read_dataset, sample, write_sample

    data = sample(read_dataset(csv), n_resumes=resumes, seed=seed)
    write_sample(data, out)
    err.print(f"{len(data.resumes)} resumes, {len(data.jobs)} jobs, {len(data.labels)} labels")


@data_app.command("import-resume-dataset")
def import_resume_dataset(
    csv: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
) -> None:
    """Store the real dataset's resumes, jobs and match labels (idempotent)."""
    from jobfit.shared import repository as repo
    from jobfit.shared.db import connect, transaction
    from jobfit.shared.schemas import JobDocument, ResumeDocument
    from tools.dataset import read_dataset

    data = read_dataset(csv)
    factory = connect(get_settings())
    counts = {"created": 0, "updated": 0, "unchanged": 0, "stale": 0}
    with progress_bar() as bar:
        docs: list[ResumeDocument | JobDocument] = [*data.resumes, *data.jobs]
        task = bar.add_task("documents", total=len(docs))
        for start in range(0, len(docs), 200):
            with transaction(factory) as session:
                for doc in docs[start : start + 200]:
                    _, status = repo.upsert_document(session=session, doc=doc)
                    counts[status] += 1
            bar.advance(task, min(200, len(docs) - start))
        with transaction(factory) as session:
            n = repo.upsert_labels(
                session=session,
                labels=[repo.LabelIn(lb.resume_id, lb.job_id, lb.score) for lb in data.labels],
                source=f"dataset:{csv.name}",
            )
    err.print(
        f"{len(data.resumes)} resumes, {len(data.jobs)} jobs ({counts}), {n} labels stored; "
        "score them with `jobfit rescore`"
    )


def main() -> None:
    app()

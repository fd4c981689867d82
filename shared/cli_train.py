"""``jobfit`` commands for training data, retraining, evaluation and the model registry."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from jobfit.shared.config import get_settings
from jobfit.shared.console import console, err, progress_bar, worker_env

models_app = typer.Typer(
    help="The model registry: versions, metrics, which is active.", invoke_without_command=True
)

SplitOpt = Annotated[str, typer.Option(help="Evaluation split: resume or job (held out).")]


def _factory() -> Any:
    from jobfit.shared.db import make_engine, make_session_factory

    return make_session_factory(make_engine(get_settings()))


def wait_with_progress(result: Any, what: str, timeout_s: float = 24 * 3600) -> dict[str, Any]:
    """Follow a task's PROGRESS state as a progress bar until it ends; return its result."""
    t0 = time.monotonic()
    with progress_bar() as bar:
        task = bar.add_task(f"{what}: queued", total=None)
        while not result.ready():
            if time.monotonic() - t0 > timeout_s:
                raise typer.Exit(3)
            info = result.info if result.state == "PROGRESS" else None
            if isinstance(info, dict):
                extra = " ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in info.items()
                    if k in {"epoch", "loss", "eta_s"} and v is not None
                )
                bar.update(
                    task,
                    description=f"{what}: {info.get('stage', '')} {extra}".rstrip(),
                    completed=info.get("done", 0),
                    total=info.get("total") or None,
                )
            elif result.state == "STARTED":
                bar.update(task, description=f"{what}: started")
            time.sleep(0.5)
    out = result.get(propagate=False)
    if result.failed():
        err.print(f"[red]{what} failed:[/red] {out!r}")
        raise typer.Exit(1)
    return out if isinstance(out, dict) else {"result": out}


def _print_result(out: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(out, indent=2, default=str) + "\n")


def retrain(
    mode: Annotated[
        str | None, typer.Option(help="head (CPU, minutes), full or full+head (GPU).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Full fine-tune epochs.")] = None,
    max_steps: Annotated[int, typer.Option(help="Cap on fine-tune steps (-1: none).")] = -1,
    head_epochs: Annotated[int | None, typer.Option(help="Head training epochs.")] = None,
    split: SplitOpt = "resume",
    base_version: Annotated[str | None, typer.Option(help="Start from this version.")] = None,
    promote: Annotated[bool, typer.Option(help="Promote it if it wins.")] = True,
    margin: Annotated[float | None, typer.Option(help="Promotion margin (Spearman).")] = None,
    wait: Annotated[bool, typer.Option(help="Follow progress until it ends.")] = False,
) -> None:
    """Queue a retraining on the train queue (a `jobfit worker --queues train` runs it)."""
    from jobfit.shared.client import InvalidMessageError, JobfitClient

    request: dict[str, Any] = {
        "mode": mode,
        "epochs": epochs,
        "max_steps": max_steps,
        "head_epochs": head_epochs,
        "split": split,
        "base_version": base_version,
        "promote": promote,
        "promote_margin": margin,
    }
    try:
        result = JobfitClient(get_settings()).retrain(**request)
    except InvalidMessageError as exc:
        err.print(f"[red]invalid request:[/red] {exc}")
        raise typer.Exit(2) from exc
    err.print(f"retrain queued: task {result.id}")
    if wait:
        _print_result(wait_with_progress(result, "retrain"))


def evaluate(
    version: Annotated[str | None, typer.Argument(help="Default: the active version.")] = None,
    split: SplitOpt = "resume",
    wait: Annotated[bool, typer.Option(help="Follow progress until it ends.")] = True,
) -> None:
    """Evaluate a model version on the stored evaluation split (train queue)."""
    from jobfit.shared.client import JobfitClient

    result = JobfitClient(get_settings()).evaluate(version, split)
    err.print(f"evaluation queued: task {result.id}")
    if wait:
        _print_result(wait_with_progress(result, "evaluate"))


def rescore(
    wait: Annotated[bool, typer.Option(help="Follow progress until it ends.")] = True,
) -> None:
    """Rescore every stored match with the active version (embed queue)."""
    from jobfit.shared.client import JobfitClient

    result = JobfitClient(get_settings()).rescore()
    if wait:
        _print_result(wait_with_progress(result, "rescore"))


def models_table(rows: list[Any], split: str = "resume") -> Table:
    table = Table(title="model versions")
    for col in ("version", "status", "parent", "mode", "match ρ", "pair ρ", "NDCG@10", "error"):
        table.add_column(col)
    for r in rows:
        metrics = [m for k, m in sorted((r.metrics or {}).items()) if k.startswith(f"{split}:")]
        latest: dict[str, Any] = max(
            metrics, key=lambda m: str(m.get("evaluated_at", "")), default={}
        )

        def fmt(key: str, m: dict[str, Any] = latest) -> str:
            v = m.get(key)
            return f"{v:.4f}" if isinstance(v, float) else "-"

        table.add_row(
            r.version,
            ("[bold green]active[/]" if r.status == "active" else r.status),
            r.parent_version or "-",
            str((r.params or {}).get("mode", "base")),
            fmt("match_spearman"),
            fmt("pair_spearman"),
            fmt("ndcg_at_10"),
            (r.last_error or "")[:60],
        )
    return table


@models_app.callback()
def models(ctx: typer.Context, split: SplitOpt = "resume") -> None:
    """List model versions with their latest metrics and which one is active."""
    if ctx.invoked_subcommand is not None:
        return
    from jobfit.workers.retraining import version_rows

    console.print(models_table(version_rows(_factory()), split))


@models_app.command("promote")
def models_promote(version: str) -> None:
    """Make VERSION the active one by hand (embed workers switch within seconds)."""
    from jobfit.shared import registry
    from jobfit.shared.db import transaction

    try:
        with transaction(_factory()) as session:
            row = registry.get_version(session=session, version=version)
            from jobfit.workers.model import check_model_dir

            check_model_dir(Path(row.path))
            previous, _ = registry.promote(session=session, version=version)
    except (LookupError, RuntimeError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    err.print(f"active: {version} (was {previous})")


@models_app.command("rollback")
def models_rollback(
    version: Annotated[str | None, typer.Argument(help="Default: the previous active.")] = None,
) -> None:
    """Make the previously active version (or VERSION) active again."""
    from jobfit.shared import registry
    from jobfit.shared.db import transaction

    with transaction(_factory()) as session:
        target = version or registry.previous_active(session=session)
    if target is None:
        err.print("[red]error:[/red] no previous active version")
        raise typer.Exit(2)
    models_promote(target)


def import_resume_dataset(
    csv: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
) -> None:
    """Store the real dataset's resumes, jobs and match labels (idempotent)."""
    from jobfit.shared import registry
    from jobfit.shared import repository as repo
    from jobfit.shared.db import transaction
    from jobfit.shared.schemas import JobDocument, ResumeDocument
    from jobfit.workers.dataset import read_dataset

    data = read_dataset(csv)
    factory = _factory()
    counts = {"created": 0, "updated": 0, "unchanged": 0}
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
            n = registry.upsert_labels(
                session=session,
                labels=[registry.LabelIn(lb.resume_id, lb.job_id, lb.score) for lb in data.labels],
                source=f"dataset:{csv.name}",
            )
    err.print(
        f"{len(data.resumes)} resumes, {len(data.jobs)} jobs ({counts}), {n} labels stored; "
        "score them with `jobfit rescore`"
    )


def import_pairs(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="CSV or JSONL")],
) -> None:
    """Store generic field-pair examples (sentence_0, sentence_1, label) for training."""
    from jobfit.shared import registry
    from jobfit.shared.db import transaction
    from jobfit.workers.training import read_pair_file

    try:
        pairs = read_pair_file(file)
    except ValueError as exc:
        err.print(f"[red]invalid pair file:[/red] {exc}")
        raise typer.Exit(2) from exc
    with transaction(_factory()) as session:
        n = registry.upsert_pair_labels(session=session, pairs=pairs, source=f"file:{file.name}")
    err.print(f"{n} pair examples stored")


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
    device: Annotated[str, typer.Option(help="auto, cpu, cuda")] = "auto",
    time_budget_s: Annotated[float | None, typer.Option()] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the JSON here.")] = None,
) -> None:
    """Untuned vs fine-tuned ranking quality on held-out resumes and jobs (JSON out)."""
    worker_env()
    from jobfit.workers.model import model_name, resolve_device
    from jobfit.workers.quality import QualityRun, run_quality
    from jobfit.workers.training import TrainParams

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
        params = TrainParams(mode=mode, epochs=epochs, max_steps=max_steps)  # type: ignore[arg-type]
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
        device=resolve_device(device),
        time_budget_s=time_budget_s,
        progress=progress,
    )
    text = json.dumps(result, indent=2)
    if out:
        out.write_text(text + "\n", encoding="utf-8")
    sys.stdout.write(text + "\n")


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    app.command()(retrain)
    app.command()(evaluate)
    app.command()(rescore)
    app.command("bench-quality")(bench_quality)
    app.add_typer(models_app, name="models")
    data_app.command("import-resume-dataset")(import_resume_dataset)
    data_app.command("import-pairs")(import_pairs)

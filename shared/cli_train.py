"""``jobfit`` commands for retraining, evaluation, rescoring and the model registry: requests
sent to the workers, and the registry read and changed in Postgres (no model needed)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from jobfit.shared.celery_app import EMBED_QUEUE, TRAIN_QUEUE
from jobfit.shared.config import get_settings
from jobfit.shared.console import console, err, progress_bar

models_app = typer.Typer(
    help="The model registry: versions, metrics, which is active.", invoke_without_command=True
)

SplitOpt = Annotated[str, typer.Option(help="Evaluation split: resume or job (held out).")]


def require_consumer(queue: str) -> None:
    """Exit with the fix if no running worker consumes ``queue`` (a request would wait there
    for one, silently)."""
    from jobfit.shared.celery_app import create_celery_app
    from jobfit.shared.cli import fail

    app = create_celery_app(get_settings(), with_tasks=False)
    replies = app.control.inspect(timeout=2.0).active_queues() or {}
    if not any(q.get("name") == queue for qs in replies.values() for q in qs or []):
        fail(
            f"no running worker consumes the {queue} queue (the request stays queued)",
            f"start one: `jobfit worker --queues {queue}`",
        )


def require_labels() -> None:
    """Exit with the fix if no labels are stored: retraining and evaluation need them."""
    from jobfit.shared import repository as repo
    from jobfit.shared.cli import fail
    from jobfit.shared.db import connect

    with connect(get_settings())() as session:
        n = repo.label_count(session=session) + repo.pair_label_count(session=session)
    if n == 0:
        fail(
            "no labels stored: nothing to train or evaluate on",
            "send labels (client.submit_label), `jobfit data import-pairs FILE`, or"
            " `python -m tools data import-resume-dataset CSV`",
        )


def wait_with_progress(
    result: Any, what: str, queue: str | None = None, timeout_s: float = 24 * 3600
) -> dict[str, Any]:
    """Follow a task's PROGRESS state as a progress bar until it ends; return its result
    (exit 1 if it failed or was rejected)."""
    if queue is not None and result.state == "PENDING":
        require_consumer(queue)
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
    from jobfit.shared.cli import outcome

    out = result.get(propagate=False)
    if result.failed():
        reason = out if outcome(out) == "rejected" else repr(out)
        err.print(f"[red]{what} {outcome(out)}:[/red] {reason}", highlight=False)
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
    time_budget_s: Annotated[
        float | None, typer.Option(help="Stop the full fine-tune after this many seconds.")
    ] = None,
    head_epochs: Annotated[int | None, typer.Option(help="Head training epochs.")] = None,
    split: SplitOpt = "resume",
    base_version: Annotated[str | None, typer.Option(help="Start from this version.")] = None,
    promote: Annotated[bool, typer.Option(help="Promote it if it wins.")] = True,
    margin: Annotated[float | None, typer.Option(help="Promotion margin (Spearman).")] = None,
    wait: Annotated[bool, typer.Option(help="Follow progress until it ends.")] = False,
) -> None:
    """Queue a retraining on the train queue (a `jobfit worker --queues train` runs it)."""
    from jobfit.shared.client import JobfitClient
    from jobfit.shared.schemas import InvalidMessageError

    request: dict[str, Any] = {
        "mode": mode,
        "epochs": epochs,
        "max_steps": max_steps,
        "time_budget_s": time_budget_s,
        "head_epochs": head_epochs,
        "split": split,
        "base_version": base_version,
        "promote": promote,
        "promote_margin": margin,
    }
    require_labels()
    try:
        result = JobfitClient(get_settings()).retrain(**request)
    except InvalidMessageError as exc:
        err.print(f"[red]invalid request:[/red] {exc}")
        raise typer.Exit(2) from exc
    err.print(f"retrain queued: task {result.id}")
    if wait:
        _print_result(wait_with_progress(result, "retrain", TRAIN_QUEUE))


def evaluate(
    version: Annotated[str | None, typer.Argument(help="Default: the active version.")] = None,
    split: SplitOpt = "resume",
    wait: Annotated[bool, typer.Option(help="Follow progress until it ends.")] = True,
) -> None:
    """Evaluate a model version on the stored evaluation split (train queue)."""
    from jobfit.shared.client import JobfitClient

    require_labels()
    result = JobfitClient(get_settings()).evaluate(version, split)
    err.print(f"evaluation queued: task {result.id}")
    if wait:
        _print_result(wait_with_progress(result, "evaluate", TRAIN_QUEUE))


def rescore(
    wait: Annotated[bool, typer.Option(help="Follow progress until it ends.")] = True,
) -> None:
    """Rescore every stored match with the active version (embed queue)."""
    from jobfit.shared.client import JobfitClient

    result = JobfitClient(get_settings()).rescore()
    if wait:
        _print_result(wait_with_progress(result, "rescore", EMBED_QUEUE))


def _weights_cell(weights: dict[str, float] | None) -> str:
    """A version's stored pair weights (equal when it has none); JOBFIT_SCORING__WEIGHTS,
    where set, overrides them in the workers."""
    if not weights:
        return "equal"
    return " ".join(f"{k}={v:.2f}" for k, v in weights.items())


def _promotion_cell(decision: dict[str, Any] | None) -> str:
    if not decision:
        return "-"
    if decision.get("promoted"):
        return "promoted"
    return "refused by " + ", ".join(decision.get("refused_by") or ["-"])


def models_table(rows: list[Any], split: str = "resume") -> Table:
    table = Table(title="model versions")
    cols = ("version", "status", "parent", "mode", "match ρ", "pair ρ", "NDCG@10", "pair weights")
    for col in (*cols, "promotion", "error"):
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
            _weights_cell((r.params or {}).get("pair_weights")),
            _promotion_cell((r.params or {}).get("promotion")),
            (r.last_error or "")[:60],
        )
    return table


@models_app.callback()
def models(ctx: typer.Context, split: SplitOpt = "resume") -> None:
    """List model versions with their latest metrics and which one is active."""
    if ctx.invoked_subcommand is not None:
        return
    from jobfit.shared import repository as repo
    from jobfit.shared.db import connect, transaction

    with transaction(connect(get_settings())) as session:
        rows = repo.list_versions(session=session)
        session.expunge_all()
    console.print(models_table(rows, split))


@models_app.command("promote")
def models_promote(version: str) -> None:
    """Make VERSION the active one by hand (embed workers switch within seconds)."""
    from jobfit.shared import repository as repo
    from jobfit.shared.db import connect, transaction
    from jobfit.shared.model_store import check_model_dir

    try:
        with transaction(connect(get_settings())) as session:
            row = repo.get_version(session=session, version=version)
            check_model_dir(Path(row.path))
            previous, _ = repo.promote(session=session, version=version)
    except (LookupError, RuntimeError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    err.print(f"active: {version} (was {previous})")


@models_app.command("rollback")
def models_rollback(
    version: Annotated[str | None, typer.Argument(help="Default: the previous active.")] = None,
) -> None:
    """Make the previously active version (or VERSION) active again."""
    from jobfit.shared import repository as repo
    from jobfit.shared.db import connect, transaction

    with transaction(connect(get_settings())) as session:
        target = version or repo.previous_active(session=session)
    if target is None:
        err.print("[red]error:[/red] no previous active version")
        raise typer.Exit(2)
    models_promote(target)


def register(app: typer.Typer) -> None:
    app.command()(retrain)
    app.command()(evaluate)
    app.command()(rescore)
    app.add_typer(models_app, name="models")

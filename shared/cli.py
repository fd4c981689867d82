"""The producer side of the ``jobfit`` command: send documents and requests, read rankings,
the schema, the database, the registry, health. Nothing here needs numpy or torch: this is
what ``pip install jobfit`` (no extras) runs. ``jobfit.cli`` adds the worker-side commands
where the worker extra is installed."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from jobfit.shared.config import PairType, get_settings
from jobfit.shared.console import console, err, progress_bar

app = typer.Typer(help="Score how well resumes fit jobs, on Celery workers.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema (Alembic).", no_args_is_help=True)
app.add_typer(db_app, name="db")


class Kind(StrEnum):
    resume = "resume"
    job = "job"


@app.command()
def submit(
    kind: Annotated[Kind, typer.Argument(help="resume or job")],
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSON or JSONL")],
    score: Annotated[bool, typer.Option(help="Score against the other side.")] = True,
    wait: Annotated[bool, typer.Option(help="Wait until the workers are done.")] = False,
) -> None:
    """Validate documents from FILE and enqueue them (every one is checked before any is sent)."""
    from jobfit.shared.client import JobfitClient, read_documents
    from jobfit.shared.schemas import (
        InvalidMessageError,
        JobDocument,
        ResumeDocument,
        validate_message,
    )

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
    from jobfit.shared.db import connect

    with connect(get_settings())() as session:
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

register(app)

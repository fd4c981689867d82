"""The producer side of the ``jobfit`` command: send documents and requests, read rankings,
the schema, the database, the registry, health. Nothing here needs numpy or torch: this is
what ``pip install jobfit`` (no extras) runs. ``jobfit.cli`` adds the worker-side commands
where the worker extra is installed."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

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


@app.callback()
def options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
) -> None:
    """Score how well resumes fit jobs, on Celery workers."""
    STATE["debug"] = debug


STATE: dict[str, Any] = {"debug": False}


@app.command()
def submit(
    kind: Annotated[Kind, typer.Argument(help="resume or job")],
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSON or JSONL")],
    score: Annotated[bool, typer.Option(help="Score against the other side.")] = True,
    wait: Annotated[bool, typer.Option(help="Wait until the workers are done.")] = False,
) -> None:
    """Validate documents from FILE and enqueue them (every one is checked before any is
    sent). With --wait: counts per outcome, exit 1 if a worker rejected any."""
    from collections import Counter

    from jobfit.shared.client import JobfitClient, numbered_documents
    from jobfit.shared.health import check_broker
    from jobfit.shared.schemas import (
        InvalidMessageError,
        JobDocument,
        ResumeDocument,
        validate_message,
    )

    model: type[ResumeDocument] | type[JobDocument] = (
        ResumeDocument if kind is Kind.resume else JobDocument
    )
    docs: list[Any] = []
    invalid = []
    for where, raw in numbered_documents(file):
        try:
            if isinstance(raw, InvalidMessageError):
                raise raw
            docs.append(validate_message(model, raw))
        except InvalidMessageError as exc:
            doc_id = raw.get("id") if isinstance(raw, dict) else None
            invalid.append(f"{file}:{where} (id {doc_id!r}): {exc}")
    if invalid:
        for line in invalid:
            err.print(f"[red]invalid {kind.value}:[/red] {line}", highlight=False)
        err.print(f"{len(invalid)} invalid of {len(invalid) + len(docs)}: nothing sent")
        raise typer.Exit(2)
    settings = get_settings()
    broker = check_broker(settings)
    if not broker.ok:
        fail(f"broker {broker.detail}", "check JOBFIT_BROKER__URL and that the broker runs")
    client = JobfitClient(settings)
    send: Any = client.submit_resume if kind is Kind.resume else client.submit_job
    outcomes: Counter[str] = Counter()
    with progress_bar() as bar:
        task = bar.add_task(f"sending {kind.value}s", total=len(docs))
        results = []
        for doc in docs:
            results.append(send(doc, score=score))
            bar.advance(task)
        if wait:
            done = bar.add_task("done", total=len(results))
            for r in results:
                outcomes[outcome(r.get(timeout=3600, propagate=False))] += 1
                bar.advance(done)
    err.print(f"sent {len(docs)} {kind.value}(s)")
    if wait:
        err.print(", ".join(f"{n} {status}" for status, n in sorted(outcomes.items())))
        if outcomes["rejected"] or outcomes["failed"]:
            err.print("see why: `jobfit failures`")
            raise typer.Exit(1)


def outcome(result: Any) -> str:
    """What became of one message, from its task's result: its status, ``rejected`` (the
    worker refused it: ``MessageRejectedError``) or ``failed``."""
    from jobfit.shared.schemas import MessageRejectedError

    if isinstance(result, MessageRejectedError):
        return "rejected"
    if isinstance(result, dict):
        return str(result.get("status", "?"))
    return "failed"


def fail(cause: str, fix: str, code: int = 1) -> NoReturn:
    """One line with the cause and the fix, then exit ``code``."""
    err.print(f"[red]error:[/red] {cause} — {fix}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _print_ranked(resume_id: str | None, job_id: str | None, top: int, version: str | None) -> None:
    from jobfit.shared.client import JobfitClient

    client = JobfitClient(get_settings())
    try:
        if resume_id is not None:
            rows = client.top_jobs(resume_id, top, version=version)
        else:
            rows = client.top_candidates(str(job_id), top, version=version)
    finally:
        client.close()
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
        str | None, typer.Option(help="Default: the active one (once it has scored it).")
    ] = None,
) -> None:
    """Best jobs for a resume, with per-pair scores."""
    _print_ranked(resume_id, None, top, model_version)


@app.command()
def candidates(
    job_id: str,
    top: Annotated[int, typer.Option(help="How many resumes.")] = 10,
    model_version: Annotated[
        str | None, typer.Option(help="Default: the active one (once it has scored it).")
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
def db_upgrade(
    revision: str = "head",
    grant: Annotated[
        bool, typer.Option("--grant", help="Then `jobfit db grant` (what compose runs).")
    ] = False,
) -> None:
    """Create the database if missing and migrate it to REVISION."""
    from jobfit.shared.db import ensure_database, upgrade

    settings = get_settings()
    if ensure_database(settings.db.url):
        err.print("created the database")
    upgrade(settings, revision)
    err.print(f"database at {revision}")
    if grant:
        db_grant()


@db_app.command("grant")
def db_grant() -> None:
    """Create or update the workers' writer role (JOBFIT_DB__WRITER_URL) and the read path's
    reader role (JOBFIT_DB__READ_URL) and give each exactly its privileges, connected as the
    tables' owner (JOBFIT_DB__URL). Idempotent: run it after every upgrade."""
    import psycopg
    from sqlalchemy.exc import DBAPIError

    from jobfit.shared.roles import Role, RoleError, grant_roles

    db = get_settings().db
    try:
        roles = []
        if db.writer_url is not None:
            roles.append(Role.from_url("writer", db.writer_url))
        if db.read_url is not None:
            roles.append(Role.from_url("reader", db.read_url))
        if not roles:
            fail("no role to grant", "set JOBFIT_DB__WRITER_URL and/or JOBFIT_DB__READ_URL", 2)
        for line in grant_roles(db.url, roles):
            err.print(line, highlight=False)
    except RoleError as exc:
        fail(str(exc), 'see README "Deploy": least privilege', 2)
    except (psycopg.Error, DBAPIError) as exc:
        cause = exc.orig if isinstance(exc, DBAPIError) else exc
        fail(
            f"granting failed: {(str(cause).strip().splitlines() or [type(cause).__name__])[0]}",
            "run it as the tables' owner (the role of `jobfit db upgrade`), with CREATEROLE",
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


@app.command()
def failures(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    task: Annotated[str | None, typer.Option(help="Only this task name.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
) -> None:
    """Messages the workers refused or gave up on (failed_messages), newest first: time,
    task, reason and the start of the payload."""
    from jobfit.shared import repository as repo
    from jobfit.shared.db import connect

    with connect(get_settings())() as session:
        rows = repo.list_failed_messages(session=session, limit=limit, task_name=task)
    if as_json:
        for r in rows:
            item = {
                "time": r.created_at.isoformat(),
                "task": r.task_name,
                "task_id": r.task_id,
                "reason": r.reason,
                "payload": r.payload[:PAYLOAD_EXCERPT],
            }
            sys.stdout.write(json.dumps(item) + "\n")
        return
    if not rows:
        err.print("no failed messages")
        return
    table = Table(title=f"failed messages (newest {len(rows)})")
    for col in ("time", "task", "reason", "payload"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            r.task_name or "—",
            r.reason[:200],
            r.payload[:PAYLOAD_EXCERPT],
        )
    console.print(table)


PAYLOAD_EXCERPT = 120


@app.command()
def metrics(
    port: Annotated[int | None, typer.Option(help="Default: JOBFIT_METRICS__PORT (9808).")] = None,
    address: Annotated[str | None, typer.Option(help="Default: JOBFIT_METRICS__ADDRESS.")] = None,
) -> None:
    """Serve jobfit's Prometheus metrics at /metrics: queue depths, the active model version,
    failed messages by reason, matches scored, texts embedded (read at each scrape)."""
    import threading

    from prometheus_client import REGISTRY, start_http_server

    from jobfit.shared.celery_app import create_celery_app
    from jobfit.shared.db import connect
    from jobfit.shared.metrics import JobfitCollector

    settings = get_settings()
    app_ = create_celery_app(settings, with_tasks=False)
    REGISTRY.register(JobfitCollector(app_, connect(settings, reader=True)))
    port = port or settings.metrics.port
    address = address or settings.metrics.address
    start_http_server(port, addr=address)
    err.print(f"serving jobfit metrics on http://{address}:{port}/metrics")
    threading.Event().wait()


from jobfit.shared.cli_train import register  # noqa: E402  (its commands use the helpers above)

register(app)

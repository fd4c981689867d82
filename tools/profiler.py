"""``python -m tools.profiler OUT.prof -- worker --queues embed …``: the ``jobfit`` command
under cProfile, every thread profiled (an embed worker runs its batches in a work thread beside
the event loop, which the plain ``python -m cProfile`` would not see), the merged stats
written to ``OUT.prof`` when the process exits (a warm shutdown: SIGTERM).

``per_message`` reads such a file: where a worker's time went, in milliseconds per message,
for the functions of the ingest path (``make bench``'s ceiling run, ``--profile``).
"""

from __future__ import annotations

import atexit
import cProfile
import pstats
import sys
import threading
from pathlib import Path
from typing import Any

# What one message costs, stage by stage: (label, module path suffix, function name). The
# figures are cumulative (a stage includes what it calls) and wall time (waits included).
STAGES = (
    ("receive (strategy, on the loop)", "tasks/consumer.py", "on_message"),
    ("acknowledge (on the loop)", "tasks/consumer.py", "on_return"),
    ("batch, in all (work thread)", "tasks/ingest.py", "run_batch"),
    ("  parse and validate", "tasks/ingest.py", "parse"),
    ("  task events", "tasks/ingest.py", "_events"),
    ("  count deliveries (triage)", "tasks/delivery.py", "triage"),
    ("  ingest (store, embed, commit)", "workers/service.py", "ingest_batch"),
    ("    encode", "workers/embedders/base.py", "encode"),
    ("  results", "tasks/ingest.py", "_answer_all"),
    ("  metrics", "tasks/ingest.py", "_count"),
)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] != "--":
        raise SystemExit("usage: python -m tools.profiler OUT.prof -- JOBFIT_ARGS…")
    out, args = Path(argv[0]), argv[2:]
    profiles: list[cProfile.Profile] = []
    start = threading.Thread.run

    def profiled_run(self: threading.Thread) -> None:
        profile = cProfile.Profile()
        profiles.append(profile)
        profile.enable()
        try:
            start(self)
        finally:
            profile.disable()

    threading.Thread.run = profiled_run  # type: ignore[method-assign]
    main_profile = cProfile.Profile()
    profiles.append(main_profile)

    def dump() -> None:
        main_profile.disable()
        pstats.Stats(*profiles).dump_stats(str(out))

    atexit.register(dump)
    from jobfit.cli import main as jobfit_main

    sys.argv = ["jobfit", *args]
    main_profile.enable()
    jobfit_main()


def per_message(path: Path, messages: int) -> dict[str, Any]:
    """Milliseconds per message of each stage of ``STAGES`` (cumulative wall time in the
    profile / ``messages``), with how often each ran."""
    loaded: Any = pstats.Stats(str(path))
    stats: dict[Any, Any] = loaded.stats
    out: dict[str, Any] = {}
    for label, module, name in STAGES:
        hits = [
            (calls, cumulative)
            for (filename, _, func), (_, calls, _, cumulative, _) in stats.items()
            if func == name and filename.endswith(module)
        ]
        calls = sum(c for c, _ in hits)
        seconds = sum(t for _, t in hits)
        out[label.strip()] = {"ms_per_message": round(1000 * seconds / messages, 3), "calls": calls}
    return out


if __name__ == "__main__":
    main(sys.argv[1:])

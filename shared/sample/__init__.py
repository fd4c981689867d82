"""The bundled sample (30 resumes, 28 jobs, 816 labels from the real dataset; see README.md
here): the demo's input and the fixed check set that a backend is judged on."""

from __future__ import annotations

import csv
from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent
RESUMES = SAMPLE_DIR / "resumes.jsonl"
JOBS = SAMPLE_DIR / "jobs.jsonl"
LABELS = SAMPLE_DIR / "labels.csv"


def load_labels(path: Path = LABELS) -> dict[tuple[str, str], float]:
    """(resume id, job id) -> matched_score from a labels CSV (empty if there is none)."""
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as fh:
        return {
            (r["resume_id"], r["job_id"]): float(r["matched_score"]) for r in csv.DictReader(fh)
        }

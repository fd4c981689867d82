"""The real resume x job dataset (``resume_data.csv``) as jobfit documents and labels.

Rows are (resume, job) pairs; a resume is identified by its resume-side columns and a job by
its job-side columns, and each gets a stable, content-derived id. The resume-side
``responsibilities`` column is a copy of the job's (see PROVENANCE.md) and is not resume text.
"""

from __future__ import annotations

import ast
import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobfit.shared.schemas import JobDocument, ResumeDocument

RESUME_COLUMNS = {
    "career_objective": "career_objective",
    "skills": "skills",
    "positions": "positions",
    "professional_company_names": "companies",
    "start_dates": "start_dates",
    "end_dates": "end_dates",
    "degree_names": "degrees",
    "major_field_of_studies": "majors",
    "educational_institution_name": "institutions",
    "passing_years": "passing_years",
    "certification_skills": "certifications",
    "languages": "languages",
}
JOB_COLUMNS = {
    "job_position_name": "title",
    "educationaL_requirements": "education_requirement",
    "experiencere_requirement": "experience_requirement",
    "age_requirement": "age_requirement",
    "skills_required": "skills_required",
    "responsibilities.1": "responsibilities",
}
NULLS = {"", "n/a", "na", "none", "nan", "null"}


@dataclass(frozen=True)
class Label:
    resume_id: str
    job_id: str
    score: float


@dataclass(frozen=True)
class Dataset:
    resumes: list[ResumeDocument]
    jobs: list[JobDocument]
    labels: list[Label]


def parse_list(raw: str) -> list[str]:
    """A Python-literal list cell (possibly nested) -> its non-null strings, in order."""
    raw = raw.strip()
    if not raw:
        return []
    try:
        value: Any = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = [raw]
    out: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, list | tuple):
            for item in v:
                walk(item)
        elif v is not None:
            s = " ".join(str(v).split())
            if s.lower() not in NULLS:
                out.append(s)

    walk(value)
    return out


def _text(raw: str) -> str | None:
    s = raw.strip()
    return None if s.lower() in NULLS else s


def _stable_id(prefix: str, values: list[str]) -> str:
    digest = hashlib.sha256("\x1f".join(values).encode("utf-8")).hexdigest()
    return f"{prefix}-{digest[:12]}"


def read_dataset(path: Path) -> Dataset:
    """Parse the CSV (quoted newlines, list literals, a BOM in one header)."""
    import pandas as pd

    df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    df.columns = [c.lstrip("\ufeff") for c in df.columns]
    resumes: dict[str, ResumeDocument] = {}
    jobs: dict[str, JobDocument] = {}
    labels: list[Label] = []
    for rec in df.to_dict("records"):
        rid = _stable_id("resume", [rec[c] for c in RESUME_COLUMNS])
        jid = _stable_id("job", [rec[c] for c in JOB_COLUMNS])
        if rid not in resumes:
            fields: dict[str, Any] = {
                field: (_text(rec[col]) if field == "career_objective" else parse_list(rec[col]))
                for col, field in RESUME_COLUMNS.items()
            }
            resumes[rid] = ResumeDocument(id=rid, **fields)
        if jid not in jobs:
            jobs[jid] = JobDocument(
                id=jid,
                title=_text(rec["job_position_name"]) or "(untitled)",
                education_requirement=_text(rec["educationaL_requirements"]),
                experience_requirement=_text(rec["experiencere_requirement"]),
                age_requirement=_text(rec["age_requirement"]),
                skills_required=rec["skills_required"],
                responsibilities=rec["responsibilities.1"],
            )
        labels.append(Label(rid, jid, float(rec["matched_score"])))
    return Dataset(list(resumes.values()), list(jobs.values()), labels)


def sample(data: Dataset, *, n_resumes: int, seed: int = 42) -> Dataset:
    """``n_resumes`` resumes chosen with a fixed seed, every job, and their labels."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible sample, not a secret
    chosen = sorted(rng.sample([r.id for r in data.resumes], n_resumes))
    keep = set(chosen)
    resumes = [r for r in data.resumes if r.id in keep]
    labels = [lb for lb in data.labels if lb.resume_id in keep]
    return Dataset(resumes, list(data.jobs), labels)


def write_jsonl(docs: list[ResumeDocument] | list[JobDocument], path: Path) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for doc in docs:
            fh.write(doc.model_dump_json(exclude_defaults=True) + "\n")


def write_sample(data: Dataset, out_dir: Path) -> None:
    """The bundled demo sample: resumes.jsonl, jobs.jsonl, labels.csv."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(data.resumes, out_dir / "resumes.jsonl")
    write_jsonl(data.jobs, out_dir / "jobs.jsonl")
    with (out_dir / "labels.csv").open("w", encoding="utf-8") as fh:
        fh.write("resume_id,job_id,matched_score\n")
        for lb in data.labels:
            fh.write(f"{lb.resume_id},{lb.job_id},{lb.score}\n")

"""``jobfit bench``: the pipeline against its limit, measured in one run on the same texts.

raw    = ``SentenceTransformer.encode`` of the sample's unique field texts, called directly
e2e    = submit the sample -> worker -> every match row committed (fresh database, so every
         text is embedded once through the pipeline)
ratio  = e2e / raw (1.0 would be a pipeline that costs nothing on top of the model)
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from sqlalchemy import create_engine, make_url, text

from shared.celery_app import create_celery_app
from shared.client import read_documents
from shared.config import Settings
from shared.db import ensure_database, upgrade
from shared.fields import field_texts
from shared.schemas import JobDocument, ResumeDocument
from workers.demo import SAMPLE_DIR, run_pipeline
from workers.model import ModelSpec, version_of


def unique_texts(resumes: list[dict[str, Any]], jobs: list[dict[str, Any]]) -> list[str]:
    docs: list[ResumeDocument | JobDocument] = [ResumeDocument.model_validate(r) for r in resumes]
    docs += [JobDocument.model_validate(j) for j in jobs]
    return sorted({t for d in docs for t in field_texts(d).values()})


def raw_encode_seconds(spec: ModelSpec, texts: list[str]) -> float:
    """Wall time of one direct ``encode`` call over ``texts`` (after a warm-up)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(spec.path), device=spec.device, local_files_only=True)
    model.max_seq_length = spec.max_seq_length
    model.encode(texts[:8], batch_size=spec.batch_size)
    t0 = time.perf_counter()
    model.encode(texts, batch_size=spec.batch_size, normalize_embeddings=True)
    return time.perf_counter() - t0


def load_documents(dataset: Path | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The bundled sample, or every resume and job of the real dataset's CSV."""
    if dataset is None:
        return read_documents(SAMPLE_DIR / "resumes.jsonl"), read_documents(
            SAMPLE_DIR / "jobs.jsonl"
        )
    from workers.dataset import read_dataset

    data = read_dataset(dataset)
    return (
        [r.model_dump(mode="json", exclude_defaults=True) for r in data.resumes],
        [j.model_dump(mode="json", exclude_defaults=True) for j in data.jobs],
    )


def bench_sample(
    settings: Settings, console: Console, dataset: Path | None = None
) -> dict[str, Any]:
    """Raw encode vs end to end on the bundled sample (or a whole dataset CSV), against the
    configured services."""
    resumes, jobs = load_documents(dataset)
    texts = unique_texts(resumes, jobs)
    spec = ModelSpec.from_settings(settings.model)
    raw_s = raw_encode_seconds(spec, texts)

    run = uuid.uuid4().hex[:8]
    db_url = make_url(settings.db.url).set(database=f"jobfit_bench_{run}")
    bench_settings = settings.model_copy(deep=True)
    bench_settings.db.url = db_url.render_as_string(hide_password=False)
    bench_settings.broker.key_prefix = f"jobfit-bench-{run}:"
    ensure_database(bench_settings.db.url)
    # The worker child reads its settings from the environment: point it at the bench's.
    child_env = {
        "JOBFIT_DB__URL": bench_settings.db.url,
        "JOBFIT_BROKER__KEY_PREFIX": bench_settings.broker.key_prefix,
    }
    try:
        upgrade(bench_settings)
        app = create_celery_app(bench_settings)
        summaries, timing = run_pipeline(app, True, resumes, jobs, console, worker_env=child_env)
    finally:
        admin = create_engine(db_url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db_url.database}" WITH (FORCE)'))
        admin.dispose()
    embedded = sum(s.get("embedded", 0) for s in summaries)
    return {
        "model": version_of(spec.path),
        "device": spec.device,
        "documents": {
            "resumes": len(resumes),
            "jobs": len(jobs),
            "source": str(dataset or "sample"),
        },
        "unique_texts": len(texts),
        "texts_embedded_by_pipeline": embedded,
        "raw_encode_s": round(raw_s, 3),
        "raw_sentences_per_s": round(len(texts) / raw_s, 1),
        "worker_start_s": round(timing["worker_start_s"], 3),
        "e2e_s": round(timing["score_s"], 3),
        "e2e_sentences_per_s": round(len(texts) / timing["score_s"], 1),
        "e2e_over_raw": round(timing["score_s"] / raw_s, 3),
    }

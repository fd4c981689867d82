"""Migration 0009 on real Postgres with pgvector: stored field vectors converted in place to
``halfvec`` (their float16 values), the retrieval vector column dropped, everything else kept;
its downgrade restores the columns and leaves the derived vectors to be made again."""

from __future__ import annotations

import numpy as np
import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.orm import Session

from jobfit.shared import repository as repo
from jobfit.shared.config import DatabaseSettings, Settings
from jobfit.shared.db import alembic_config, upgrade
from jobfit.shared.schemas import ResumeDocument
from jobfit.workers.scoring import from_halfvec
from tests.conftest import private_database

pytestmark = pytest.mark.integration


def columns(engine) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns("document_vectors")}


def test_0009_converts_field_vectors_in_place_and_its_downgrade_restores_the_columns() -> None:
    for url in private_database("_mig"):
        settings = Settings(db=DatabaseSettings(url=url))
        command.downgrade(alembic_config(settings), "0008")
        engine = create_engine(url)
        fields = np.random.default_rng(1).standard_normal(8).astype(np.float32)
        try:
            with Session(engine) as s, s.begin():  # tables 0009 leaves as they were
                version_id = repo.ensure_model_version(
                    session=s, model=repo.ModelInfo("m", "minilm", "-", 4)
                ).id
                ((row, _),) = repo.upsert_documents(
                    session=s, docs=[ResumeDocument(id="r", skills=["SQL"])]
                )
                doc_id = row.id
            with engine.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO document_vectors (document_id, model_version_id, kind,"
                        " content_hash, scoring_key, slots, fields, embedding, index_entry,"
                        " updated_at) VALUES (:d, :v, 'resume', 'h', 'k', '[\"a\", \"b\"]',"
                        " CAST(:f AS vector), '[1,2,3]', '[4,5]', now())"
                    ),
                    {"d": doc_id, "v": version_id, "f": str(fields.tolist())},
                )
            assert {"fields", "embedding"} <= columns(engine)

            upgrade(settings)
            assert "embedding" not in columns(engine)
            with engine.connect() as conn:
                raw, slots, entry = conn.execute(
                    text(
                        "SELECT halfvec_send(fields), slots, index_entry::text"
                        " FROM document_vectors"
                    )
                ).one()
            assert from_halfvec(bytes(raw)).tolist() == fields.astype(np.float16).tolist()
            assert (slots, entry) == (["a", "b"], "[4,5]")

            command.downgrade(alembic_config(settings), "0008")
            assert {"fields", "embedding"} <= columns(engine)
            with engine.connect() as conn:
                assert conn.execute(text("SELECT count(*) FROM document_vectors")).scalar() == 0
                assert conn.execute(text("SELECT count(*) FROM documents")).scalar() == 1
            upgrade(settings)
            assert "embedding" not in columns(engine)
        finally:
            engine.dispose()

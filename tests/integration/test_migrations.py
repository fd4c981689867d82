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


def entry_indexes(engine) -> list[str]:
    return sorted(
        i["name"]
        for i in inspect(engine).get_indexes("document_vectors")
        if i["name"].startswith("ix_document_vectors_entry_")
    )


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
                # a basis of 1 direction and its IVFFlat index (entries of 2 dimensions)
                conn.execute(
                    text(
                        "INSERT INTO index_bases (model_version_id, kind, source_dims, dims,"
                        " basis, fitted_on, energy, created_at)"
                        " VALUES (:v, 'resume', 3, 1, '\\x00', 1, 1.0, now())"
                    ),
                    {"v": version_id},
                )
                conn.execute(
                    text("SELECT jobfit_ensure_ivfflat_index(:v, 'resume', 2, 1)"),
                    {"v": version_id},
                )
            assert {"fields", "embedding"} <= columns(engine)
            assert entry_indexes(engine) == [repo.index_name(version_id, "resume") + "_l1"]

            upgrade(settings)
            assert "embedding" not in columns(engine)
            # dropped before the rewrite (which would have rebuilt it); the basis stays, and
            # the next write builds the index again
            assert entry_indexes(engine) == []
            with engine.connect() as conn:
                assert conn.execute(text("SELECT count(*) FROM index_bases")).scalar() == 1
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
                assert conn.execute(text("SELECT count(*) FROM index_bases")).scalar() == 0
                assert conn.execute(text("SELECT count(*) FROM documents")).scalar() == 1
            upgrade(settings)
            assert "embedding" not in columns(engine)
        finally:
            engine.dispose()

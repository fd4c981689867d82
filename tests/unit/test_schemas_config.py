"""Messages and settings."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from jobfit.shared.client import read_documents
from jobfit.shared.config import DatabaseSettings, PairType, ScoringSettings, Settings
from jobfit.shared.schemas import (
    MAX_FIELD_BYTES,
    InvalidMessageError,
    JobDocument,
    ResumeDocument,
    json_schemas,
    validate_message,
)


def test_content_hash_ignores_key_order_and_sees_content():
    a = ResumeDocument.model_validate({"id": "r", "skills": ["a"], "degrees": ["b"]})
    b = ResumeDocument.model_validate({"degrees": ["b"], "skills": ["a"], "id": "r"})
    c = ResumeDocument.model_validate({"id": "r", "skills": ["a", "c"], "degrees": ["b"]})
    assert a.content_hash() == b.content_hash() != c.content_hash()


def test_content_hash_is_that_of_schema_version_1_whatever_the_revision():
    """Hashes stored before version 2 (documents, and the matches that name them) hold: the
    same content hashes as it did then, with or without a revision."""
    content = {"id": "r-1", "skills": ["Python", "SQL"], "career_objective": "Build things"}
    before_v2 = "7776dea992d151d23383f804b6129702613fd96b184704b5a42010b37c851c4d"
    for extra in ({}, {"schema_version": 1}, {"schema_version": 2, "revision": 9}):
        assert ResumeDocument.model_validate(content | extra).content_hash() == before_v2


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({}, "id"),
        ({"id": "has space"}, "id"),
        ({"id": "r", "schema_version": 3}, "schema_version"),
        ({"id": "r", "skills": [{"deep": ["nesting"]}]}, "skills.0"),
        ({"id": "r", "career_objective": "x" * (MAX_FIELD_BYTES + 1)}, "career_objective"),
        ({"id": "r", "skills": ["x" * 60_000, "y" * 60_000]}, "skills"),
        ({"id": "r", "skills": ["\ud800"]}, "skills"),
        ({"id": "r", "unknown": 1}, "unknown"),
    ],
)
def test_bad_resumes_are_refused_with_the_field_named(payload, fragment):
    with pytest.raises(InvalidMessageError) as info:
        validate_message(ResumeDocument, payload)
    assert fragment in str(info.value)


def test_job_needs_a_title_and_splits_newline_lists():
    with pytest.raises(ValidationError):
        JobDocument.model_validate({"id": "j", "title": "   "})
    job = JobDocument.model_validate({"id": "j", "title": "T", "responsibilities": "a\n\nb"})
    assert job.responsibilities == ["a", "b"]


def test_json_schema_export_covers_every_message():
    schemas = json_schemas()
    assert {"ResumeDocument", "JobDocument", "MatchRequest"} <= set(schemas["messages"])
    resume = schemas["messages"]["ResumeDocument"]
    assert "id" in resume["required"] and resume["additionalProperties"] is False
    json.dumps(schemas)


def test_settings_normalise_dsn_and_complete_weights(monkeypatch):
    assert DatabaseSettings(url="postgres://u@h/db").url == "postgresql+psycopg://u@h/db"
    override = ScoringSettings(weights={PairType.SKILLS: 2.0})
    assert override.weights == {p: (2.0 if p == PairType.SKILLS else 0.0) for p in PairType}
    # The override wins over a version's stored weights; without one, the version's own.
    assert override.served_weights({"positions": 3.0}) == override.weights
    assert ScoringSettings().served_weights({"positions": 3.0})[PairType.POSITIONS] == 3.0
    assert ScoringSettings().served_weights(None) == dict.fromkeys(PairType, 1.0)
    monkeypatch.setenv("JOBFIT_DB__URL", "postgresql://x@y/z")
    monkeypatch.setenv("JOBFIT_MODEL__BATCH_SIZE", "8")
    s = Settings()
    assert s.db.url == "postgresql+psycopg://x@y/z" and s.model.batch_size == 8
    with pytest.raises(ValidationError, match="changeme"):
        Settings(env="prod", db=DatabaseSettings(url="postgresql://u:changeme@h/db"))


def test_read_documents_formats(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"id": "1"}\n\n{"id": "2"}\n')
    (tmp_path / "b.json").write_text('[{"id": "1"}]')
    (tmp_path / "c.json").write_text('{\n  "id": "1"\n}')
    (tmp_path / "d.jsonl").write_text('{"id": "1"}\n{oops\n')
    assert [d["id"] for d in read_documents(tmp_path / "a.jsonl")] == ["1", "2"]
    assert read_documents(tmp_path / "b.json") == [{"id": "1"}]
    assert read_documents(tmp_path / "c.json") == [{"id": "1"}]
    with pytest.raises(InvalidMessageError, match=r"d\.jsonl:2"):
        read_documents(tmp_path / "d.jsonl")

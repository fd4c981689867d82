"""Messages that cross the queue (pydantic v2). Producers validate before sending; workers
validate again on receipt, because a message can come from any Celery client."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

SCHEMA_VERSION = 1
# Largest text accepted in one document field, in UTF-8 bytes (a list field counts its items).
MAX_FIELD_BYTES = 100_000
MAX_LIST_ITEMS = 2_000

ExternalId = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=200, pattern=r"^[\w.:@/+-]+$"
    ),
]


def _check_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("text contains a NUL character")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_FIELD_BYTES:
        raise ValueError(f"text longer than {MAX_FIELD_BYTES} bytes")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("text is not valid UTF-8 (lone surrogate)") from exc
    return value.strip()


def _to_list(value: Any) -> Any:
    """Accept a list, or a newline-separated string (how job postings often come)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [line for line in value.splitlines() if line.strip()]
    return value


TextList = Annotated[
    list[Annotated[str, Field(strict=True)]],
    BeforeValidator(_to_list),
    Field(max_length=MAX_LIST_ITEMS),
]


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    schema_version: Literal[1] = 1
    id: ExternalId

    @field_validator("*", mode="after")
    @classmethod
    def _bounded_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _check_text(value)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            items = [_check_text(v) for v in value]
            if sum(len(v.encode("utf-8")) for v in items) > MAX_FIELD_BYTES:
                raise ValueError(f"field longer than {MAX_FIELD_BYTES} bytes in all")
            return [v for v in items if v]
        return value

    def content_hash(self) -> str:
        """sha256 of the canonical JSON: same content, same hash, whatever the key order."""
        canon = json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return hashlib.sha256(canon.encode("utf-8")).hexdigest()


class ResumeDocument(_Document):
    """A resume, with the fields of the real dataset. Lists keep the resume's order."""

    kind: Literal["resume"] = "resume"
    career_objective: str | None = None
    skills: TextList = []
    positions: TextList = []
    companies: TextList = []
    start_dates: TextList = []
    end_dates: TextList = []
    degrees: TextList = []
    majors: TextList = []
    institutions: TextList = []
    passing_years: TextList = []
    certifications: TextList = []
    languages: TextList = []


class JobDocument(_Document):
    """A job posting."""

    kind: Literal["job"] = "job"
    title: Annotated[str, StringConstraints(min_length=1)]
    education_requirement: str | None = None
    experience_requirement: str | None = None
    age_requirement: str | None = None
    skills_required: TextList = []
    responsibilities: TextList = []


Document = ResumeDocument | JobDocument


class MatchRequest(BaseModel):
    """Score one resume against the given jobs (all stored jobs when ``job_ids`` is None)."""

    model_config = ConfigDict(extra="forbid")
    resume_id: ExternalId
    job_ids: list[ExternalId] | None = None


class CandidatesRequest(BaseModel):
    """Score one job against all stored resumes."""

    model_config = ConfigDict(extra="forbid")
    job_id: ExternalId


class TopMatch(BaseModel):
    """One of a document's best matches: the other document's id, the match score and its
    pair scores (by pair type)."""

    id: str
    score: float | None
    pair_scores: dict[str, float] = Field(default_factory=dict)


class IngestResult(BaseModel):
    """What an ingest task did; small, so it fits a result backend and Flower. ``top``: the
    document's best ``scoring.result_top`` stored matches under ``model_version`` (jobs for a
    resume, resumes for a job), best first; the rest are read with ``JobfitClient.top_jobs``
    / ``top_candidates``."""

    status: Literal["created", "updated", "unchanged"]
    document_id: str | None = None
    embedded: int = 0  # texts sent to the model
    scored: int = 0  # match rows written
    model_version: str | None = None
    reason: str | None = None
    top: list[TopMatch] = Field(default_factory=list)


class ScoreResult(BaseModel):
    status: Literal["ok", "rejected", "not_found"]
    scored: int = 0
    embedded: int = 0
    model_version: str | None = None
    reason: str | None = None
    top: list[TopMatch] = Field(default_factory=list)


class LabelMessage(BaseModel):
    """A match label from another service: how well ``resume_id`` fits ``job_id``, 0..1."""

    model_config = ConfigDict(extra="forbid")
    resume_id: ExternalId
    job_id: ExternalId
    score: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    source: str = Field(default="client", min_length=1, max_length=100)


class RetrainRequest(BaseModel):
    """Train a new model version from the active one (or ``base_version``)."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["head", "full", "full+head"] | None = None  # None: settings.train.mode
    epochs: int | None = Field(default=None, ge=1, le=100)
    max_steps: int = Field(default=-1, ge=-1)
    # full fine-tune: stop after this many seconds of training (the steps done are kept)
    time_budget_s: float | None = Field(default=None, gt=0, le=7 * 24 * 3600)
    head_epochs: int | None = Field(default=None, ge=1, le=100_000)
    split: Literal["resume", "job"] = "resume"
    base_version: str | None = Field(default=None, max_length=200)
    promote: bool = True
    promote_margin: float | None = Field(default=None, ge=-1.0, le=1.0)
    regress_margin: float | None = Field(default=None, ge=0.0, le=2.0)


class EvaluateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str | None = Field(default=None, max_length=200)  # None: the active version
    split: Literal["resume", "job"] = "resume"


class RescoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str | None = Field(default=None, max_length=200)  # None: the active version
    batch_size: int = Field(default=32, ge=1, le=10_000)


def json_schemas() -> dict[str, Any]:
    """JSON Schema of every message, for producers that are not written in Python."""
    models: list[type[BaseModel]] = [
        ResumeDocument,
        JobDocument,
        MatchRequest,
        CandidatesRequest,
        IngestResult,
        ScoreResult,
        LabelMessage,
        RetrainRequest,
        EvaluateRequest,
        RescoreRequest,
    ]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "schema_version": SCHEMA_VERSION,
        "messages": {m.__name__: m.model_json_schema() for m in models},
    }


M = TypeVar("M", bound=BaseModel)


class InvalidMessageError(ValueError):
    """A message that is not what its type says; ``str()`` names each bad field."""


class MessageRejectedError(Exception):
    """A worker refused a message: invalid, a request the data cannot satisfy, or
    dead-lettered after too many deliveries. The task ends in Celery's FAILURE state with this
    error (Flower shows it as failed), ``str()`` is the reason, the message is recorded in
    ``failed_messages`` (``jobfit failures``) and acknowledged, never retried. Producers get
    it from ``AsyncResult.get()`` (or as the value of ``get(propagate=False)``)."""


def validate_message(model: type[M], data: M | Mapping[str, Any] | str | bytes) -> M:
    """The one validator, used by producers before sending and by every task on receipt: a
    message (its pydantic object, a mapping, or a JSON text of one) as its pydantic type, or
    InvalidMessageError with a readable reason. Whatever a hostile payload makes pydantic
    raise (a validation error, a bad type, a too deeply nested JSON) ends up as that."""
    if isinstance(data, model):
        return data
    try:
        if isinstance(data, str | bytes):
            return model.model_validate_json(data)
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidMessageError(describe_validation_error(exc)) from exc
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidMessageError(f"{type(exc).__name__}: {exc}") from exc


def describe_validation_error(exc: ValidationError) -> str:
    """One readable line per problem: ``field.path: message``."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(message)"
        parts.append(f"{loc}: {err['msg']}")
    return f"{exc.title}: " + "; ".join(parts)

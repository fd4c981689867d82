"""Messages that cross the queue (pydantic v2). Producers validate before sending; workers
validate again on receipt, because a message can come from any Celery client."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal, Self, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

# 2: documents may carry a ``revision``; version 1 messages (no revision) are still accepted.
SCHEMA_VERSION: Final = 2
# Largest text accepted in one document field, in UTF-8 bytes (a list field counts its items).
MAX_FIELD_BYTES = 100_000
MAX_LIST_ITEMS = 2_000
MAX_ID_LENGTH = 200
# A revision is stored as a Postgres bigint.
MAX_REVISION = 2**63 - 1

# The patterns below are written with explicit code point ranges only, so that they mean the
# same in every regex dialect that reads them: the worker's (Rust's, through pydantic), Python's
# ``re`` and ECMA-262's (JSON Schema's, with or without the ``u`` flag). Classes such as ``\w``
# and ``\s`` differ between those (Python's and Rust's ``\w`` are Unicode-aware, ECMA-262's is
# ASCII-only), so none is used. README "Message schema" says what an id may contain and why.

# Unicode White_Space: what the worker strips around an id or a text (pydantic strips with
# Rust's ``str::trim``).
WHITESPACE = r"\u0009-\u000d\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# An id's characters: ASCII letters, digits and ``_.:@/+-``, and any character beyond ASCII but
# the invisible ones: controls, spaces, line and paragraph separators and format characters
# (Unicode categories Cc, Zs, Zl, Zp, Cf of the Basic Multilingual Plane), except the two
# joiners (U+200C, U+200D) that some scripts need. A superset of the ``[\w.:@/+-]`` of schema
# version 1, so every id accepted then is accepted now.
ID_CHAR = (
    r"(?:[A-Za-z0-9_.:@/+-]|[^\u0000-\u00a0\u00ad\u0600-\u0605\u061c\u06dd\u070f"
    r"\u0890\u0891\u08e2\u1680\u180e\u2000-\u200b\u200e\u200f\u2028-\u202f\u205f-\u2064"
    r"\u2066-\u206f\u3000\ufeff\ufff9-\ufffb])"
)
ID_PATTERN = rf"^{ID_CHAR}+$"  # the worker's, on the stripped id
# The published one: the same, with the whitespace the worker strips and the length (in code
# points, as JSON Schema counts: ``maxLength`` would count the whitespace too).
ID_SCHEMA_PATTERN = rf"^[{WHITESPACE}]*{ID_CHAR}{{1,{MAX_ID_LENGTH}}}[{WHITESPACE}]*$"
NO_NUL = r"^[^\u0000]*$"

ExternalId = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN
    ),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": ID_SCHEMA_PATTERN,
            "description": f"1 to {MAX_ID_LENGTH} characters: ASCII letters, digits and"
            " _.:@/+-, or visible characters beyond ASCII; surrounding whitespace is stripped",
        }
    ),
]

# What JSON Schema can say of a text: no NUL, and the character count its byte bound implies.
# The bound in UTF-8 bytes, and that a list's items together stay under it, are checked by the
# worker only (README "Message schema").
_TEXT_SCHEMA: dict[str, Any] = {
    "type": "string",
    "maxLength": MAX_FIELD_BYTES,
    "pattern": NO_NUL,
}


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


def _json_integer(value: Any) -> Any:
    """An integer as JSON has it: ``3.0`` is 3 (JSON Schema's ``integer`` says so too), a
    boolean is not an integer."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not an integer")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Text = Annotated[str, WithJsonSchema(_TEXT_SCHEMA)]

TextList = Annotated[
    list[Annotated[str, Field(strict=True)]],
    BeforeValidator(_to_list),
    Field(max_length=MAX_LIST_ITEMS),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "array", "items": _TEXT_SCHEMA, "maxItems": MAX_LIST_ITEMS},
                {
                    **_TEXT_SCHEMA,
                    "description": f"one item per non-blank line (at most {MAX_LIST_ITEMS} lines)",
                },
                {"type": "null"},
            ]
        }
    ),
]

SchemaVersion = Annotated[Literal[1, 2], BeforeValidator(_json_integer)]
Revision = Annotated[int, Field(strict=True, ge=0, le=MAX_REVISION), BeforeValidator(_json_integer)]
# A version 1 message has no revision (the worker refuses one that states both).
_V1_HAS_NO_REVISION: dict[str, Any] = {
    "if": {"properties": {"schema_version": {"const": 1}}, "required": ["schema_version"]},
    "then": {"properties": {"revision": {"type": "null"}}},
}


class _Document(BaseModel):
    """What resumes and jobs share. ``revision``: the producer's, optional; a non-negative
    integer (a counter, or a timestamp in milliseconds) that grows with each new version of
    the document: a message older than the stored document, or as old with other content, is
    not applied (``status`` "stale", README "Revisions")."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        str_strip_whitespace=True,
        json_schema_extra=_V1_HAS_NO_REVISION,
    )

    schema_version: SchemaVersion = SCHEMA_VERSION
    id: ExternalId
    revision: Revision | None = None

    @model_validator(mode="after")
    def _revision_needs_v2(self) -> Self:
        if self.schema_version == 1 and self.revision is not None:
            raise ValueError("revision needs schema_version 2")
        return self

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
        """sha256 of the canonical JSON of the content: same content, same hash, whatever the
        key order, the revision or the schema version the message states. The content is
        hashed in its version 1 form (no revision, ``schema_version`` 1), so the hashes stored
        before version 2 (and the matches that name them) still hold."""
        content = self.model_dump(mode="json", exclude={"revision"}) | {"schema_version": 1}
        canon = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canon.encode("utf-8")).hexdigest()


class ResumeDocument(_Document):
    """A resume, with the fields of the real dataset. Lists keep the resume's order."""

    kind: Literal["resume"] = "resume"
    career_objective: Text | None = None
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
    title: Annotated[
        str,
        StringConstraints(min_length=1),
        # not blank: some character other than whitespace
        WithJsonSchema(
            {**_TEXT_SCHEMA, "pattern": rf"^[^\u0000]*[^\u0000{WHITESPACE}][^\u0000]*$"}
        ),
    ]
    education_requirement: Text | None = None
    experience_requirement: Text | None = None
    age_requirement: Text | None = None
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

    # ``refused`` and ``failed``: one document of a bulk message (``jobfit.ingest_resumes`` /
    # ``jobfit.ingest_jobs``) that was invalid, or could not be stored; ``reason`` says why.
    status: Literal["created", "updated", "unchanged", "stale", "refused", "failed"]
    document_id: str | None = None
    embedded: int = 0  # texts sent to the model
    scored: int = 0  # match rows written
    model_version: str | None = None
    reason: str | None = None
    top: list[TopMatch] = Field(default_factory=list)


class BulkIngestResult(BaseModel):
    """What a bulk ingest message did: one ``IngestResult`` per document it carried, in its
    order (a refused one says why, in at most 300 characters; its position is its index
    here), without ``top``: a bulk load's rankings are read with ``JobfitClient.top_jobs`` /
    ``top_candidates``, so the result stays small whatever the message carried."""

    documents: list[IngestResult]


# The most documents one bulk ingest message carries: its result lists each of them, and a
# worker holds up to ``2 * batch.max_tasks`` prefetched messages in memory (README
# "Delivery and storage").
MAX_BULK_DOCUMENTS = 100


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
        BulkIngestResult,
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

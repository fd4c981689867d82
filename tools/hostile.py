"""Malformed and hostile messages for the fault suite: hypothesis-generated payloads for every
embed task, and hand-written ones no Celery client would send (invalid UTF-8, pickle, unknown
task names, deep nesting, huge strings, protocol violations). Each message has its own id, so
the report can find what became of it."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from jobfit.shared.celery_app import INGEST_JOB, INGEST_RESUME, SCORE_JOB, SCORE_RESUME
from jobfit.shared.schemas import MAX_FIELD_BYTES, JobDocument, ResumeDocument

# Text that should be stored verbatim, never executed or interpreted.
FRAGMENTS = [
    "'; DROP TABLE documents; --",
    "1' OR '1'='1",
    "Robert'); DELETE FROM matches WHERE ('a'='a",
    "<script>alert('x')</script>",
    "{{7*7}} ${7*7} %s %n",
    "\u202eevil\u202c",
    "$(rm -rf /)",
    "../../etc/passwd",
    "\ud800",  # a lone surrogate: not encodable as UTF-8
    "a\x00b",
]

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(FRAGMENTS),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
text_field = st.one_of(st.text(max_size=30), st.sampled_from(FRAGMENTS), json_value)
resume_like = st.fixed_dictionaries(
    {"id": st.one_of(st.text(max_size=20), st.sampled_from(FRAGMENTS), json_leaf)},
    optional={
        "skills": st.one_of(st.lists(text_field, max_size=4), text_field),
        "positions": st.lists(text_field, max_size=3),
        "degrees": json_value,
        "start_dates": st.lists(st.text(max_size=10), max_size=3),
        "schema_version": st.integers(min_value=-3, max_value=5),
        "title": text_field,
        "hobbies": json_value,
    },
)
ingest_payload = st.one_of(resume_like, json_value, st.text(max_size=60))


@dataclass
class Message:
    """One message to send: a task call (``task``, ``args``, ``kwargs``) or a raw body."""

    id: str
    task: str | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    raw: bytes | None = None
    content_type: str = "application/json"
    headers: dict[str, Any] | None = None
    valid_document: dict[str, Any] | None = None  # it is in fact a valid document


def generated(n: int, seed: int = 0) -> list[Any]:
    """``n`` ingest payloads drawn by hypothesis (derandomized; the draw still varied a
    little between our runs)."""
    out: list[Any] = []

    @settings(
        max_examples=n,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(ingest_payload)
    def collect(value: Any) -> None:
        out.append(value)

    collect()
    random.Random(seed).shuffle(out)  # noqa: S311 (a fixed order, not a secret)
    return out[:n]


def _valid(payload: Any, model: type[ResumeDocument] | type[JobDocument]) -> bool:
    try:
        model.model_validate(payload)
    except (ValidationError, ValueError, TypeError, RecursionError):
        return False
    return True


def _uid() -> str:
    return f"hostile-{uuid.uuid4()}"


def ingest_messages(payloads: list[Any]) -> Iterator[Message]:
    """Hypothesis payloads as ingest calls, in the ways a sloppy producer might send them. A
    payload that happens to be a valid document gets a unique id (so it is scored once)."""
    for i, drawn in enumerate(payloads):
        p = drawn
        task = INGEST_RESUME if i % 3 else INGEST_JOB
        model = ResumeDocument if task == INGEST_RESUME else JobDocument
        mid = _uid()
        shape = i % 5
        if isinstance(p, dict) and _valid(p, model):
            p = {**p, "id": f"hyp-{mid}"}
            yield Message(mid, task, kwargs={"document": p}, valid_document=p)
        elif shape == 0:
            yield Message(mid, task, args=[p])
        elif shape == 1:
            yield Message(mid, task, kwargs={"document": p, "score": p})
        elif shape == 2:
            yield Message(mid, task, kwargs={"doc": p})
        else:
            yield Message(mid, task, kwargs={"document": p})


def score_messages(payloads: list[Any]) -> Iterator[Message]:
    """Scoring requests with ids of the wrong type or shape."""
    for i, drawn in enumerate(payloads):
        # a string is a valid id: make it a list (invalid)
        p = [drawn] if isinstance(drawn, str) else drawn
        if i % 2:
            yield Message(_uid(), SCORE_RESUME, kwargs={"resume_id": p, "job_ids": p})
        else:
            yield Message(_uid(), SCORE_JOB, kwargs={"job_id": p})


def _raw(body: bytes, task: str | None, content_type: str = "application/json") -> Message:
    return Message(
        _uid(), raw=body, content_type=content_type, headers={"task": task} if task else {}
    )


def _with_headers(message: Message, **headers: Any) -> Message:
    message.headers = {**(message.headers or {}), **headers}
    return message


def _call(task: str, document: Any) -> Message:
    return Message(_uid(), task, kwargs={"document": document})


def raw_kinds() -> list[Callable[[], Message]]:
    """Makers of hand-written messages that no Celery client sends, one per kind."""
    deep = b'{"id": "deep", "skills": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    pickle_type = "application/x-python-serialize"
    return [
        lambda: _raw(b"\xff\xfe\x00not utf-8 \xc3\x28", INGEST_RESUME),
        lambda: _raw(b"\x80\x04\x95pickle", INGEST_RESUME, pickle_type),
        lambda: _raw(b"{definitely not json", INGEST_JOB),
        lambda: _raw(b"[[], {}, {}]", f"jobfit.no_such_task_{uuid.uuid4().hex[:6]}"),
        lambda: _raw(b'{"not": "a task"}', None),
        lambda: _raw(b'"just a string"', INGEST_RESUME),
        lambda: _raw(deep, INGEST_RESUME),
        lambda: _call(INGEST_RESUME, {"id": "huge", "skills": ["x" * (2 * MAX_FIELD_BYTES)]}),
        lambda: _call(INGEST_RESUME, {"id": "many", "skills": ["s"] * 5000}),
        lambda: _call(INGEST_JOB, {"id": "j", "title": ""}),
        lambda: _call(INGEST_RESUME, {"id": "x" * 500}),
        # scoring tasks run through Celery's own request: shapes it would trip on
        lambda: _raw(b'"just a string"', SCORE_RESUME),
        lambda: _raw(b'{"resume_id": "r1"}', SCORE_RESUME),
        lambda: _raw(b'[["r1"], {}, "not options"]', SCORE_JOB),
        lambda: _with_headers(_raw(b'[["r1"], {}, {}]', SCORE_RESUME), timelimit="soon"),
        lambda: _with_headers(_raw(b'[["r1"], {}, {}]', SCORE_JOB), retries="many"),
        # a task name Celery cannot look up (a list)
        lambda: _with_headers(_raw(b"[[], {}, {}]", None), task=[INGEST_RESUME]),
    ]


def large_kinds(size: int) -> list[Callable[[], Message]]:
    """Makers of messages of about ``size`` bytes each, one per way a large payload reaches a
    worker: a field over its limit (the batch path), an argument name of that size (its
    binding error names it), an oversized id, a scoring call (Celery's own request: a STARTED
    and a FAILURE record), a body that is not JSON, a JSON string where a task call belongs.
    The large text is one object shared by every message (the producer holds one copy)."""
    big = "z" * size
    not_json = b"{" + big.encode()
    a_string = json.dumps(big).encode()
    return [
        lambda: _call(INGEST_RESUME, {"id": "big-skill", "skills": [big]}),
        lambda: Message(_uid(), INGEST_JOB, kwargs={"document": {"id": "j"}, big: 1}),
        lambda: _call(INGEST_JOB, {"id": big, "title": "Engineer"}),
        lambda: Message(_uid(), SCORE_RESUME, kwargs={"resume_id": big}),
        lambda: _raw(not_json, INGEST_RESUME),
        lambda: _raw(a_string, SCORE_JOB),
    ]


def large_messages(n: int, size: int) -> list[Message]:
    """``n`` messages of about ``size`` bytes, cycling through every kind of ``large_kinds``."""
    kinds = large_kinds(size)
    return [kinds[i % len(kinds)]() for i in range(n)]


def raw_messages(n: int) -> Iterator[Message]:
    """``n`` hand-written messages, cycling through every kind of ``raw_kinds``."""
    kinds = raw_kinds()
    for i in range(n):
        yield kinds[i % len(kinds)]()


def valid_hostile_documents() -> list[dict[str, Any]]:
    """Valid resumes whose text is hostile: stored verbatim and scored like any other."""
    docs = []
    for i, frag in enumerate(f for f in FRAGMENTS if "\x00" not in f and "\ud800" not in f):
        docs.append({"id": f"frag-{i}", "skills": [frag, "Python"], "positions": [frag]})
    return docs

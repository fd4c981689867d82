"""The published JSON Schema (``jobfit schema``) and the worker's pydantic models accept and
refuse the same messages: each example below is judged by both, the worker's way
(``validate_message`` on the decoded message, as a task does) and a JSON Schema validator's
(``jsonschema``, Draft 2020-12)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Annotated, Any

import jsonschema
import pytest
from pydantic import BaseModel, StringConstraints, TypeAdapter, ValidationError

from jobfit.shared.schemas import (
    ID_SCHEMA_PATTERN,
    MAX_FIELD_BYTES,
    MAX_LIST_ITEMS,
    MAX_REVISION,
    ExternalId,
    InvalidMessageError,
    JobDocument,
    LabelMessage,
    MatchRequest,
    ResumeDocument,
    json_schemas,
    validate_message,
)

MODELS: dict[str, type[BaseModel]] = {
    m.__name__: m for m in (ResumeDocument, JobDocument, MatchRequest, LabelMessage)
}
UNICODE_ID = "hc-קורות-سيرة-001"

ACCEPTED: list[tuple[str, dict[str, Any]]] = [
    ("ResumeDocument", {"id": "r-1"}),
    ("ResumeDocument", {"id": UNICODE_ID}),
    ("ResumeDocument", {"id": "名前@example.com/履歴書:1"}),
    ("ResumeDocument", {"id": "emoji-😀-𝒳"}),  # beyond the BMP
    ("ResumeDocument", {"id": "نام\u200cخانوادگی"}),  # a joiner, as Persian writes
    ("ResumeDocument", {"id": "  r-2\n"}),  # stripped
    ("ResumeDocument", {"id": "x" * 200}),
    ("ResumeDocument", {"id": "\u3000" + "x" * 200 + " "}),  # 200 once stripped
    ("ResumeDocument", {"id": "r", "skills": "python\nsql\n\n  \n"}),
    ("ResumeDocument", {"id": "r", "skills": None, "career_objective": None}),
    ("ResumeDocument", {"id": "r", "skills": [], "languages": ["", " "]}),
    ("ResumeDocument", {"id": "r", "skills": ["x"] * MAX_LIST_ITEMS}),
    ("ResumeDocument", {"id": "r", "career_objective": "x" * MAX_FIELD_BYTES}),
    ("ResumeDocument", {"id": "r", "career_objective": "  two\n\tlines  "}),
    ("ResumeDocument", {"id": "r", "revision": 0}),
    ("ResumeDocument", {"id": "r", "revision": MAX_REVISION}),
    ("ResumeDocument", {"id": "r", "revision": 3.0}),
    ("ResumeDocument", {"id": "r", "revision": None}),
    ("ResumeDocument", {"id": "r", "schema_version": 1}),
    ("ResumeDocument", {"id": "r", "schema_version": 1, "revision": None}),
    ("ResumeDocument", {"id": "r", "schema_version": 2, "revision": 1_764_000_000_000}),
    ("ResumeDocument", {"id": "r", "schema_version": 2.0}),
    ("ResumeDocument", {"id": "r", "kind": "resume"}),
    ("JobDocument", {"id": "j", "title": "T"}),
    ("JobDocument", {"id": "j", "title": "  T  ", "responsibilities": "a\r\nb"}),
    ("JobDocument", {"id": "j", "title": "T", "skills_required": ["a", "b"], "revision": 2}),
    ("MatchRequest", {"resume_id": UNICODE_ID, "job_ids": ["j-1", "職-2"]}),
    ("MatchRequest", {"resume_id": "r", "job_ids": None}),
    ("LabelMessage", {"resume_id": "r", "job_id": UNICODE_ID, "score": 0.5}),
]

REFUSED: list[tuple[str, dict[str, Any]]] = [
    ("ResumeDocument", {}),
    ("ResumeDocument", {"id": ""}),
    ("ResumeDocument", {"id": "   "}),
    ("ResumeDocument", {"id": 5}),
    ("ResumeDocument", {"id": "has space"}),
    ("ResumeDocument", {"id": "tab\tinside"}),
    ("ResumeDocument", {"id": "x" * 201}),
    ("ResumeDocument", {"id": "nbsp\u00a0inside"}),
    ("ResumeDocument", {"id": "zero\u200bwidth"}),
    ("ResumeDocument", {"id": "bidi\u202eoverride"}),
    ("ResumeDocument", {"id": "bom\ufeff"}),
    ("ResumeDocument", {"id": "c1\u0085inside"}),
    ("ResumeDocument", {"id": "semi;colon"}),
    ("ResumeDocument", {"id": "quote'"}),
    ("ResumeDocument", {"id": "r", "skills": [1]}),
    ("ResumeDocument", {"id": "r", "skills": [None]}),
    ("ResumeDocument", {"id": "r", "skills": {"a": 1}}),
    ("ResumeDocument", {"id": "r", "skills": ["a\x00"]}),
    ("ResumeDocument", {"id": "r", "skills": "a\x00b"}),
    ("ResumeDocument", {"id": "r", "skills": ["x"] * (MAX_LIST_ITEMS + 1)}),
    ("ResumeDocument", {"id": "r", "career_objective": "x" * (MAX_FIELD_BYTES + 1)}),
    ("ResumeDocument", {"id": "r", "career_objective": 5}),
    ("ResumeDocument", {"id": "r", "revision": -1}),
    ("ResumeDocument", {"id": "r", "revision": MAX_REVISION + 1}),
    ("ResumeDocument", {"id": "r", "revision": "3"}),
    ("ResumeDocument", {"id": "r", "revision": True}),
    ("ResumeDocument", {"id": "r", "revision": 3.5}),
    ("ResumeDocument", {"id": "r", "schema_version": 3}),
    ("ResumeDocument", {"id": "r", "schema_version": 0}),
    ("ResumeDocument", {"id": "r", "schema_version": "1"}),
    ("ResumeDocument", {"id": "r", "schema_version": True}),
    ("ResumeDocument", {"id": "r", "schema_version": 1, "revision": 4}),
    ("ResumeDocument", {"id": "r", "unknown": 1}),
    ("ResumeDocument", {"id": "r", "kind": "job"}),
    ("JobDocument", {"id": "j"}),
    ("JobDocument", {"id": "j", "title": ""}),
    ("JobDocument", {"id": "j", "title": " \n\u3000"}),
    ("JobDocument", {"id": "j", "title": "a\x00"}),
    ("JobDocument", {"id": "j", "title": "T", "responsibilities": [["nested"]]}),
    ("MatchRequest", {"resume_id": "r r"}),
    ("MatchRequest", {"resume_id": "r", "job_ids": ["a b"]}),
    ("LabelMessage", {"resume_id": "r", "job_id": "j", "score": 1.5}),
]

# What JSON Schema cannot express, checked by the worker alone (README "Message schema"):
# sizes in UTF-8 bytes, a list's items together, a string list's line count, lone surrogates.
WORKER_ONLY: list[tuple[str, dict[str, Any]]] = [
    ("ResumeDocument", {"id": "r", "career_objective": "é" * (MAX_FIELD_BYTES // 2 + 1)}),
    ("ResumeDocument", {"id": "r", "skills": ["x" * 60_000, "y" * 60_000]}),
    ("ResumeDocument", {"id": "r", "skills": "x\n" * (MAX_LIST_ITEMS + 1)}),
    ("ResumeDocument", {"id": "r", "skills": ["\ud800"]}),
]


@pytest.fixture(scope="module")
def validators() -> dict[str, jsonschema.protocols.Validator]:
    schemas = json_schemas()
    assert schemas["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    out = {}
    for name, schema in schemas["messages"].items():
        jsonschema.Draft202012Validator.check_schema(schema)
        out[name] = jsonschema.Draft202012Validator(schema)
    return out


def worker_accepts(model: str, message: dict[str, Any]) -> bool:
    try:
        validate_message(MODELS[model], message)
    except InvalidMessageError:
        return False
    return True


def _id(example: tuple[str, dict[str, Any]]) -> str:
    return f"{example[0]}:{json.dumps(example[1])[:60]}"


@pytest.mark.parametrize("example", ACCEPTED, ids=_id)
def test_accepted_by_both(example, validators):
    model, message = example
    assert worker_accepts(model, message)
    errors = [e.message[:200] for e in validators[model].iter_errors(message)]
    assert not errors


@pytest.mark.parametrize("example", REFUSED, ids=_id)
def test_refused_by_both(example, validators):
    model, message = example
    assert not worker_accepts(model, message)
    assert not validators[model].is_valid(message)


@pytest.mark.parametrize("example", WORKER_ONLY, ids=_id)
def test_what_only_the_worker_checks(example, validators):
    model, message = example
    assert validators[model].is_valid(message) and not worker_accepts(model, message)


def test_every_id_character_judged_alike():
    """Each character of the Basic Multilingual Plane (lone surrogates aside: no valid UTF-8
    carries one) inside, and around, an id: the worker and the published pattern (read by
    ``re``, as the ``jsonschema`` validator reads it) agree; every id schema version 1
    accepted is still accepted."""
    ids = TypeAdapter(ExternalId)
    v1 = TypeAdapter(
        Annotated[
            str,
            StringConstraints(
                strip_whitespace=True, min_length=1, max_length=200, pattern=r"^[\w.:@/+-]+$"
            ),
        ]
    )
    published = re.compile(ID_SCHEMA_PATTERN)

    def accepts(adapter: TypeAdapter[str], value: str) -> bool:
        try:
            adapter.validate_python(value)
        except ValidationError:
            return False
        return True

    disagree, lost = [], []
    for code in range(0x10000):
        if 0xD800 <= code <= 0xDFFF:
            continue
        for value in (f"a{chr(code)}b", f"{chr(code)}a"):
            worker = accepts(ids, value)
            if worker != bool(published.search(value)):
                disagree.append(hex(code))
            if accepts(v1, value) and not worker:
                lost.append(hex(code))
    assert not disagree and not lost


ECMA_CHECK = """
const [pattern, ids] = JSON.parse(require("fs").readFileSync(0, "utf8"));
const plain = new RegExp(pattern), unicode = new RegExp(pattern, "u");
console.log(JSON.stringify(ids.map((id) => [plain.test(id), unicode.test(id)])));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_id_pattern_reads_the_same_in_ecma_regex():
    """JSON Schema's regex dialect is ECMA-262's: node reads the published pattern as the
    worker does, with the ``u`` flag (as Draft 2020-12 asks) and without."""
    ids = [
        UNICODE_ID,
        "名前@example.com",
        "emoji-😀",
        "  r-2\n",
        "x" * 200,
        "x" * 201,
        "has space",
        "zero\u200bwidth",
        "nbsp\u00a0inside",
        "semi;colon",
        "",
    ]
    out = subprocess.run(
        ["node", "-e", ECMA_CHECK],
        input=json.dumps([ID_SCHEMA_PATTERN, ids]),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    ecma = json.loads(out.stdout)
    ids_adapter = TypeAdapter(ExternalId)
    for value, (plain, unicode) in zip(ids, ecma, strict=True):
        try:
            ids_adapter.validate_python(value)
            worker = True
        except ValidationError:
            worker = False
        assert plain == unicode == worker, value

"""Documents -> the field texts of the model's training templates, and the pair types.

The templates are the model card's; training (``workers.trainer``) and serving use this one
module, so what the model saw in training is exactly what it sees in production.

    resume side                                         job side
    Skills: a, b                                   <->  Skills required: x, y
    Positions: a, b                                <->  Job title: t
    Degrees: a, b                                  <->  Education requirement: e
    Start dates: a, b End dates: c, d Positions: p <->  Experience requirement: r

and, from fields the four ignore (issue 16; each kept because held-out numbers showed it
helps, README "Field pairs and the match score"):

    Career objective: o                            <->  Responsibilities: a, b
    Majors: a, b                                   <->  Education requirement: e
    Skills: a, b                                   <->  Responsibilities: a, b
    Certifications: a, b                           <->  Skills required: x, y

A text two pair types share (``Skills: ...``, ``Responsibilities: ...``) is one text: it is
embedded once (the embedding cache is keyed by text).

A field with no content gives no text: it is skipped, never embedded as an empty string.

Slots: the distinct texts of a side, one per document field a template reads (``RESUME_SLOT``,
``JOB_SLOT``). The job side has five (skills required, title, education, experience,
responsibilities); a document's vectors are stored per slot and its retrieval vector lays the
job side's five out in ``JOB_SLOTS`` order (``workers.vectors``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from jobfit.shared.config import PairType
from jobfit.shared.schemas import JobDocument, ResumeDocument

SEPARATOR = ", "

# Which of its side's texts each pair type reads: pair types that map to one slot have the
# same text (tests/unit/test_fields.py checks it on every sample document).
RESUME_SLOT: dict[PairType, str] = {
    PairType.SKILLS: "skills",
    PairType.POSITIONS: "positions",
    PairType.DEGREES: "degrees",
    PairType.EXPERIENCE: "experience",
    PairType.OBJECTIVE: "career_objective",
    PairType.MAJORS: "majors",
    PairType.DUTIES: "skills",
    PairType.CERTIFICATIONS: "certifications",
}
JOB_SLOT: dict[PairType, str] = {
    PairType.SKILLS: "skills_required",
    PairType.POSITIONS: "title",
    PairType.DEGREES: "education_requirement",
    PairType.EXPERIENCE: "experience_requirement",
    PairType.OBJECTIVE: "responsibilities",
    PairType.MAJORS: "education_requirement",
    PairType.DUTIES: "responsibilities",
    PairType.CERTIFICATIONS: "skills_required",
}
RESUME_SLOTS: tuple[str, ...] = tuple(dict.fromkeys(RESUME_SLOT.values()))
JOB_SLOTS: tuple[str, ...] = tuple(dict.fromkeys(JOB_SLOT.values()))


def slot_map(kind: str) -> dict[PairType, str]:
    """The pair type -> slot map of a side (``resume`` or ``job``)."""
    return RESUME_SLOT if kind == "resume" else JOB_SLOT


def _join(items: Iterable[str]) -> str:
    return SEPARATOR.join(" ".join(i.split()) for i in items if i and i.strip())


def _one_line(text: str | None) -> str:
    return " ".join(text.split()) if text else ""


def resume_field_texts(doc: ResumeDocument) -> dict[PairType, str]:
    """The resume's text for each pair type it has content for."""
    skills = _join(doc.skills)
    positions = _join(doc.positions)
    degrees = _join(doc.degrees)
    starts, ends = _join(doc.start_dates), _join(doc.end_dates)
    texts: dict[PairType, str] = {}
    if skills:
        texts[PairType.SKILLS] = f"Skills: {skills}"
    if positions:
        texts[PairType.POSITIONS] = f"Positions: {positions}"
    if degrees:
        texts[PairType.DEGREES] = f"Degrees: {degrees}"
    if starts or ends or positions:
        texts[PairType.EXPERIENCE] = (
            f"Start dates: {starts} End dates: {ends} Positions: {positions}"
        )
    extra = {
        PairType.OBJECTIVE: ("Career objective", _one_line(doc.career_objective)),
        PairType.MAJORS: ("Majors", _join(doc.majors)),
        PairType.DUTIES: ("Skills", skills),
        PairType.CERTIFICATIONS: ("Certifications", _join(doc.certifications)),
    }
    texts.update(_labelled(extra))
    return texts


def _labelled(fields: Mapping[PairType, tuple[str, str]]) -> dict[PairType, str]:
    return {p: f"{label}: {value}" for p, (label, value) in fields.items() if value}


def job_field_texts(doc: JobDocument) -> dict[PairType, str]:
    """The job's text for each pair type it has content for."""
    skills = _join(doc.skills_required)
    education = _one_line(doc.education_requirement)
    duties = _join(doc.responsibilities)
    return _labelled(
        {
            PairType.SKILLS: ("Skills required", skills),
            PairType.POSITIONS: ("Job title", _one_line(doc.title)),
            PairType.DEGREES: ("Education requirement", education),
            PairType.EXPERIENCE: ("Experience requirement", _one_line(doc.experience_requirement)),
            PairType.OBJECTIVE: ("Responsibilities", duties),
            PairType.MAJORS: ("Education requirement", education),
            PairType.DUTIES: ("Responsibilities", duties),
            PairType.CERTIFICATIONS: ("Skills required", skills),
        }
    )


def field_texts(doc: ResumeDocument | JobDocument) -> dict[PairType, str]:
    """Field texts of either kind of document."""
    if isinstance(doc, ResumeDocument):
        return resume_field_texts(doc)
    return job_field_texts(doc)


def usable_pairs(
    resume_texts: Mapping[PairType, str], job_texts: Mapping[PairType, str]
) -> list[PairType]:
    """Pair types both sides have text for, in the canonical order."""
    return [p for p in PairType if p in resume_texts and p in job_texts]


def text_hash(text: str) -> str:
    """Content address of a text: the embedding cache key (with the model version)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

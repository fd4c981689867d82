"""Pure logic: field texts, pair types, scoring."""

from __future__ import annotations

import numpy as np
import pytest

from jobfit.shared.config import PairType
from jobfit.shared.fields import field_texts, job_field_texts, resume_field_texts, usable_pairs
from jobfit.shared.schemas import JobDocument, ResumeDocument
from jobfit.workers.scoring import cosine, score_match


def test_resume_texts_follow_the_training_templates():
    doc = ResumeDocument(
        id="r1",
        skills=["Python", " SQL  server "],
        positions=["Data Analyst", "BI Developer"],
        degrees=["B.Sc"],
        start_dates=["Jan 2019", "Mar 2021"],
        end_dates=["Feb 2021", "Till Date"],
    )
    assert resume_field_texts(doc) == {
        PairType.SKILLS: "Skills: Python, SQL server",
        PairType.POSITIONS: "Positions: Data Analyst, BI Developer",
        PairType.DEGREES: "Degrees: B.Sc",
        PairType.EXPERIENCE: (
            "Start dates: Jan 2019, Mar 2021 End dates: Feb 2021, Till Date "
            "Positions: Data Analyst, BI Developer"
        ),
        # skills <-> responsibilities: the same resume text, its own pair type
        PairType.DUTIES: "Skills: Python, SQL server",
    }


def test_job_texts_follow_the_training_templates():
    doc = JobDocument(
        id="j1",
        title="Data Engineer",
        education_requirement="B.Sc in CSE",
        experience_requirement="At least 3 years",
        skills_required="Python\n\nSpark\n",
    )
    assert job_field_texts(doc) == {
        PairType.SKILLS: "Skills required: Python, Spark",
        PairType.POSITIONS: "Job title: Data Engineer",
        PairType.DEGREES: "Education requirement: B.Sc in CSE",
        PairType.EXPERIENCE: "Experience requirement: At least 3 years",
        PairType.MAJORS: "Education requirement: B.Sc in CSE",
        PairType.CERTIFICATIONS: "Skills required: Python, Spark",
    }


def test_the_pair_types_beyond_the_seed_use_the_fields_the_four_ignore():
    resume = ResumeDocument(
        id="r2",
        career_objective="  Build data\nplatforms ",
        skills=["Python"],
        majors=["Computer Science", "Statistics"],
        certifications=["AWS Certified"],
    )
    job = JobDocument(
        id="j2",
        title="Data Engineer",
        education_requirement="B.Sc in CSE",
        skills_required=["Python", "AWS"],
        responsibilities=["Build pipelines", "Own the warehouse"],
    )
    rt, jt = field_texts(resume), field_texts(job)
    pairs = {p: (rt[p], jt[p]) for p in usable_pairs(rt, jt)}
    assert pairs[PairType.OBJECTIVE] == (
        "Career objective: Build data platforms",
        "Responsibilities: Build pipelines, Own the warehouse",
    )
    assert pairs[PairType.MAJORS] == (
        "Majors: Computer Science, Statistics",
        "Education requirement: B.Sc in CSE",
    )
    assert pairs[PairType.DUTIES] == (
        "Skills: Python",
        "Responsibilities: Build pipelines, Own the warehouse",
    )
    assert pairs[PairType.CERTIFICATIONS] == (
        "Certifications: AWS Certified",
        "Skills required: Python, AWS",
    )
    assert all(len(p.value) <= 20 for p in PairType)  # pair_scores.pair_type is 20 chars


def test_empty_fields_are_skipped_not_embedded_as_empty_strings():
    resume = ResumeDocument(id="r", skills=["", "  "], degrees=["MBA"])
    job = JobDocument(id="j", title="Analyst", experience_requirement="  ")
    rt, jt = field_texts(resume), field_texts(job)
    assert rt == {PairType.DEGREES: "Degrees: MBA"}
    assert jt == {PairType.POSITIONS: "Job title: Analyst"}
    assert all(t.split(": ", 1)[1] for t in [*rt.values(), *jt.values()])
    assert usable_pairs(rt, jt) == []


def test_usable_pairs_in_canonical_order():
    rt = {PairType.EXPERIENCE: "e", PairType.SKILLS: "s"}
    jt = {PairType.SKILLS: "s", PairType.EXPERIENCE: "e", PairType.DEGREES: "d"}
    assert usable_pairs(rt, jt) == [PairType.SKILLS, PairType.EXPERIENCE]


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_match_score_is_weighted_mean_of_used_pairs():
    r = {PairType.SKILLS: unit(1, 0), PairType.POSITIONS: unit(1, 1), PairType.DEGREES: unit(0, 1)}
    j = {PairType.SKILLS: unit(1, 0), PairType.POSITIONS: unit(1, 0)}
    equal = score_match(r, j, dict.fromkeys(PairType, 1.0))
    assert equal.pairs_used == [PairType.SKILLS, PairType.POSITIONS]
    assert equal.pair_scores[PairType.SKILLS] == pytest.approx(1.0)
    assert equal.pair_scores[PairType.POSITIONS] == pytest.approx(np.sqrt(0.5))
    assert equal.score == pytest.approx((1.0 + np.sqrt(0.5)) / 2)
    weighted = score_match(r, j, {PairType.SKILLS: 3.0, PairType.POSITIONS: 1.0})
    assert weighted.score == pytest.approx((3.0 + np.sqrt(0.5)) / 4)


def test_no_shared_pair_or_zero_weight_gives_no_score():
    r = {PairType.SKILLS: unit(1, 0)}
    assert (
        score_match(r, {PairType.DEGREES: unit(1, 0)}, dict.fromkeys(PairType, 1.0)).score is None
    )
    zero = score_match(r, {PairType.SKILLS: unit(1, 0)}, {PairType.SKILLS: 0.0})
    assert zero.score is None and zero.pair_scores == {PairType.SKILLS: pytest.approx(1.0)}


def test_cosine_handles_unnormalised_and_zero_vectors():
    assert cosine(
        np.array([3.0, 0.0], dtype=np.float32), np.array([1.0, 0.0], dtype=np.float32)
    ) == pytest.approx(1.0)
    assert cosine(np.zeros(2, dtype=np.float32), np.ones(2, dtype=np.float32)) == 0.0

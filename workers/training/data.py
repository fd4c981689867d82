"""Training data: labelled matches (each with the field pairs it uses), split by the stored
assignments of resumes and of jobs, plus generic pair files; and the check that there is
enough of it to train and to judge. Training is match-level (``match_loss``);
``pair_examples`` is the per-pair view (a pair takes its match's label)."""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from jobfit.shared import repository as repo
from jobfit.shared.config import PairType
from jobfit.shared.db import transaction
from jobfit.shared.fields import field_texts, usable_pairs
from jobfit.shared.splits import SPLITS, SplitName

MIN_TRAIN, MIN_EVAL = 2, 3

# Labels equal to this many decimal places are one label when ranked: the real data's
# labels carry float noise (0.68333... written three ways, 0.7600000000000001), which would
# otherwise spread 591 equal labels over 5 % of the scale.
TIE_DECIMALS = 6


class NotEnoughDataError(ValueError):
    """Too few labelled matches (with stored documents) to train or to judge a model."""


@dataclass(frozen=True)
class MatchExample:
    """One labelled match as field-pair texts: (pair type, resume text, job text)."""

    resume_id: str
    job_id: str
    label: float
    pairs: tuple[tuple[PairType, str, str], ...]


@dataclass
class TrainingData:
    """Labelled matches: ``train`` (resume and job both on the training side of their
    splits) and ``held_out`` by split: matches of held-out resumes, matches of held-out jobs
    (a match of a held-out resume and a held-out job is in both)."""

    train: list[MatchExample]
    held_out: dict[SplitName, list[MatchExample]]
    extra_pairs: list[tuple[str, str, float]] = field(default_factory=list)
    pending_labels: int = 0  # labels whose documents are not stored yet

    def data_hash(self) -> str:
        """Identifies exactly what a model was trained on (and judged on)."""
        h = hashlib.sha256()
        parts = [("train", self.train), *((f"eval-{k}", v) for k, v in self.held_out.items())]
        for part, matches in parts:
            for m in sorted(matches, key=lambda m: (m.resume_id, m.job_id)):
                h.update(f"{part}\x1f{m.resume_id}\x1f{m.job_id}\x1f{m.label:.6f}\x1e".encode())
                for p, a, b in m.pairs:
                    h.update(f"{p}\x1f{a}\x1f{b}\x1e".encode())
        for a, b, y in sorted(self.extra_pairs):
            h.update(f"pair\x1f{a}\x1f{b}\x1f{y:.6f}\x1e".encode())
        return h.hexdigest()

    def eval_hash(self, split: SplitName) -> str:
        """Identifies one split's evaluation examples: metrics compare only on equal hashes."""
        return TrainingData(train=[], held_out={split: self.held_out.get(split, [])}).data_hash()


def match_examples(
    labels: Iterable[tuple[str, str, float]],
    resume_texts: Mapping[str, Mapping[PairType, str]],
    job_texts: Mapping[str, Mapping[PairType, str]],
) -> tuple[list[MatchExample], int]:
    """Labels -> examples; returns (examples, labels whose documents are missing)."""
    out, pending = [], 0
    for rid, jid, y in labels:
        rt, jt = resume_texts.get(rid), job_texts.get(jid)
        if rt is None or jt is None:
            pending += 1
            continue
        pairs = tuple((p, rt[p], jt[p]) for p in usable_pairs(rt, jt))
        if pairs:
            out.append(MatchExample(rid, jid, float(y), pairs))
    return out, pending


def rank_targets(matches: Sequence[MatchExample]) -> list[MatchExample]:
    """The matches with each label replaced by its rank among them, spread evenly over the
    labels' own range: (rank - 0.5) / n of the way from the lowest label to the highest
    (tied labels share their mean rank; labels equal to ``TIE_DECIMALS`` places tie). A
    monotone map of the label: every ranking the service returns, and Spearman and NDCG
    against the real labels, mean the same with either target. The real labels bunch (221
    distinct values over 9.5k matches, 30 % of them within 0.78-0.85); MSE against their
    ranks spends its effort on the order of the matches rather than on the distances inside
    those bunches (README "Which path on which hardware")."""
    from scipy.stats import rankdata

    if not matches:
        return []
    labels = np.array([m.label for m in matches], dtype=np.float64)
    low, high = float(labels.min()), float(labels.max())
    share = (rankdata(labels.round(TIE_DECIMALS)) - 0.5) / len(labels)
    return [
        replace(m, label=low + (high - low) * float(q)) for m, q in zip(matches, share, strict=True)
    ]


def split_examples(
    matches: Sequence[MatchExample], parts: Mapping[str, str], by: Literal["resume", "job"]
) -> tuple[list[MatchExample], list[MatchExample]]:
    """(train, eval) by the stored side of each match's resume (or job)."""
    train: list[MatchExample] = []
    evaluation: list[MatchExample] = []
    for m in matches:
        key = m.resume_id if by == "resume" else m.job_id
        (evaluation if parts.get(key) == "eval" else train).append(m)
    return train, evaluation


def split_both(
    matches: Sequence[MatchExample], parts: Mapping[SplitName, Mapping[str, str]]
) -> tuple[list[MatchExample], dict[SplitName, list[MatchExample]]]:
    """(train, held out by split): training keeps only matches whose resume and job are both
    on the training side, so a model is judged on resumes and on jobs it never saw."""
    held: dict[SplitName, list[MatchExample]] = {}
    train_ids = {id(m) for m in matches}
    for by, by_parts in parts.items():
        _, held[by] = split_examples(matches, by_parts, by)
        train_ids -= {id(m) for m in held[by]}
    return [m for m in matches if id(m) in train_ids], held


def load_training_data(*, session: Any) -> TrainingData:
    """Everything labelled in the database, split by the stored assignments (both)."""
    labels = repo.list_labels(session=session)
    resume_texts = {
        row.external_id: field_texts(repo.parse_document(row))
        for row in repo.list_documents(session=session, kind="resume")
    }
    job_texts = {
        row.external_id: field_texts(repo.parse_document(row))
        for row in repo.list_documents(session=session, kind="job")
    }
    matches, pending = match_examples(
        ((lb.resume_id, lb.job_id, lb.score) for lb in labels), resume_texts, job_texts
    )
    parts = {split: repo.split_parts(session=session, split=split) for split in SPLITS}
    train, held_out = split_both(matches, parts)
    return TrainingData(
        train=train,
        held_out=held_out,
        extra_pairs=repo.list_pair_labels(session=session),
        pending_labels=pending,
    )


def require_data(factory: sessionmaker[Session], split: SplitName) -> TrainingData:
    """``load_training_data`` in its own transaction; NotEnoughDataError unless there are
    enough training matches and held-out matches of ``split`` (the other split may have
    fewer: its check is then skipped)."""
    with transaction(factory) as session:
        data = load_training_data(session=session)
    n_eval = len(data.held_out.get(split, []))
    if len(data.train) < MIN_TRAIN or n_eval < MIN_EVAL:
        raise NotEnoughDataError(
            f"split {split!r}: {len(data.train)} training and {n_eval} evaluation "
            f"labelled matches with stored documents (need {MIN_TRAIN} and {MIN_EVAL}); "
            f"{data.pending_labels} labels wait for their documents"
        )
    return data


def pair_examples(
    matches: Iterable[MatchExample], extra: Iterable[tuple[str, str, float]] = ()
) -> list[tuple[str, str, float]]:
    """Field-pair training examples: each pair carries its match's label; duplicates are
    merged into their mean label. Sorted, so a seed gives the same run."""
    acc: dict[tuple[str, str], list[float]] = defaultdict(list)
    for m in matches:
        for _, a, b in m.pairs:
            acc[(a, b)].append(m.label)
    for a, b, y in extra:
        acc[(a, b)].append(float(y))
    return sorted((a, b, float(np.mean(ys))) for (a, b), ys in acc.items())


def read_pair_file(path: Path) -> list[tuple[str, str, float]]:
    """A generic pair file: CSV or JSONL with ``sentence_0, sentence_1, label``."""
    import pandas as pd

    if path.suffix.lower() in {".jsonl", ".json"}:
        df = pd.read_json(path, lines=path.suffix.lower() == ".jsonl")
    else:
        df = pd.read_csv(path, dtype={"sentence_0": str, "sentence_1": str}, keep_default_na=False)
    missing = {"sentence_0", "sentence_1", "label"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    out = []
    for i, (a, b, y) in enumerate(zip(df.sentence_0, df.sentence_1, df.label, strict=True)):
        label = float(y)
        if not (isinstance(a, str) and isinstance(b, str) and a.strip() and b.strip()):
            raise ValueError(f"{path}: row {i + 1}: empty sentence")
        if not math.isfinite(label) or not -1.0 <= label <= 1.0:
            raise ValueError(f"{path}: row {i + 1}: label {y!r} is not in [-1, 1]")
        out.append((a, b, label))
    return out

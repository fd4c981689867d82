"""Fine-tuning and evaluation of the field-pair model.

Training data
    A match label (resume, job, score) becomes field-pair examples with one documented rule:
    each field pair the match uses (``shared.fields.usable_pairs``) carries the match's label,
    the same texts the workers embed. A (sentence_0, sentence_1) that occurs in several
    matches gets the mean of their labels: that is what the squared loss converges to
    anyway, and it makes an epoch several times shorter (the real data has 38,176 field
    pairs of 1,236 texts). Generic pair files add their examples to the training side.
    The split is by resume (or by job), stored in Postgres (``shared.registry``).

Two ways to train, both ending in a sentence-transformers directory the workers load as is:
    ``full``  sentence-transformers' trainer, CosineSimilarityLoss, all weights (GPU).
    ``head``  the encoder frozen, a two-layer head (Dense tanh -> Dense) trained on the
              encoder's embeddings of the unique texts with the same objective (MSE of
              cosine vs label): minutes on a CPU. The head is saved as sentence-transformers
              ``Dense`` modules, so serving needs nothing new.
    ``full+head`` the first, then the second on top.

Evaluation (any model, the stored evaluation split): field-pair Pearson/Spearman of cosine vs
label, match-level Spearman/Pearson of the match score (mean of its pair cosines) vs the match
label, NDCG@10 of jobs ranked per resume.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from jobfit.shared.config import PairType
from jobfit.shared.fields import field_texts, usable_pairs

log = logging.getLogger(__name__)

Mode = Literal["head", "full", "full+head"]
Progress = Callable[..., None]  # progress(stage, done, total, **info)


def _no_progress(stage: str, done: int, total: int, **info: Any) -> None:
    return None


# --- data --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchExample:
    """One labelled match as field-pair texts: (pair type, resume text, job text)."""

    resume_id: str
    job_id: str
    label: float
    pairs: tuple[tuple[PairType, str, str], ...]


@dataclass
class TrainingData:
    train: list[MatchExample]
    eval: list[MatchExample]
    extra_pairs: list[tuple[str, str, float]] = field(default_factory=list)
    pending_labels: int = 0  # labels whose documents are not stored yet

    def data_hash(self) -> str:
        """Identifies exactly what a model was trained on (and judged on)."""
        h = hashlib.sha256()
        for part, matches in (("train", self.train), ("eval", self.eval)):
            for m in sorted(matches, key=lambda m: (m.resume_id, m.job_id)):
                h.update(f"{part}\x1f{m.resume_id}\x1f{m.job_id}\x1f{m.label:.6f}\x1e".encode())
                for p, a, b in m.pairs:
                    h.update(f"{p}\x1f{a}\x1f{b}\x1e".encode())
        for a, b, y in sorted(self.extra_pairs):
            h.update(f"pair\x1f{a}\x1f{b}\x1f{y:.6f}\x1e".encode())
        return h.hexdigest()

    def eval_hash(self) -> str:
        """Identifies the evaluation examples: metrics compare only on equal hashes."""
        return TrainingData(train=[], eval=self.eval).data_hash()


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


def load_training_data(*, session: Any, split: Literal["resume", "job"] = "resume") -> TrainingData:
    """Everything labelled in the database, split by the stored assignment."""
    from jobfit.shared import registry
    from jobfit.shared import repository as repo

    labels = registry.list_labels(session=session)
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
    parts = registry.split_parts(session=session, split=split)
    train, evaluation = split_examples(matches, parts, split)
    return TrainingData(
        train=train,
        eval=evaluation,
        extra_pairs=registry.list_pair_labels(session=session),
        pending_labels=pending,
    )


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


# --- models ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainParams:
    mode: Mode = "head"
    epochs: int = 1  # full fine-tune epochs
    learning_rate: float = 5e-5
    batch_size: int = 16
    warmup_ratio: float = 0.1
    max_steps: int = -1  # cap on full fine-tune steps (-1: the epochs decide)
    seed: int = 42
    max_seq_length: int = 384
    head_epochs: int = 150
    head_learning_rate: float = 1e-3
    head_hidden: int = 0  # 0: the embedding dimension

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_model(path: Path, device: str, max_seq_length: int = 384) -> Any:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device=device, local_files_only=True)
    model.max_seq_length = max_seq_length
    return model


def encode_unique(
    model: Any, texts: Sequence[str], *, batch_size: int, progress: Progress, stage: str
) -> dict[str, np.ndarray]:
    """Each distinct text once, shortest first (less padding), in batches with progress."""
    import torch

    unique = sorted(set(texts), key=len)
    out: dict[str, np.ndarray] = {}
    step = max(batch_size * 8, 64)
    with torch.inference_mode():
        for i in range(0, len(unique), step):
            chunk = unique[i : i + step]
            vecs = model.encode(
                chunk, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
            )
            out.update(zip(chunk, np.asarray(vecs, dtype=np.float32), strict=True))
            progress(stage, min(i + step, len(unique)), len(unique))
    return out


def _split_head(model: Any) -> tuple[list[Any], list[Any]]:
    """(encoder modules up to its first Normalize, head modules after it)."""
    from sentence_transformers.sentence_transformer.modules import Normalize

    mods = list(model)
    cut = next((i for i, m in enumerate(mods) if isinstance(m, Normalize)), None)
    if cut is None:
        mods.append(Normalize())
        cut = len(mods) - 1
    return mods[: cut + 1], [m for m in mods[cut + 1 :] if not isinstance(m, Normalize)]


def train_head(
    model: Any,
    pairs: Sequence[tuple[str, str, float]],
    params: TrainParams,
    *,
    progress: Progress = _no_progress,
) -> Any:
    """Freeze the encoder, train a Dense(tanh) -> Dense head on its embeddings of the unique
    texts (MSE of the cosine vs the label, full batch, AdamW). Returns a new
    SentenceTransformer: encoder + head + Normalize. A head the model already has is the
    starting point (fine-tuning from the active version)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    encoder_mods, old_head = _split_head(model)
    encoder = SentenceTransformer(modules=encoder_mods, device=str(model.device))
    encoder.max_seq_length = model.max_seq_length
    texts = [t for a, b, _ in pairs for t in (a, b)]
    vecs = encode_unique(
        encoder, texts, batch_size=params.batch_size, progress=progress, stage="embedding"
    )
    index = {t: i for i, t in enumerate(vecs)}
    emb = torch.tensor(np.stack(list(vecs.values())))
    a_idx = torch.tensor([index[a] for a, _, _ in pairs])
    b_idx = torch.tensor([index[b] for _, b, _ in pairs])
    y = torch.tensor([lab for _, _, lab in pairs], dtype=torch.float32)

    torch.manual_seed(params.seed)
    dim = emb.shape[1]
    hidden = params.head_hidden or dim
    if len(old_head) == 2 and all(isinstance(m, Dense) for m in old_head):
        first, second = (m.cpu() for m in old_head)
    else:
        first = Dense(dim, hidden, activation_function=torch.nn.Tanh())
        second = Dense(hidden, dim, activation_function=torch.nn.Identity())
    head = torch.nn.Sequential(first.linear, first.activation_function, second.linear)
    opt = torch.optim.AdamW(head.parameters(), lr=params.head_learning_rate)
    t0 = time.perf_counter()
    for epoch in range(params.head_epochs):
        opt.zero_grad()
        z = torch.nn.functional.normalize(head(emb), dim=-1)
        loss = torch.nn.functional.mse_loss((z[a_idx] * z[b_idx]).sum(-1), y)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        if (epoch + 1) % 10 == 0 or epoch + 1 == params.head_epochs:
            elapsed = time.perf_counter() - t0
            progress(
                "training head",
                epoch + 1,
                params.head_epochs,
                epoch=epoch + 1,
                loss=float(loss.detach()),
                elapsed_s=elapsed,
                eta_s=elapsed / (epoch + 1) * (params.head_epochs - epoch - 1),
            )
    return SentenceTransformer(
        modules=[*encoder_mods, first, second, Normalize()], device=str(model.device)
    )


def train_full(
    model: Any,
    pairs: Sequence[tuple[str, str, float]],
    params: TrainParams,
    *,
    work_dir: Path,
    progress: Progress = _no_progress,
) -> Any:
    """sentence-transformers' trainer with CosineSimilarityLoss on all weights, in place."""
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss
    from transformers import TrainerCallback

    class Report(TrainerCallback):
        def __init__(self) -> None:
            self.t0 = time.perf_counter()
            self.loss: float | None = None

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            elapsed = time.perf_counter() - self.t0
            total = max(state.max_steps, 1)
            progress(
                "fine-tuning",
                state.global_step,
                total,
                epoch=round(float(state.epoch or 0), 3),
                loss=self.loss,
                elapsed_s=elapsed,
                eta_s=elapsed / max(state.global_step, 1) * (total - state.global_step),
            )

    cuda = str(model.device).startswith("cuda")
    bf16 = cuda and torch.cuda.is_bf16_supported()
    train = Dataset.from_dict(
        {
            "sentence_0": [a for a, _, _ in pairs],
            "sentence_1": [b for _, b, _ in pairs],
            "label": [y for _, _, y in pairs],
        }
    )
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work_dir / "checkpoints"),
        num_train_epochs=params.epochs,
        max_steps=params.max_steps,
        per_device_train_batch_size=params.batch_size,
        learning_rate=params.learning_rate,
        lr_scheduler_type="linear",
        warmup_ratio=params.warmup_ratio,
        seed=params.seed,
        data_seed=params.seed,
        bf16=bf16,
        fp16=cuda and not bf16,
        save_strategy="no",
        logging_steps=10,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=train,
        loss=CosineSimilarityLoss(model),
        callbacks=[Report()],
    )
    trainer.train()
    return model


def train(
    model: Any,
    pairs: Sequence[tuple[str, str, float]],
    params: TrainParams,
    *,
    work_dir: Path,
    progress: Progress = _no_progress,
) -> Any:
    if params.mode in ("full", "full+head"):
        model = train_full(model, pairs, params, work_dir=work_dir, progress=progress)
    if params.mode in ("head", "full+head"):
        model = train_head(model, pairs, params, progress=progress)
    return model


# --- evaluation --------------------------------------------------------------------------


def ndcg_at(labels_by_query: Sequence[tuple[np.ndarray, np.ndarray]], k: int = 10) -> float:
    """Mean NDCG@k over queries of (true gains, predicted scores); single-item queries skip."""
    from sklearn.metrics import ndcg_score

    values = [
        float(ndcg_score(y[None, :], s[None, :], k=k))
        for y, s in labels_by_query
        if len(y) > 1 and np.any(y > 0)
    ]
    return float(np.mean(values)) if values else float("nan")


def score_examples(
    vectors: Mapping[str, np.ndarray], matches: Sequence[MatchExample]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pair cosines, pair labels, match scores, match labels) from normalised vectors."""
    pair_cos, pair_y, match_s, match_y = [], [], [], []
    for m in matches:
        cos = [float(vectors[a] @ vectors[b]) for _, a, b in m.pairs]
        pair_cos.extend(cos)
        pair_y.extend([m.label] * len(cos))
        match_s.append(float(np.mean(cos)))
        match_y.append(m.label)
    return np.array(pair_cos), np.array(pair_y), np.array(match_s), np.array(match_y)


def metrics_from_vectors(
    vectors: Mapping[str, np.ndarray], matches: Sequence[MatchExample]
) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr

    pair_cos, pair_y, match_s, match_y = score_examples(vectors, matches)
    by_resume: dict[str, list[int]] = defaultdict(list)
    for i, m in enumerate(matches):
        by_resume[m.resume_id].append(i)
    queries = [(match_y[idx], match_s[idx]) for idx in by_resume.values()]
    return {
        "match_spearman": float(spearmanr(match_s, match_y).statistic),
        "match_pearson": float(pearsonr(match_s, match_y).statistic),
        "pair_spearman": float(spearmanr(pair_cos, pair_y).statistic),
        "pair_pearson": float(pearsonr(pair_cos, pair_y).statistic),
        "ndcg_at_10": ndcg_at(queries, 10),
        "eval_matches": float(len(matches)),
        "eval_pairs": float(len(pair_cos)),
    }


def evaluate(
    model: Any,
    matches: Sequence[MatchExample],
    *,
    batch_size: int = 16,
    progress: Progress = _no_progress,
) -> dict[str, float]:
    """Metrics of ``model`` on labelled matches. Pair Pearson/Spearman are what
    sentence-transformers' EmbeddingSimilarityEvaluator computes (cosine vs label); here each
    distinct text is encoded once instead of once per pair (38k pairs, 1.2k texts)."""
    if len(matches) < 3:
        raise ValueError(f"need at least 3 labelled matches to evaluate, got {len(matches)}")
    texts = [t for m in matches for _, a, b in m.pairs for t in (a, b)]
    vectors = encode_unique(
        model, texts, batch_size=batch_size, progress=progress, stage="evaluating"
    )
    return metrics_from_vectors(vectors, matches)


def should_promote(
    candidate: Mapping[str, float], active: Mapping[str, float] | None, margin: float
) -> tuple[bool, str]:
    """The rule: the candidate's match-level Spearman must beat the active one's by
    ``margin`` on the same evaluation data."""
    c = candidate.get("match_spearman", float("nan"))
    if not math.isfinite(c):
        return False, "candidate has no match_spearman"
    if active is None:
        return True, f"no active version was judged on this data (candidate {c:.4f})"
    a = active.get("match_spearman", float("nan"))
    if not math.isfinite(a):
        return True, f"active version has no finite match_spearman (candidate {c:.4f})"
    if c > a + margin:
        return True, f"match_spearman {c:.4f} > active {a:.4f} + margin {margin}"
    return False, f"match_spearman {c:.4f} does not beat active {a:.4f} + margin {margin}"


def metrics_key(split: str, eval_hash: str) -> str:
    """Where a version's metrics on one evaluation set are stored: comparable on equal keys."""
    return f"{split}:{eval_hash[:16]}"


def describe(metrics: Mapping[str, Any]) -> str:
    return json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
